"""Inline suppressions: ``# biaslint: ignore[BL001,BL002]`` or a bare ``# biaslint: ignore``, and
the BL codes of a ``# noqa: BL001, E501`` comment.

``# noqa`` is the comment ruff and flake8 users already write. Only its BL codes are biaslint's
(``E501`` stays the other tools' business), and a bare ``# noqa`` with no codes is not a biaslint
suppression: it is written to quiet ruff or flake8 on that line, and it silencing every biaslint
finding on a layer's line as well would surprise. BL100 never reports a bare ``# noqa`` either.

A comment suppresses a finding when it sits on a line of the call that constructed the finding's
layer (the recorded construction site; every line of a multi-line call counts) or on a line of the
finding's own location. That is where the text report points, so it is where users look.

The meta-rule BL100 reports comments that suppress nothing, the way ruff's RUF100 reports unused
``noqa``. A wrong "unused" report would push users to delete a comment that matters, so a comment
is only judged when the verdict is certain for this model:

* on a line that builds a layer of this model: unused when every code it names was run and
  suppressed nothing here (a bare comment: when every rule ran);
* on any other line of a function that built or initialized a layer of this model (the classic
  slip: the comment on the ``nn.init.zeros_`` line): it can never suppress anything there.

Comments elsewhere in a file may belong to another target, so they are left alone. A comment that
names BL100 itself is never reported.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

from biaslint.findings import Finding, Location, Severity

META_CODE = "BL100"
META_NAME = "unused-suppression"

# "# biaslint: ignore" or "# biaslint: ignore[BL001, BL002]", anywhere in a comment (so it can
# follow another tool's pragma, e.g. "# noqa: E501  # biaslint: ignore[BL002]").
_PATTERN = re.compile(r"#\s*biaslint\s*:\s*ignore\b(?:\s*\[([^\]]*)\])?", re.IGNORECASE)
# ruff's noqa grammar (crates/ruff_linter/src/noqa.rs): "#", the word noqa in any case, then
# optionally a colon and codes ([A-Z]+ then digits) separated by commas and/or spaces. Without the
# colon ruff reads a bare noqa, and so does this. File-level exemptions (ruff: noqa) do not match.
# (This comment avoids writing the directive itself: ruff would read it.)
_NOQA = re.compile(r"#\s*(?i:noqa)(?::\s*([A-Z]+[0-9]+(?:[\s,]+[A-Z]+[0-9]+)*))?")
_OWN_CODE = re.compile(r"BL[0-9]+")  # not BLE001 (flake8-blind-except)


@dataclass(frozen=True)
class Suppression:
    file: str
    line: int
    col: int  # 1-based column of the '#'
    codes: tuple[str, ...]  # () for a bare "ignore": every code
    form: str = "biaslint"  # "biaslint" (biaslint: ignore[...]) or "noqa" (noqa: BL001)
    noqa_codes: tuple[str, ...] = ()  # a noqa comment's codes as written, other tools' too

    def covers(self, code: str) -> bool:
        return not self.codes or code in self.codes

    def noqa_without(self, codes: Iterable[str]) -> str:
        """The noqa comment with ``codes`` taken out (the other tools' codes kept), or ""."""
        rest = [c for c in self.noqa_codes if c not in set(codes)]
        return f"# noqa: {', '.join(rest)}" if rest else ""


@dataclass
class _Usage:
    used_codes: set[str] = field(default_factory=set)


def comments_in(path: str) -> tuple[Suppression, ...]:
    """The suppression comments of a Python source file (real comments, not strings)."""
    return _comments_in(path)


@lru_cache(maxsize=256)
def _comments_in(path: str) -> tuple[Suppression, ...]:
    source = _read(path)
    if source is None or ("biaslint" not in source and "noqa" not in source.lower()):
        return ()
    found: list[Suppression] = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                found.extend(_in_comment(path, token.start[0], token.start[1] + 1, token.string))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return ()
    return tuple(found)


def _in_comment(path: str, line: int, col: int, text: str) -> Iterable[Suppression]:
    """The suppressions one comment token holds: its ``# biaslint: ignore`` and its ``# noqa``
    with BL codes (``# noqa: E501  # biaslint: ignore[BL002]`` holds one of each kind)."""
    match = _PATTERN.search(text)
    if match is not None:
        codes = tuple(c.strip().upper() for c in (match.group(1) or "").split(",") if c.strip())
        yield Suppression(path, line, col + match.start(), codes)
    noqa = _NOQA.search(text)
    if noqa is not None and noqa.group(1):
        named = tuple(dict.fromkeys(re.split(r"[\s,]+", noqa.group(1).strip())))
        own = tuple(c for c in named if _OWN_CODE.fullmatch(c))
        if own:
            yield Suppression(path, line, col + noqa.start(), own, form="noqa", noqa_codes=named)


def _read(path: str) -> str | None:
    """The text the build compiled the file from (the recorded lines point into it), else the
    file as it is now."""
    from biaslint.sources import text_of

    kept = text_of(path)
    if kept is not None:
        return kept
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None


def clear_cache() -> None:
    """Forget parsed files (the CLI lints each target once; tests rewrite files in place)."""
    _comments_in.cache_clear()
    _function_spans.cache_clear()


def _span(location: Location | None) -> tuple[str, range] | None:
    if location is None:
        return None
    return location.file, range(location.line, (location.end_line or location.line) + 1)


def apply_suppressions(
    findings: Sequence[Finding],
    module_sites: Mapping[str, Location],
    ran_codes: Iterable[str],
    all_codes: Iterable[str],
    extra_locations: Iterable[Location] = (),
) -> list[Finding]:
    """Drop suppressed findings; add a BL100 finding per unused comment when BL100 ran.

    ``module_sites`` maps module qualnames to construction sites; ``ran_codes`` are the rules that
    ran on this model; ``extra_locations`` are other places the build ran user code (init calls),
    which widen the set of functions whose comments can be judged.
    """
    clear_cache()
    ran = set(ran_codes)
    usage: dict[Suppression, _Usage] = {}
    kept: list[Finding] = []
    for finding in findings:
        comments = _comments_for(finding, module_sites)
        hits = [c for c in comments if c.covers(finding.code)]
        for comment in hits:
            usage.setdefault(comment, _Usage()).used_codes.add(finding.code)
        if not hits:
            kept.append(finding)
    if META_CODE in ran:
        kept.extend(_unused(module_sites, usage, ran, set(all_codes), list(extra_locations)))
    return kept


def _comments_for(finding: Finding, module_sites: Mapping[str, Location]) -> list[Suppression]:
    spans = [s for s in (_span(module_sites.get(finding.module)), _span(finding.location)) if s]
    result: list[Suppression] = []
    for file, lines in spans:
        result.extend(c for c in comments_in(file) if c.line in lines and c not in result)
    return result


def _unused(module_sites: Mapping[str, Location], usage: Mapping[Suppression, _Usage],
            ran: set[str], all_codes: set[str],
            extra_locations: list[Location]) -> Iterable[Finding]:
    site_lines: dict[str, set[int]] = {}
    for site in module_sites.values():
        file, lines = _span(site)  # type: ignore[misc]  # a module site always has a span
        site_lines.setdefault(file, set()).update(lines)
    touched: dict[str, set[int]] = {f: set(lines) for f, lines in site_lines.items()}
    for loc in extra_locations:
        touched.setdefault(loc.file, set()).add(loc.line)
    every_rule_ran = (all_codes - {META_CODE}) <= ran
    for file in sorted(touched):
        for comment in comments_in(file):
            if META_CODE in comment.codes:
                continue  # "ignore[BL002, BL100]": the user vouches for it
            used = usage.get(comment, _Usage()).used_codes
            unknown = [c for c in comment.codes if c not in all_codes]
            if comment.line in site_lines.get(file, ()):
                message = _judge_attached(comment, used, ran, every_rule_ran, unknown)
            elif _may_construct(file, comment.line):
                # A class is called on that line: a layer this target did not build (another
                # branch, another target's configuration). Nothing to say about it here.
                continue
            elif _in_building_function(file, comment.line, touched[file]):
                message = _misplaced(comment)
            else:
                continue
            if message:
                yield Finding(
                    code=META_CODE, name=META_NAME, severity=Severity.WARNING, module="",
                    module_type="comment", message=message,
                    location=Location(file=file, line=comment.line, col=comment.col),
                    data={"codes": list(comment.codes), "form": comment.form},
                )


def _misplaced(comment: Suppression) -> str:
    if comment.form == "biaslint":
        return ("suppression comment is not on a line that constructs a layer, so it "
                "suppresses nothing: put it on the line that builds the layer")
    codes = ", ".join(comment.codes)
    rest = comment.noqa_without(comment.codes)
    keep = f", keeping `{rest}` here" if rest else ""
    return (f"{codes} in `# noqa: {', '.join(comment.noqa_codes)}` suppresses nothing: the line "
            f"does not construct a layer; move {codes} to the line that builds it{keep}")


def _may_construct(file: str, line: int) -> bool:
    """Does the code on ``line`` call something with a class-like name (``nn.Linear(...)``)?"""
    import re

    from biaslint.sources import line_of

    code = line_of(file, line).split("#", 1)[0]
    return re.search(r"\b[A-Z]\w*\s*\(", code) is not None


def _judge_attached(comment: Suppression, used: set[str], ran: set[str], every_rule_ran: bool,
                    unknown: list[str]) -> str | None:
    if unknown:
        form = "suppression" if comment.form == "biaslint" else "`# noqa` comment"
        return (f"{form} names {', '.join(unknown)}, which "
                f"{'is not a rule' if len(unknown) == 1 else 'are not rules'}: "
                "biaslint rules lists the codes")
    if not comment.codes:
        if used or not every_rule_ran:
            return None
        return "bare suppression comment suppresses nothing on this line: remove it"
    idle = [c for c in comment.codes if c in ran and c not in used]
    if not idle:
        return None  # used, or the unused codes did not run here: cannot tell
    what = ", ".join(idle)
    if comment.form == "noqa":
        rest = comment.noqa_without(idle)
        remedy = f"remove {what} from it, keeping `{rest}`" if rest else "remove the comment"
        return (f"{what} in `# noqa: {', '.join(comment.noqa_codes)}` suppresses nothing on "
                f"this line: {remedy}")
    return (f"suppression of {what} suppresses nothing on this line: remove "
            f"{'it' if len(idle) == len(comment.codes) else what + ' from the comment'}")


@lru_cache(maxsize=256)
def _function_spans(path: str) -> tuple[tuple[int, int], ...]:
    source = _read(path)
    if source is None:
        return ()
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ()
    return tuple((node.lineno, node.end_lineno or node.lineno) for node in ast.walk(tree)
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))


def _in_building_function(file: str, line: int, touched_lines: set[int]) -> bool:
    """Whether the innermost function around ``line`` also built or initialized a layer."""
    around = [s for s in _function_spans(file) if s[0] <= line <= s[1]]
    if not around:
        return False
    start, end = min(around, key=lambda s: s[1] - s[0])
    return any(start <= t <= end for t in touched_lines)


def with_severity(findings: Iterable[Finding], overrides: Mapping[str, Severity]) -> list[Finding]:
    return [replace(f, severity=overrides[f.code]) if f.code in overrides else f for f in findings]
