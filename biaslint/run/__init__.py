"""The check command, above the engine: settings from ``[tool.biaslint]`` and the command line,
which targets to lint (``--changed-since``), one process per target (``-j``, ``--timeout``),
baselines, and ``--fix`` checked on a copy before it writes."""
