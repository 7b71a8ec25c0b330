"""The pipeline: load -> capture -> analyse -> rules, one target at a time.

This is the Python API: ``lint(TargetConfig("pkg.mod:build"))`` returns a ``TargetResult``.
"""

from __future__ import annotations

import fnmatch
import time
import traceback
from typing import Iterable

from .errors import BiaslintError
from .findings import Finding, TargetResult
from .settings import Settings, TargetConfig


def lint(config: TargetConfig, settings: Settings = Settings()) -> TargetResult:
    """Lint one target. User errors (bad target, failing build) raise ``BiaslintError``."""
    from .load import load_target

    timings: dict[str, float] = {}
    start = time.perf_counter()
    loaded = load_target(config.target, config.input_shapes)
    timings["build"] = time.perf_counter() - start
    return lint_loaded(loaded, config, settings, timings)


def lint_loaded(loaded, config: TargetConfig, settings: Settings,  # type: ignore[no-untyped-def]
                timings: dict[str, float] | None = None) -> TargetResult:
    """Capture, analyse and run the rules on an already built ``LoadedTarget``."""
    from .analysis import AnalysedModel
    from .capture import capture
    from .rules import RuleContext, selected

    timings = dict(timings or {})
    start = time.perf_counter()
    captured = capture(loaded)
    timings["capture"] = time.perf_counter() - start

    start = time.perf_counter()
    analysed = AnalysedModel(captured)
    _ = analysed.layers  # the shared facts; rules add their own lazily
    timings["analysis"] = time.perf_counter() - start

    start = time.perf_counter()
    notes = list(loaded.notes) + list(captured.notes)
    findings: list[Finding] = []
    for rule_cls in selected(settings.select, settings.ignore):
        rule = rule_cls()
        context = RuleContext(options=settings.rule_options.get(rule.code, {}),
                              class_priors=config.class_priors, head=config.head)
        try:
            findings.extend(rule.check(analysed, context))
        except BiaslintError:
            raise
        except Exception as exc:  # noqa: BLE001 - one crashing rule must not hide the others
            detail = traceback.format_exc() if settings.debug else f"{type(exc).__name__}: {exc}"
            notes.append(f"rule {rule.code} crashed and was skipped: {detail}")
    timings["rules"] = time.perf_counter() - start
    return TargetResult(
        target=config.target,
        findings=tuple(_post_process(findings, settings)),
        coverage=captured.coverage,
        notes=tuple(notes),
        timings=timings,
    )


def _post_process(findings: Iterable[Finding], settings: Settings) -> list[Finding]:
    from dataclasses import replace

    kept = []
    for finding in findings:
        if _ignored_for_module(finding, settings):
            continue
        override = settings.severity_overrides.get(finding.code)
        if override is not None:
            finding = replace(finding, severity=override)
        kept.append(finding)
    kept.sort(key=lambda f: (f.location.file if f.location else "",
                             f.location.line if f.location else 0, f.code, f.module))
    return kept


def _ignored_for_module(finding: Finding, settings: Settings) -> bool:
    for pattern, codes in settings.per_module_ignores.items():
        if fnmatch.fnmatchcase(finding.module, pattern) and any(
                finding.code.startswith(c.upper()) for c in codes):
            return True
    return False
