"""Stage 5, report: reporters turn results into text. They format; they never compute.

One table: each output format's name and the function that renders it (imported when used, so
the CLI's cheap commands stay cheap). ``findings`` is ``-q``'s one line per finding. Each
reporter renders the results of every target at once; ``text`` and ``json-lines`` also render
one target at a time (the run streams them), so their output for several targets is the
concatenation of each target's.
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
    "gitlab": ("biaslint.report.gitlab", "render"),
    "junit": ("biaslint.report.junit", "render"),
    "rdjson": ("biaslint.report.rdjson", "render"),
    "json-lines": ("biaslint.report.json_lines", "render"),
    "findings": ("biaslint.report.text", "render_findings_only"),
}
# What --format and the config's ``format`` accept.
FORMATS: tuple[str, ...] = ("text", "json", "json-lines", "github", "sarif", "html", "gitlab",
                             "junit", "rdjson")


def get_reporter(fmt: str) -> Reporter:
    module, name = _REPORTERS[fmt]
    reporter: Reporter = getattr(importlib.import_module(module), name)
    return reporter
