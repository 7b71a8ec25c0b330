"""Apply fixes' edits to the user's files (``--fix``, ``--unsafe-fixes``) or show them
(``--diff``).

Only files inside the project are edited: under its root (the folder of the configuration
file, else the git work tree, else the working directory) and never under site-packages or the
standard library. Each edit carries the digest of the text its offsets were computed in (the
text the build compiled, ``biaslint.sources``); an edit whose digest is not the file's text now
(the file changed since the build) is not applied. A fix is applied whole or not at all; fixes
whose edits overlap others are left for the next run. The run checks the planned fixes on a copy
before it writes or shows them (``biaslint.run.verify``) and plans again with those that passed
(``keep``). Right before writing, the file is read again: if it is no longer the text the edits
were applied to, it is left alone. Files are written through a temporary file in the same
folder and an atomic replace, to the link's target when the path is a symbolic link (the link
stays a link). A file that cannot be read as UTF-8 or cannot be written is left alone with one
line that says why; the other files are still fixed.
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

    # real path -> (before, after): the file as read when planning, and what to write
    texts: dict[str, tuple[str, str]] = field(default_factory=dict)
    applied: list[Finding] = field(default_factory=list)
    skipped: list[tuple[Finding, str]] = field(default_factory=list)
    # Files left alone whole (cannot be read as UTF-8, cannot be written): (path, why, the
    # fixes in it), said in one line per file.
    refused: list[tuple[str, str, list[Finding]]] = field(default_factory=list)
    owners: dict[str, list[Finding]] = field(default_factory=dict)  # real path -> applied

    def diff(self) -> str:
        chunks: list[str] = []
        for path, (before, after) in sorted(self.texts.items()):
            shown = _shown(path)
            chunks.extend(difflib.unified_diff(before.splitlines(keepends=True),
                                               after.splitlines(keepends=True),
                                               f"a/{shown}", f"b/{shown}"))
        return "".join(chunks)

    def write(self) -> list[str]:
        """Write every planned file whose text is still the one the edits were applied to;
        return the paths written. A file that changed since it was planned (an editor saved
        it while the fixes were checked), or cannot be written, is left alone, and its fixes
        move from ``applied`` to ``skipped`` or ``refused``."""
        written = []
        for path, (before, after) in list(self.texts.items()):
            mine = self.owners.get(path, [])
            try:
                now = _read_text(path)
                problem = _unwritable(path)
            except _Unusable as exc:
                problem, now = str(exc), before
            if problem is not None:
                self._refuse(path, problem, mine)
                continue
            if now != before:
                self._drop(path, mine, [(f, "the file changed since the build: run again")
                                        for f in mine])
                continue
            try:
                _write_atomic(path, after)
            except OSError as exc:
                self._refuse(path, f"cannot write it ({exc.strerror or exc}): make it "
                                   "writable, then run --fix again", mine)
                continue
            written.append(path)
        return written

    def _refuse(self, path: str, why: str, findings: list[Finding]) -> None:
        self._drop(path, findings, [])
        self.refused.append((path, why, findings))

    def _drop(self, path: str, findings: list[Finding],
              skipped: list[tuple[Finding, str]]) -> None:
        self.texts.pop(path, None)
        self.applied = [f for f in self.applied if not any(f is g for g in findings)]
        self.skipped.extend(skipped)


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
        # The real file: a symbolic link is followed (the target is what gets edited, and two
        # names of one file are one file).
        paths = {os.path.realpath(e.file) for e in finding.fix.edits}
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
            before = _read_text(path)
            problem = _unwritable(path)
        except _Unusable as exc:
            problem = str(exc)
        if problem is not None:
            plan.refused.append((path, problem, [f for f, _ in fixes]))
            continue
        after, applied, skipped = _apply(before, fixes)
        plan.applied.extend(applied)
        plan.skipped.extend(skipped)
        if after != before:
            plan.texts[path] = (before, after)
            plan.owners[path] = applied
    return plan


class _Unusable(Exception):
    """A file --fix cannot edit; the message says why and what to do, for one line."""


def _read_text(path: str) -> str:
    """The file's text as the edits see it (UTF-8, newlines as Python reads source)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise _Unusable(f"cannot read it ({exc.strerror or exc}): make it readable, then run "
                        "--fix again") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Written back as UTF-8, a file in another encoding would no longer match its coding
        # line: it is not edited.
        raise _Unusable(f"it is not UTF-8 (byte 0x{data[exc.start]:02x} at offset "
                        f"{exc.start}): save it as UTF-8 to let --fix edit it, or apply the "
                        "fixes by hand") from None
    # As Python reads source: no byte-order mark (written back by _write_atomic), universal
    # newlines.
    return text.removeprefix(_BOM).replace("\r\n", "\n").replace("\r", "\n")


_BOM = "\ufeff"


def _unwritable(path: str) -> str | None:
    """Why the file cannot be replaced; None when it can. A read-only file is the user's word
    not to write it: the atomic replace would override it (for root, even without the
    folder's permission), so it is checked here."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc}): run --fix again"
    if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(path, os.W_OK):
        return "it is read-only: make it writable (chmod u+w), then run --fix again"
    folder = os.path.dirname(path) or "."
    if not os.access(folder, os.W_OK | os.X_OK):
        return (f"its folder {_shown(folder)} is not writable (the new text goes to a "
                "temporary file there first): make it writable, then run --fix again")
    return None


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
    # Through a link to its target: replacing the link itself would turn it into a regular
    # file and leave the target unfixed.
    path = os.path.realpath(path)
    folder = os.path.dirname(path) or "."
    mode = os.stat(path).st_mode
    with open(path, "rb") as handle:
        bom = handle.read(3) == _BOM.encode("utf-8")  # kept, as the rest of the file
    handle, temporary = tempfile.mkstemp(prefix=".biaslint-", suffix=".py", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8-sig" if bom else "utf-8",
                       newline="") as out:
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
    removed = sum(1 for f in plan.applied if f.code == "BL001")
    if removed:
        # Safe means the same function of the parameters kept, not the same numbers: torch
        # draws a bias's initial values from the global stream, so without that draw every
        # layer built after it starts elsewhere in a seeded build.
        lines.append(f"  note: {removed} fix{'es' if removed != 1 else ''} remove"
                     f"{'' if removed != 1 else 's'} a bias: a seeded build no longer draws "
                     f"{'them' if removed != 1 else 'it'}, so the layers built after "
                     f"{'them' if removed != 1 else 'it'} with a random init start from other "
                     "values (the same function, other numbers); re-record seeded reference "
                     "weights or outputs")
    for finding, why in plan.skipped:
        lines.append(f"  not fixed: {finding.code} {finding.module or '<root>'}: {why}")
    for path, why, findings in plan.refused:
        names = [f"{f.code} {f.module or '<root>'}" for f in findings]
        named = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        lines.append(f"  not fixed: {_shown(path)}: {why} ({named})")
    said = [f for f, _ in plan.skipped] + [f for _, _, fs in plan.refused for f in fs]
    for finding in left:
        if finding.fix is not None and finding.fix.manual and not any(
                f is finding for f in said):
            lines.append(f"  by hand: {finding.code} {finding.module or '<root>'}: "
                         f"{finding.fix.manual}")
    return "\n".join(lines)
