"""Data that crosses pipeline stages: severities, locations, fixes and findings.

Nothing here imports torch, so the CLI can format and filter findings cheaply.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

# A reason from ``Rule.declined`` that starts with this is a measurement that failed, not a
# choice: the layer counts as not judged, and the analysis is incomplete (exit 2 unless
# --allow-incomplete), as for a value biaslint could not read.
NOT_MEASURED = "not measured: "

class Severity(enum.IntEnum):
    INFO = 1
    WARNING = 2
    ERROR = 3

    @classmethod
    def parse(cls, text: str) -> "Severity":
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown severity {text!r}: use error, warning or info") from None

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Location:
    """Where something was written: a file, a 1-based line and column, and the call's last line."""

    file: str
    line: int
    col: int = 0
    end_line: int | None = None
    function: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "col": self.col,
                "end_line": self.end_line or self.line}

    @property
    def shown(self) -> str:
        """``file:line`` as messages quote it, a file of an installed package in short form."""
        return f"{short_path(self.file)}:{self.line}"


def short_path(path: str) -> str:
    """A file of an installed package from its package folder on
    (``transformers/models/llama/modeling_llama.py``); any other path as it is."""
    parts = path.replace("\\", "/").split("/")
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            rest = parts[len(parts) - parts[::-1].index(marker):]
            if rest:
                return "/".join(rest)
    return path


@dataclass(frozen=True)
class BuildFrame:
    """One call in the chain of the user's code that built a layer, innermost (the construction
    site) first: where that call is, the function it runs in, and what kind of scope that is.

    ``kind``: "init" (an ``nn.Module``'s ``__init__``: it runs once per instance of its class),
    "entry" (the function biaslint called, or the one that entered ``recording()``), "module"
    (module-level code), "comprehension" (part of the function around it), "function" (any other
    function: a helper that whoever calls it can use for other layers and other models)."""

    location: Location
    kind: str
    name: str  # the function's qualified name: "conv_nd", "Block.__init__", "<module>"
    first_line: int  # where its ``def`` is (0 for module-level code)


@dataclass(frozen=True)
class InitCall:
    """The call that last wrote a parameter's values while the model was built."""

    name: str  # e.g. "nn.init.zeros_", "Tensor.normal_"
    args: str  # the non-tensor arguments as the user wrote them, e.g. "mean=0, std=1"
    location: Location | None
    by_user: bool  # False when torch's own reset_parameters() set it (the default init)

    def describe(self) -> str:
        call = f"{self.name}(..., {self.args})" if self.args else self.name
        return call if self.by_user else f"{call} (PyTorch default)"


@dataclass(frozen=True)
class LostInit:
    """An init call whose values no parameter keeps: ``overwritten`` (a later init call wrote
    every entry again, ``by``) or ``computed`` (it wrote a tensor a parametrization or a hook
    computes from ``parameters`` anew, e.g. a weight-normed conv's ``weight``)."""

    kind: str  # "overwritten" or "computed"
    call: InitCall
    parameters: tuple[str, ...]  # the parameters it meant (computed: the ones that hold it)
    by: InitCall | None = None  # overwritten: the call that wrote them again
    computed: str = ""  # computed: the module attribute it wrote, e.g. "conv.weight"


@dataclass(frozen=True)
class ConfigScale:
    """What building the model again with its config's init scale changed showed
    (``load.differential``): the drawn parameters whose init law moved with the config
    (``follows``), the ones whose law stayed the same (``ignores``, with the law), and the ones
    that could not be compared (``unknown``, with why). ``error``: the second build failed."""

    attributes: tuple[tuple[str, float], ...]  # the config's init-scale values, as built
    factor: float  # the second build read each of them as this many times its value
    follows: tuple[str, ...] = ()
    ignores: tuple["FixedDraw", ...] = ()
    unknown: tuple[tuple[str, str], ...] = ()  # (parameter, why)
    error: str = ""  # why nothing was compared, as a reason a layer is not judged
    # attribute -> the line of the project's code that set it in the second build
    set_at: tuple[tuple[str, Location], ...] = ()


