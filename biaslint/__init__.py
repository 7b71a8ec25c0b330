"""biaslint: a linter for bias and initialization mistakes in PyTorch models.

On the command line: ``biaslint mymodel:build``. In Python, on a model you hold::

    with biaslint.recording():
        model = build()
    report = biaslint.check(model, example_inputs)

Importing biaslint does not import torch, nor the API until it is used (the command line's
``--help`` stays fast).
"""

from typing import Any

from biaslint.version import __version__

__all__ = ["__version__", "check", "recording", "Report", "Recording"]


def __getattr__(name: str) -> Any:
    if name in ("check", "recording", "Report", "Recording", "check_target"):
        from biaslint import api

        return getattr(api, name)
    raise AttributeError(f"module 'biaslint' has no attribute {name!r}")
