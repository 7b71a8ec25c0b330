"""Stage 5, report: reporters turn results into text. They format; they never compute."""

from __future__ import annotations

from typing import Callable, Sequence

from biaslint.findings import TargetResult

Reporter = Callable[[Sequence[TargetResult]], str]

FORMATS = ("text", "json", "github", "sarif")


def get_reporter(fmt: str) -> Reporter:
    if fmt == "json":
        from biaslint.report.json import render
        return render
    if fmt == "text":
        from biaslint.report.text import render_plain
        return render_plain
    if fmt == "github":
        from biaslint.report.github import render as render_github
        return render_github
    if fmt == "sarif":
        from biaslint.report.sarif import render as render_sarif
        return render_sarif
    raise KeyError(fmt)