@dataclass(frozen=True)
class FixedDraw:
    """A drawn parameter whose init law was the same in both builds of ``ConfigScale``: the law
    of its largest drawn region (``kind`` "normal", "trunc_normal", "uniform", ...; ``loc`` and
    ``scale`` as in ``biaslint.laws.Law``, ``high`` the upper bound), the whole text, and what
    the build tells of where it came from."""

    parameter: str
    law: str  # e.g. "N(0, 0.02)"
    kind: str
    loc: float
    scale: float
    high: float
    # Whether its last write was its own layer's constructor (``__init__``,
    # ``reset_parameters``): no init call of the model replaced that draw
    own_init: bool = False
    # Whether the nearest config up the module tree (``module.config``) holds an init scale;
    # False for a sub-model whose own config has none (its init falls back to a literal)
    governed: bool = True
    module_type: str = ""  # the class of the module that holds it
    how: str = ""  # the call that drew it, e.g. "nn.init.normal_"


@dataclass(frozen=True)
class Unwritten:
    """A parameter the build allocated without values (``torch.empty``, ``new_empty``,
    ``empty_like``, ``Tensor.new(*sizes)``) and whose memory, in ``entries`` of its ``total``
    entries, no later call wrote: those entries hold whatever the memory held."""

    entries: int
    total: int
    how: str  # the allocating call, e.g. "torch.empty"
    location: Location | None  # the user's line that allocated it, when recorded


@dataclass(frozen=True)
class Edit:
    """One replacement in a source file (as ruff's ``Edit``): the characters [start, end) of the
    file's text become ``content``; an insertion has start == end. ``digest`` is the SHA-256 of
    the text it was computed against, so a file changed since the build is never edited."""

    file: str
    start: int
    end: int
    content: str
    line: int  # 1-based line and column of start and end, for editors and SARIF
    col: int
    end_line: int
    end_col: int
    digest: str

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "start": {"line": self.line, "col": self.col},
                "end": {"line": self.end_line, "col": self.end_col}, "content": self.content}


class FixKind(enum.Enum):
    """What edit of the user's source a fix's ``code`` stands for; ``biaslint.fix.plan`` picks
    the edit by it (never by reading the code). Not part of the JSON or SARIF output."""

    # ``code`` is a constructor call with ``bias=False``, to write where the layer is built
    BIAS_FALSE = "bias-false"
    # ``code`` is an ``nn.init`` call on the parameter, to write in place of the user's own init
    # call of it
    REPLACE_INIT = "replace-init"
    # ``code`` is a ``biaslint.init`` helper called on the layer, to insert after the statement
    # that builds it (or in place of the user's own ``nn.init`` call of its bias)
    INIT_HELPER = "init-helper"
    # no automatic edit: ``code``, if any, shows what to write by hand
    MANUAL = "manual"


@dataclass(frozen=True)
class Fix:
    """How to mend a finding. ``title`` is imperative; ``code`` is a line to write instead, if any.

    ``kind`` says what edit the code stands for; ``edits`` apply it to the user's files
    (``--fix`` when ``safe``, ``--unsafe-fixes`` for the rest); ``manual`` says why a fix has no
    edits (the summary of ``--fix`` quotes it)."""

    title: str
    code: str = ""
    safe: bool = False
    edits: tuple[Edit, ...] = ()
    manual: str = ""
    kind: FixKind = FixKind.MANUAL

    @property
    def applicability(self) -> str:
        if not self.edits:
            return "manual"
        return "safe" if self.safe else "unsafe"


@dataclass(frozen=True)
class Cause:
    """What several findings can share, so a report says it once (``engine.causes``).

    ``kind``: "config" (an init drew from a value the model's config holds: ``key`` names the
    config class, attribute and value), "init" (the same init call with the same arguments) or
    "line" (the same constructor line). ``text`` says it; ``location`` is where to change it
    (the user's line that set the config value, the init call, the constructor); ``fix`` is the
    one fix for every finding of the cause ("" when each keeps its own)."""

    kind: str
    key: str
    text: str
    location: Location | None = None
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "text": self.text,
                "location": self.location.as_dict() if self.location else None,
                "fix": self.fix or None}


