"""Apply fixes' edits to the user's files (``--fix``, ``--unsafe-fixes``) or show them
(``--diff``).

Only files inside the project are edited: under its root (the folder of the configuration
file, else the git work tree, else the working directory) and never under site-packages or the
standard library. An edit computed against other text than the file holds now (the file
changed since the build) is not applied. A fix is applied whole or not at all; fixes whose
edits overlap others are left for the next run. The run checks the planned fixes on a copy
before it writes or shows them (``biaslint.verify``) and plans again with those that passed
(``keep``). Files are written through a temporary file in
the same folder and an atomic replace.
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sysconfig
import tempfile
from dataclasses import dataclass, field
from typing import Collection, Iterable, Sequence

from biaslint.findings import Edit, Finding, TargetResult
from biaslint.fix.edits import digest


@dataclass
class FixPlan:
    """What a run would change: the new text per file, and what it leaves alone and why."""

    texts: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (before, after)
    applied: list[Finding] = field(default_factory=list)
    skipped: list[tuple[Finding, str]] = field(default_factory=list)

    def diff(self) -> str:
        chunks = []
        for path, (before, after) in sorted(self.texts.items()):
            shown = _shown(path)
            chunks.extend(difflib.unified_diff(before.splitlines(keepends=True),
                                               after.splitlines(keepends=True),
                                               f"a/{shown}", f"b/{shown}"))
        return "".join(chunks)

    def write(self) -> None:
        for path, (_, after) in self.texts.items():
            _write_atomic(path, after)


def plan_fixes(results: Sequence[TargetResult], unsafe: bool, root: str,
               keep: Collection[Finding] | None = None) -> FixPlan:
    """What --fix would write. ``keep``: only these findings' fixes (those that passed the
    check on a copy); the others are left out without a word (the caller says why)."""
    plan = FixPlan()
    chosen: list[Finding] = []
    kept = None if keep is None else {id(f) for f in keep}
    for result in results:
        for finding in result.findings:
            fix = finding.fix
            if fix is None or not fix.edits:
                continue
            if not fix.safe and not unsafe:
                plan.skipped.append((finding, "unsafe: pass --unsafe-fixes"))
                continue
            chosen.append(finding)
    by_file: dict[str, list[tuple[Finding, list[Edit]]]] = {}
    for finding in chosen:
        assert finding.fix is not None
        paths = {os.path.abspath(e.file) for e in finding.fix.edits}
        outside = [p for p in paths if not inside_project(p, root)]
        if outside:
            plan.skipped.append((finding, f"{_shown(outside[0])} is outside the project: "
                                          "fix it in your code"))
            continue
        if len(paths) != 1:
            plan.skipped.append((finding, "edits span several files"))
            continue
        if kept is not None and id(finding) not in kept:
            continue
        by_file.setdefault(paths.pop(), []).append((finding, list(finding.fix.edits)))
    for path, fixes in by_file.items():
        try:
            with open(path, encoding="utf-8") as handle:
                before = handle.read()
        except OSError as exc:
            plan.skipped.extend((f, f"cannot read {_shown(path)}: {exc.strerror}") for f, _ in fixes)
            continue
        after, applied, skipped = _apply(before, fixes)
        plan.applied.extend(applied)
        plan.skipped.extend(skipped)
        if after != before:
            plan.texts[path] = (before, after)
    return plan


def _apply(text: str, fixes: list[tuple[Finding, list[Edit]]]
           ) -> tuple[str, list[Finding], list[tuple[Finding, str]]]:
    """Apply whole fixes whose edits fit: same text as at the build, no overlap with an edit
    already taken (identical edits, the same loop line fixed for two layers, count once)."""
    current = digest(text)
    taken: list[Edit] = []
    applied: list[Finding] = []
    skipped: list[tuple[Finding, str]] = []
    for finding, edits in fixes:
        if any(e.digest != current for e in edits):
            skipped.append((finding, "the file changed since the build: run again"))
            continue
        new = [e for e in edits if not any(_same(e, t) for t in taken)]
        if any(_overlaps(e, t) for e in new for t in taken):
            skipped.append((finding, "overlaps another fix: run --fix again"))
            continue
        taken.extend(new)
        applied.append(finding)
    for e in sorted(taken, key=lambda e: (e.start, e.end), reverse=True):
        text = text[:e.start] + e.content + text[e.end:]
    return text, applied, skipped


def _same(a: Edit, b: Edit) -> bool:
    return (a.start, a.end, a.content) == (b.start, b.end, b.content)


def _overlaps(a: Edit, b: Edit) -> bool:
    """Two edits that cannot both apply: intersecting replacements, an insertion inside a
    replaced range, or two different insertions at one point (their order would be a guess)."""
    a_insert, b_insert = a.start == a.end, b.start == b.end
    if a_insert and b_insert:
        return a.start == b.start
    if a_insert:
        return b.start < a.start < b.end
    if b_insert:
        return a.start < b.start < a.end
    return a.start < b.end and b.start < a.end


def project_root(config_file: str | None) -> str:
    """The folder of the configuration file, else the git work tree, else the working dir."""
    if config_file:
        return os.path.dirname(os.path.abspath(config_file))
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        top = ""
    return top or os.getcwd()


def inside_project(path: str, root: str) -> bool:
    real = os.path.realpath(path)
    try:
        if os.path.commonpath([real, os.path.realpath(root)]) != os.path.realpath(root):
            return False
    except ValueError:  # another drive
        return False
    parts = real.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        base = sysconfig.get_paths().get(key)
        if base and os.path.commonpath([real, os.path.realpath(base)]) == os.path.realpath(base):
            return False
    return True


def _write_atomic(path: str, text: str) -> None:
    folder = os.path.dirname(path) or "."
    mode = os.stat(path).st_mode
    handle, temporary = tempfile.mkstemp(prefix=".biaslint-", suffix=".py", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            out.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _shown(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def summary(plan: FixPlan, remaining: Iterable[Finding], wrote: bool, checked: str = "") -> str:
    """``fixed 3, 2 remaining`` (or ``would fix``), then why each fixable-looking finding was
    left: one line each. ``checked``: what the check on a copy cost, when it ran."""
    left = list(remaining)
    verb = "fixed" if wrote else "would fix"
    lines = [f"{verb} {len(plan.applied)}, {len(left)} remaining"]
    if checked:
        lines.append(f"  checked on a copy: {checked}")
    for finding, why in plan.skipped:
        lines.append(f"  not fixed: {finding.code} {finding.module or '<root>'}: {why}")
    for finding in left:
        if finding.fix is not None and finding.fix.manual and not any(
                f is finding for f, _ in plan.skipped):
            lines.append(f"  by hand: {finding.code} {finding.module or '<root>'}: "
                         f"{finding.fix.manual}")
    return "\n".join(lines)
