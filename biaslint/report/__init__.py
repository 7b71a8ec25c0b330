"""Stage 5, report: reporters turn results into text. They format; they never compute.

One table: each output format's name and the function that renders it (imported when used, so
the CLI's cheap commands stay cheap). ``findings`` is ``-q``'s one line per finding.
"""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

from biaslint.findings import TargetResult

Reporter = Callable[[Sequence[TargetResult]], str]

# format -> (module, function)
_REPORTERS: dict[str, tuple[str, str]] = {
    "text": ("biaslint.report.text", "render_plain"),
    "json": ("biaslint.report.json", "render"),
    "github": ("biaslint.report.github", "render"),
    "sarif": ("biaslint.report.sarif", "render"),
    "html": ("biaslint.report.html", "render"),
    "findings": ("biaslint.report.text", "render_findings_only"),
}
# What --format and the config's ``format`` accept.
FORMATS: tuple[str, ...] = ("text", "json", "github", "sarif", "html")


def get_reporter(fmt: str) -> Reporter:
    module, name = _REPORTERS[fmt]
    reporter: Reporter = getattr(importlib.import_module(module), name)
    return reporter
