"""Errors a user can cause. Each becomes one line and exit code 2 at the CLI edge."""

from __future__ import annotations


class BiaslintError(Exception):
    """A problem the user can fix: bad target, import failure, bad option or config.

    The message is one line: what went wrong, where, and what to do about it.
    """


class TargetError(BiaslintError):
    """The target string is malformed, cannot be imported, or builds something unusable."""


class InputShapeError(BiaslintError):
    """A malformed ``--input-shape``."""


class ConfigError(BiaslintError):
    """A bad key or value in ``[tool.biaslint]`` or on the command line."""


class PriorsError(BiaslintError):
    """Class priors that cannot be read or make no sense."""
