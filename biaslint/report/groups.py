"""Findings grouped by their cause: one rule's findings that share a ``Finding.cause`` (the same
config value, the same init call with the same arguments, the same constructor line) are one
group, shown once with the count, the layers in short form and one fix. A finding with no
cause, or alone with its cause, is a group of one. Every format groups the same way; JSON keeps
every member."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from biaslint.findings import Finding, Location, Severity, short_path


@dataclass(frozen=True)
class Group:
    members: tuple[Finding, ...]

    @property
    def first(self) -> Finding:
        return self.members[0]

    @property
    def code(self) -> str:
        return self.first.code

    @property
    def severity(self) -> Severity:
        return max(f.severity for f in self.members)

    @property
    def single(self) -> bool:
        return len(self.members) == 1

    @property
    def location(self) -> Location | None:
        """Where to act: the cause's place (the user's line that set a config value, the init
        call, the shared constructor line), else the first finding's."""
        cause = self.first.cause
        if not self.single and cause is not None and cause.location is not None:
            return cause.location
        return self.first.location

    @property
    def layers(self) -> list[str]:
        """The members' layers; their parameters when some share a layer (three unused
        parameters of the root are not three layers)."""
        names = [f.module or "<root>" for f in self.members]
        if self.noun == "layers":
            return names
        return [f"{f.module}.{f.parameter}" if f.module else f.parameter for f in self.members]

    @property
    def noun(self) -> str:
        """What the members are: "layers", or "parameters" when some share a layer."""
        modules = {f.module for f in self.members}
        if len(modules) == len(self.members) or not all(f.parameter for f in self.members):
            return "layers"
        return "parameters"

    def fix_text(self) -> str:
        """The one fix: the cause's, else the members' fix when they share it (its code too when
        that is the same for every member), else the first member's with "likewise"."""
        cause = self.first.cause
        if not self.single and cause is not None and cause.fix:
            return cause.fix
        fixes = [f.fix for f in self.members if f.fix is not None]
        if not fixes:
            return ""
        head = fixes[0]
        if all(f.code == head.code for f in fixes) and len(fixes) == len(self.members):
            return head.title + (f": {head.code}" if head.code else "")
        if all(f.title == head.title for f in fixes):
            example = f" (for {self.first.module or '<root>'}: {head.code}; likewise for each " \
                      "layer)" if head.code else ""
            return head.title + example
        return head.title + f" (for {self.first.module or '<root>'}; the JSON report has each " \
                            "layer's fix)"

    def cause_identity(self) -> str:
        """The cause without line numbers: what stays the same when lines move."""
        cause = self.first.cause
        if cause is None:
            return self.first.module
        if cause.kind == "config":
            return cause.key
        file = short_path(cause.location.file) if cause.location else ""
        if cause.kind == "init":  # "init <call>(<arguments>) @ <file>:<line>"
            return f"{cause.key.rsplit(' @ ', 1)[0]} {file}"
        return f"line {file} {self.first.module}"

    def headline(self) -> str:
        """The group's message: the finding's own for a group of one; for more, the count, the
        cause and one member's message as the example."""
        if self.single:
            return self.first.message
        cause = self.first.cause
        because = f" ({cause.text})" if cause is not None and cause.kind != "line" else ""
        counts = [(s, sum(1 for f in self.members if f.severity is s))
                  for s in (Severity.ERROR, Severity.WARNING, Severity.INFO)]
        mixed = [f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts if n]
        severities = f", {', '.join(mixed)}" if len(mixed) > 1 else ""
        example = next(f for f in self.members if f.severity is self.severity)
        return (f"{len(self.members)} {self.noun}{severities}{because}; e.g. "
                f"{example.module or '<root>'}: {example.message}")


def groups_of(findings: Sequence[Finding]) -> list[Group]:
    """The findings in groups, in the order of each group's first member."""
    order: list[tuple[str, str] | int] = []
    members: dict[tuple[str, str] | int, list[Finding]] = {}
    for index, finding in enumerate(findings):
        # One rule, one cause: the severities may differ (the group shows the worst and counts
        # each), the fix does not.
        key: tuple[str, str] | int = (finding.code, finding.cause.key) \
            if finding.cause is not None else index
        if key not in members:
            order.append(key)
            members[key] = []
        members[key].append(finding)
    return [Group(tuple(members[key])) for key in order]


def short_layers(names: Sequence[str], limit: int = 6) -> str:
    """Layer names in short form: names that differ only in their numbers become one pattern
    with ranges (``model.layers.{0..79}.mlp.down_proj``), at most ``limit`` patterns, then how
    many more."""
    patterns: dict[str, list[tuple[int, ...]]] = {}
    for name in names:
        numbers = tuple(int(n) for n in re.findall(r"(?<![^.])\d+(?![^.])", name))
        pattern = re.sub(r"(?<![^.])\d+(?![^.])", "#", name)
        patterns.setdefault(pattern, []).append(numbers)
    shown = []
    for pattern, found in patterns.items():
        text = pattern
        distinct = set(found)
        combinations = 1
        for position in range(pattern.count("#")):
            values = sorted({n[position] for n in distinct})
            combinations *= len(values)
            text = text.replace("#", _range(values), 1)
        if combinations != len(distinct):  # not every combination of the ranges is a layer
            text += f" ({len(distinct)} of them)"
        shown.append(text)
    more = len(shown) - limit
    head = ", ".join(shown[:limit])
    return head + (f" and {more} more pattern{'s' if more != 1 else ''}" if more > 0 else "")


def _range(values: list[int]) -> str:
    if len(values) == 1:
        return str(values[0])
    if values == list(range(values[0], values[-1] + 1)):
        return f"{{{values[0]}..{values[-1]}}}"
    if len(values) <= 8:
        return "{" + ",".join(str(v) for v in values) + "}"
    return f"{{{len(values)} of {values[0]}..{values[-1]}}}"


def where(location: Location | None) -> str:
    """``file:line:col`` with an installed package's file in short form."""
    if location is None:
        return "<unknown>"
    return f"{short_path(location.file)}:{location.line}:{location.col}"
