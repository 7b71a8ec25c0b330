"""The engine: one target through the stages (load -> capture -> analyse -> rules), then what the
rules could not judge, and the post-pass (suppressions, severities, per-module ignores).

``lint`` takes a target string, ``lint_loaded`` a model already loaded."""

from biaslint.engine.lint import lint, lint_loaded

__all__ = ["lint", "lint_loaded"]
