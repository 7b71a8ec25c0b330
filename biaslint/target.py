"""Parse target strings and input shapes. No torch import: the CLI validates these cheaply."""

from __future__ import annotations

from dataclasses import dataclass

from biaslint.errors import InputShapeError, TargetError


@dataclass(frozen=True)
class TargetSpec:
    """``pkg.module:attr`` or ``path/to/file.py:attr`` split into its parts."""

    text: str
    module: str  # dotted module name or a path to a .py file
    attr: str

    @property
    def is_path(self) -> bool:
        return self.module.endswith(".py") or "/" in self.module or "\\" in self.module


def parse_target(text: str) -> TargetSpec:
    if ":" not in text:
        raise TargetError(
            f"target {text!r} has no ':attr': write MODULE:ATTR or FILE.py:ATTR, "
            f"e.g. {text}:build"
        )
    # rsplit keeps Windows drive letters (C:\\x.py:build) in the module part.
    module, attr = text.rsplit(":", 1)
    if not module or not attr:
        raise TargetError(f"target {text!r} is incomplete: write MODULE:ATTR or FILE.py:ATTR")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise TargetError(f"target {text!r}: {attr!r} is not a Python attribute name")
    return TargetSpec(text=text, module=module, attr=attr)


def parse_shape(text: str) -> tuple[int, ...]:
    """``2,3,224,224`` (or ``2x3x224x224``) to a tuple of positive ints."""
    parts = text.replace("x", ",").replace(" ", "").split(",")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:  # also an empty part: "2,,3" or ""
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise InputShapeError(
            f"--input-shape {text!r} is not a shape: give positive integers separated by "
            "commas, e.g. --input-shape 2,3,224,224"
        )
    return dims