@dataclass(frozen=True)
class Finding:
    code: str
    name: str
    severity: Severity
    module: str  # qualified name as in named_modules(); "" for the root
    module_type: str
    message: str
    location: Location | None
    fix: Fix | None = None
    parameter: str = ""
    data: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # What it shares with other findings of the rule (``engine.causes``), for grouping.
    cause: Cause | None = field(default=None, compare=False, hash=False)

    def as_dict(self) -> dict[str, Any]:
        loc = self.location
        return {
            "code": self.code,
            "name": self.name,
            "severity": str(self.severity),
            "module": self.module,
            "module_type": self.module_type,
            "parameter": self.parameter,
            "message": self.message,
            "file": loc.file if loc else None,
            "line": loc.line if loc else None,
            "col": loc.col if loc else None,
            "end_line": (loc.end_line or loc.line) if loc else None,
            "fix": {"title": self.fix.title, "code": self.fix.code, "safe": self.fix.safe,
                    "applicability": self.fix.applicability,
                    "edits": [e.as_dict() for e in self.fix.edits],
                    **({"manual": self.fix.manual} if self.fix.manual else {})}
            if self.fix else None,
            "data": self.data,
            "cause": self.cause.as_dict() if self.cause else None,
        }


@dataclass(frozen=True)
class Coverage:
    """Of the parametrized layers the forward calls, how many ended up inside a graph."""

    total: int
    traced: int
    untraced: tuple[str, ...] = ()
    opaque: tuple[str, ...] = ()  # modules kept as opaque leaves because they would not trace
    # Layers the forward did not call on the example inputs: not counted in total.
    not_called: tuple[str, ...] = ()

    @property
    def ratio(self) -> float:
        return 1.0 if self.total == 0 else self.traced / self.total

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "traced": self.traced, "ratio": round(self.ratio, 4),
                "untraced": list(self.untraced), "opaque": list(self.opaque),
                "not_called": list(self.not_called)}


@dataclass(frozen=True)
class Disagreement:
    """A claim a rule's analysis made that the measurement on the example inputs did not bear
    out. The claim is not reported; it is counted, so tests and sweeps can assert there are none."""

    layer: str
    claim: str  # what the analysis said, e.g. "bias cancelled by BatchNorm2d 'bn'"
    measured: str  # what the measurement found, e.g. "the bias moves the outputs by 3e-02"

    def as_dict(self) -> dict[str, str]:
        return {"layer": self.layer, "claim": self.claim, "measured": self.measured}


@dataclass(frozen=True)
class RuleScope:
    """What one rule judged on one target: how many of the layers it applies to, and each layer
    it could not judge with the reason (outside any graph, values it cannot read, it crashed),
    and the claims its measurement overruled."""

    code: str
    judged: int = 0
    unjudged: tuple[tuple[str, str], ...] = ()  # (layer, reason)
    disagreements: tuple[Disagreement, ...] = ()

    @property
    def total(self) -> int:
        return self.judged + len(self.unjudged)

    def as_dict(self) -> dict[str, Any]:
        return {"judged": self.judged, "total": self.total,
                "unjudged": [{"layer": layer, "reason": reason}
                             for layer, reason in self.unjudged],
                "disagreements": [d.as_dict() for d in self.disagreements]}


@dataclass(frozen=True)
class TargetResult:
    """Everything the reporters need for one target, and nothing they must compute."""

    target: str
    findings: tuple[Finding, ...] = ()
    coverage: Coverage | None = None
    notes: tuple[str, ...] = ()
    error: str | None = None
    # What the selected rules could not judge, each with its reason (a rule that crashed,
    # called layers outside any graph, parameters holding NaN/Inf). Non-empty: the exit code is
    # 2 unless incomplete analysis is allowed.
    incomplete: tuple[str, ...] = ()
    # Per selected rule (BL100 aside): the layers it judged and those it could not.
    rules: tuple[RuleScope, ...] = ()
    timings: dict[str, float] = field(default_factory=dict, compare=False, hash=False)
    # Activation and gradient RMS per layer at init (``biaslint.analysis.signal.Signal``), when
    # the report asked for it and a real forward was possible; None otherwise.
    signal: Any = field(default=None, compare=False, hash=False)
    # With ``Settings.record_sources``: a ``biaslint.load.files.SourceFiles``, the project files the
    # build and forward ran or read and the libraries they ran; None when not recorded or not
    # trustworthy.
    sources: Any = field(default=None, compare=False, hash=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "findings": [f.as_dict() for f in self.findings],
            "coverage": self.coverage.as_dict() if self.coverage else None,
            "notes": list(self.notes),
            "incomplete": list(self.incomplete),
            "rules": {scope.code: scope.as_dict() for scope in self.rules},
            "error": self.error,
            "signal": self.signal.as_dict() if self.signal is not None else None,
        }
