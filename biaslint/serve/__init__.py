"""Warm lints: a resident process that has imported torch once and forks a fresh child per lint.

- ``address``: where the server of this project, Python and environment listens (no torch);
- ``client``: what the command line runs with ``--warm`` (no torch): it hands the server its
  arguments, working directory, environment and its own stdin, stdout and stderr, and exits with
  the child's code;
- ``server``: the resident parent (``python -m biaslint.serve.server``). It imports torch,
  torchvision, biaslint and their dependencies, runs nothing of torch, and forks one child per
  lint;
- ``child``: what a forked child does before it runs the command line as a cold process would;
- ``watch``: ``biaslint --watch``;
- ``lsp``: ``biaslint lsp``, the language server (pygls).
"""
