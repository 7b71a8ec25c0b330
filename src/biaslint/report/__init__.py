"""Stage 5, report: reporters turn results into text. They format; they never compute."""

from __future__ import annotations

from typing import Callable, Sequence

from ..findings import TargetResult

Reporter = Callable[[Sequence[TargetResult]], str]


def get_reporter(fmt: str) -> Reporter:
    if fmt == "json":
        from .json import render
        return render
    if fmt == "text":
        from .text import render_plain
        return render_plain
    raise KeyError(fmt)


FORMATS = ("text", "json")
