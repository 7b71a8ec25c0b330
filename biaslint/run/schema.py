"""Every setting, one row each: its Python name, its key in ``[tool.biaslint]``, its command-line
flag, its scope, the parser every source shares, and its help.

The config reader (``biaslint.run.config``), the command line (``biaslint.cli`` makes its
options from these rows), ``biaslint.check`` / ``check_target`` and the pytest plugin (through
``biaslint.run.check.plan``) all read this table, so a setting is spelled, parsed and
explained once. Scopes:

* ``run``: one value for the whole run, a field of ``biaslint.settings.Settings`` (the row's
  ``field``, else its name);
* ``target``: per target, a field of ``TargetConfig`` (set per target in ``targets`` tables;
  the command line and the Python API override every target's);
* ``input``: per target like ``target``, and what a rule reads besides the model: a rule names
  the inputs it reads in ``Rule.inputs`` and reads them from ``RuleContext.inputs``;
* ``command``: what the check command does with the results (format, files, fixes, processes).

A parser takes a value from any source (a TOML value, the flag's text, a Python object) and
returns it typed, or raises ``Invalid`` with what is wrong; the source says where (the file and
key, the flag, the keyword). The values of one source are parsed together (``parse_values``):
``plugins`` first, so the codes the other values name may be the plugin rules' codes. No torch
import (unless a plugin module imports it).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Literal, Mapping, Sequence

from biaslint.errors import ConfigError
from biaslint.findings import Severity
from biaslint.report import FORMATS
from biaslint.run.reports import Report
from biaslint.settings import PluginModule, Settings, TargetConfig

if TYPE_CHECKING:
    from biaslint.rules import Rule

Scope = Literal["run", "target", "input", "command"]

HEADS = ("softmax", "sigmoid")
DEVICES = ("cpu", "meta")
SEVERITIES = ("error", "warning", "info")


class Invalid(ValueError):
    """A value a parser refuses: ``problem`` says why; ``at`` the part of the value (a table's
    key, ``.BL002``) when not the whole."""

    def __init__(self, problem: str, at: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.at = at


@dataclass(frozen=True)
class Source:
    """Where a value was given: ``where`` names it in a message ("pyproject.toml:
    tool.biaslint.select", "--select", "biaslint.check select"); ``base``: the folder relative
    paths in it start from (a ``@priors.json`` in pyproject.toml is relative to the file)."""

    where: str
    base: Path | None = None

    def error(self, invalid: Invalid) -> ConfigError:
        return ConfigError(f"{self.where}{invalid.at}: {invalid.problem}")


Parser = Callable[[Any, Source], Any]


@dataclass(frozen=True)
class Setting:
    name: str  # the Python keyword, and the Settings / TargetConfig field (unless ``field``)
    scope: Scope
    parse: Parser
    help: str
    key: str | None = None  # in [tool.biaslint] (run, command) or a target's table (target, input)
    flag: str | None = None  # on the command line
    short: str | None = None  # the flag's one-letter form
    python: tuple[str, ...] = ()  # which of "check" and "check_target" take it as a keyword
    default: Any = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None  # the flag's values (click.Choice)
    multiple: bool = False  # the flag may be given more than once
    is_flag: bool = False  # the flag takes no value
    off_flag: str | None = None  # a flag that turns it off over the file's true (--cold)
    field: str | None = None  # the Settings field, when not ``name``
    # What is left of parsing when a target is linted with the value (reading a file).
    late: Callable[[Any], Any] | None = None
    number: type | None = None  # the flag's value is this number type (int, float)
    # Its value names rule codes: parsed with the plugin rules taking part (``parse_values``).
    names_rules: bool = False

    @property
    def attribute(self) -> str:
        return self.field or self.name


# --- parsers --------------------------------------------------------------------------------


def describe(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", tuple: "a list", dict: "a table"}
    return f"{names.get(type(value), type(value).__name__)} ({value!r})"


def known_prefix(code: str) -> bool:
    """Whether a selector (a code or a prefix like ``BL00``) matches at least one rule (the
    plugin rules taking part included)."""
    from biaslint.rules import all_rules

    return any(rule.code.startswith(code.upper()) for rule in all_rules())


def text(value: Any, source: Source) -> str:
    if not isinstance(value, str):
        raise Invalid(f"must be a string, not {describe(value)}")
    return value


def boolean(value: Any, source: Source) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false, not {describe(value)}")
    return value


def choice(choices: tuple[str, ...]) -> Parser:
    def parse(value: Any, source: Source) -> str:
        value = text(value, source)
        if value not in choices:
            raise Invalid(f"{value!r} is not one of {', '.join(choices)}")
        return value
    return parse


def reports(value: Any, source: Source) -> tuple[Report, ...]:
    """``FMT`` or ``FMT=PATH``, one or a list of them: each a report of the run, on stdout or
    in its file. A path given in the config file is relative to the file's folder (as
    ``@priors.json`` is); one from the command line stays relative to the current directory
    (``biaslint.run.reports.resolve`` makes it absolute before the run moves to the config's
    folder)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or \
            not all(isinstance(v, str) for v in items):
        raise Invalid("must be a format or a list of them, like \"json\" or [\"github\", "
                      f"\"sarif=biaslint.sarif\"], not {describe(value)}")
    # How a report is named in a message: "--format sarif=a.sarif" for the flag (whose source
    # names every value given), the key and the value for the file.
    flag = source.where.split(" ")[0] if source.where.startswith("--") else ""
    found = []
    for item in items:
        fmt, equals, path = (part.strip() for part in item.partition("="))
        if fmt not in FORMATS:
            raise Invalid(f"{fmt!r} is not one of {', '.join(FORMATS)}")
        if equals and not path:
            raise Invalid(f"{item!r} names no file after '=': write {fmt}=PATH for a file, "
                          f"{fmt} for stdout")
        if path and source.base is not None and not Path(path).is_absolute():
            path = str(source.base / path)
        given = f"{flag} {item}" if flag else f"{source.where} {item!r}"
        found.append(Report(fmt, path or None, given))
    return tuple(found)


def severity(value: Any, source: Source) -> Severity:
    if isinstance(value, Severity):
        return value
    return Severity.parse(choice(SEVERITIES)(value, source))


def codes(value: Any, source: Source) -> tuple[str, ...]:
    """Rule codes or prefixes: a string (comma-separated) or a list of them."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise Invalid(f"must be a list of rule codes, not {describe(value)}")
    found = tuple(c.strip().upper() for v in items for c in v.split(",") if c.strip())
    for code in found:
        if not known_prefix(code):
            raise Invalid(f"{code!r} matches no rule (biaslint rules lists them)")
    return found


def plugin_modules(value: Any, source: Source) -> tuple[PluginModule, ...]:
    """Modules of the project's own rules: a module name or a list of them, importable from the
    config file's folder (or the working directory). Each is imported and its rules checked
    here: a module that does not import or holds no valid rule is this value's error."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise Invalid("must be a list of module names like [\"mypkg.lint_rules\"], not "
                      f"{describe(value)}")
    folder = str((source.base or Path.cwd()).resolve())
    found = []
    for name in (n.strip() for v in items for n in v.split(",") if n.strip()):
        if not all(part.isidentifier() for part in name.split(".")):
            raise Invalid(f"{name!r} is not a module name like \"mypkg.lint_rules\"")
        found.append(PluginModule(name, folder))
    try:
        plugin_rules(found, entry_points=False)
    except ConfigError as exc:
        raise Invalid(str(exc)) from exc
    return tuple(found)


def plugin_rules(modules: Sequence[PluginModule] = (), *,
                 entry_points: bool = True) -> tuple[type[Rule], ...]:
    """The plugin rules of ``modules`` and of the installed entry points
    (``biaslint.rules.plugins``), each of whose ``inputs`` must be an input row here."""
    from biaslint.rules.plugins import load_plugins

    rules = load_plugins(modules, entry_points=entry_points)
    known = sorted(row.name for row in rows("input"))
    for rule in rules:
        unknown = [name for name in rule.inputs if name not in known]
        if unknown:
            raise ConfigError(f"rule {rule.code} ({rule.__module__}.{rule.__qualname__}) reads "
                              f"the input(s) {', '.join(unknown)}, which biaslint does not "
                              f"give; the inputs are {', '.join(known)}")
    return rules


def _table(value: Any) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise Invalid(f"must be a table, not {describe(value)}")
    return value


def _rule(code: Any, at: str) -> Any:
    from biaslint.rules import rule_by_code

    rule = rule_by_code(str(code))
    if rule is None:
        raise Invalid(f"{code!r} is not a rule code (biaslint rules lists them)", at)
    return rule


def severity_table(value: Any, source: Source) -> dict[str, Severity]:
    result = {}
    for code, level in _table(value).items():
        _rule(code, f".{code}")
        try:
            result[str(code).upper()] = severity(level, source)
        except Invalid as exc:
            raise Invalid(exc.problem, f".{code}") from None
    return result


def module_ignores(value: Any, source: Source) -> dict[str, tuple[str, ...]]:
    result = {}
    for pattern, listed in _table(value).items():
        try:
            result[str(pattern)] = codes(listed, source)
        except Invalid as exc:
            raise Invalid(exc.problem, f".{pattern!r}") from None
    return result


def rule_options(value: Any, source: Source) -> dict[str, dict[str, Any]]:
    """Per rule code, its options, checked against the rule's own ``options``: known names
    (kebab-case or snake_case), each of its default's type."""
    result: dict[str, dict[str, Any]] = {}
    for code, options in _table(value).items():
        rule = _rule(code, f".{code}")
        if not isinstance(options, Mapping):
            raise Invalid(f"must be a table of options, not {describe(options)}", f".{code}")
        known = {o.name: o for o in rule.options}
        if not known and options:
            raise Invalid(f"unknown option: {rule.code} has no options",
                          f".{code}.{next(iter(options))}")
        values = {}
        for key, given in options.items():
            name = _spelling(str(key), known)
            if name not in known:
                raise Invalid(unknown_key(name, tuple(known)), f".{code}.{name}")
            default = known[name].default
            _check_option_type(default, given, f".{code}.{name}")
            values[name] = tuple(given) if isinstance(default, tuple) else given
        result[rule.code] = values
    return result


def unknown_key(key: str, allowed: tuple[str, ...]) -> str:
    import difflib

    close = difflib.get_close_matches(key.replace("_", "-"), allowed, n=1)
    return "unknown key" + (f" (did you mean {close[0]!r}?)" if close else
                            f" (known keys: {', '.join(allowed)})")


def _spelling(key: str, known: Mapping[str, Any]) -> str:
    """TOML style is kebab-case, Python style snake_case: either spelling names an option."""
    for candidate in (key, key.replace("-", "_"), key.replace("_", "-")):
        if candidate in known:
            return candidate
    return key


def _check_option_type(default: Any, value: Any, at: str) -> None:
    """Options take the type of their default; an int is fine where a float is expected."""
    if default is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(default, int) and isinstance(value, float):
            ok = value.is_integer()
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, (list, tuple))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise Invalid(f"must be {describe(default).split(' (')[0]} like the default "
                      f"{default!r}, not {describe(value)}", at)


def _int_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)


def shapes(value: Any, source: Source) -> tuple[tuple[int, ...], ...]:
    """``"2,3,32,32"`` or ``[2, 3, 32, 32]`` (one input), or a list of those (one per input);
    ``"2,16:int"`` for integer ids."""
    from biaslint.errors import InputShapeError
    from biaslint.target import parse_shape

    items = [value] if isinstance(value, str) or (_int_list(value) and value) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise Invalid("must be a shape like \"2,3,32,32\" or [2, 3, 32, 32], or a list of "
                      f"those (one per input), not {describe(value)}")
    found = []
    for item in items:
        if isinstance(item, str):
            try:
                found.append(parse_shape(item))
            except InputShapeError as exc:  # its message names the flag: the source does
                raise Invalid(str(exc).removeprefix("--input-shape ")) from None
        elif _int_list(item) and item and all(d > 0 for d in item):
            found.append(tuple(item))
        else:
            raise Invalid(f"{describe(item)} is not a shape of positive integers")
    return tuple(found)


def numbers(value: Any) -> list[Any]:
    """A number, a list of them, or an array (numpy, torch) as a flat list."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    if isinstance(value, (list, tuple)):
        return [x for item in value for x in numbers(item)]
    raise Invalid(f"must be a number or a list of numbers, not {describe(value)}")


class PriorsFile(str):
    """Class priors still in their file (its path): ``read_priors`` reads them."""


def priors(value: Any, source: Source) -> tuple[float, ...] | PriorsFile:
    """Class priors: probabilities or counts (normalized to sum to 1) as a list or an array, or
    the ``--class-priors`` text ("0.9,0.1", "@priors.json", relative to ``source.base``)."""
    from biaslint.run.priors import parse_priors

    if isinstance(value, str) and value.strip():
        given = value.strip()
        if given.startswith("@"):
            # The file is read when a target is linted with it (``read_priors``), as a build
            # reads its data: a config naming a file a run does not use stays valid.
            path = Path(given[1:].strip())
            if source.base is not None and not path.is_absolute():
                path = source.base / path
            return PriorsFile(str(path))
        return parse_priors(given)
    try:
        values = numbers(value)
    except Invalid:
        values = []
    if not values or isinstance(value, (int, float)):
        raise Invalid("must be a list of numbers or a string (\"0.9,0.1\" or "
                      f"\"@priors.json\"), not {describe(value)}")
    return parse_priors(",".join(repr(float(v)) for v in values))


def read_priors(value: Any) -> Any:
    """Class priors read from their file when they were given as ``@file``."""
    from biaslint.run.priors import parse_priors

    return parse_priors(f"@{value}") if isinstance(value, PriorsFile) else value


def means(value: Any, source: Source) -> tuple[float, ...]:
    """One number, or one per output: a number, a list, or their ``"1.5,2"`` text."""
    problem = Invalid("must be a number, a list of numbers (one per output) or a string like "
                      f"\"1.5,2.0\", not {describe(value)}")
    if isinstance(value, str):
        items: list[Any] = value.replace(" ", "").split(",")
        if not all(items):
            raise problem
    else:
        try:
            items = numbers(value)
        except Invalid:
            raise problem from None
    found = []
    for item in items:
        try:
            number = float(item)
        except ValueError:
            raise problem from None
        if not math.isfinite(number) or isinstance(item, bool):
            raise problem
        found.append(number)
    if not found:
        raise problem
    return tuple(found)


def _number(value: Any, kind: type) -> Any:
    """A number of ``kind``, or its text (a flag's value); None when it is neither."""
    if isinstance(value, str):
        try:
            value = kind(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if kind is int and isinstance(value, float):
        return int(value) if value.is_integer() else None
    return kind(value)


def positive_int(value: Any, source: Source) -> int:
    number = _number(value, int)
    if number is None or number < 1:
        raise Invalid(f"must be a whole number of at least 1, not {describe(value)}")
    return int(number)


def shard(value: Any, source: Source) -> Any:
    """``K/N``: the K-th of N shards (``biaslint.run.shard``)."""
    from biaslint.run.shard import parse_shard

    try:
        return parse_shard(value)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def positive_number(value: Any, source: Source) -> float:
    number = _number(value, float)
    if number is None or not number > 0 or not math.isfinite(number):
        raise Invalid(f"must be a number above 0, not {describe(value)}")
    return float(number)


# --- the table ------------------------------------------------------------------------------

SETTINGS: tuple[Setting, ...] = (
    # What the rules judge, for the whole run.
    Setting("plugins", "run", plugin_modules,
            "Also run the rules of this module (an importable name, e.g. mypkg.lint_rules; "
            "repeat for more). Installed packages' biaslint.rules entry points need none.",
            key="plugins", flag="--plugin", python=("check", "check_target"), default=(),
            metavar="MODULE", multiple=True),
    Setting("select", "run", codes, "Only these rule codes or prefixes (comma-separated).",
            key="select", flag="--select", python=("check", "check_target"), default=(),
            metavar="CODES", multiple=True, names_rules=True),
    Setting("ignore", "run", codes, "Skip these rule codes or prefixes.",
            key="ignore", flag="--ignore", python=("check", "check_target"), default=(),
            metavar="CODES", multiple=True, names_rules=True),
    Setting("fail_on", "run", severity,
            "Exit 1 when a finding is at or above this severity [default: warning].",
            key="fail-on", flag="--fail-on", python=("check", "check_target"),
            default=Severity.WARNING, choices=SEVERITIES),
    Setting("severity", "run", severity_table, "A rule's severity, by code.",
            key="severity", python=("check",), default={}, field="severity_overrides",
            names_rules=True),
    Setting("rule_options", "run", rule_options, "Each rule's options, by code.",
            key="rules", python=("check",), default={}, names_rules=True),
    Setting("per_module_ignores", "run", module_ignores,
            "Rule codes to skip in the layers whose qualified names match a glob.",
            key="per-module-ignores", python=("check",), default={}, names_rules=True),
    Setting("allow_incomplete", "run", boolean,
            "Exit 0/1 by the findings even when part of a model could not be judged "
            "(by default that is exit 2: a gate must not pass what it did not check).",
            key="allow-incomplete", flag="--allow-incomplete",
            python=("check", "check_target"), default=False, is_flag=True),
    Setting("signal", "run", boolean,
            "Measure signal propagation at init (one more forward and backward) and put "
            "its curves in the json report too; the html report always measures it, as "
            "it plots them.", key="signal", flag="--signal",
            python=("check", "check_target"), default=False, is_flag=True),
    Setting("debug", "run", boolean, "Show tracebacks for errors.", flag="--debug",
            default=False, is_flag=True),
    # What a target needs to be built and run.
    Setting("input_shapes", "target", shapes,
            "Shape of a random example input, once per positional input "
            "(e.g. --input-shape 2,3,224,224), when the target gives none; "
            "2,16:int (or 2,16:int<512) for integer ids such as tokens.",
            key="input-shape", flag="--input-shape", python=("check", "check_target"),
            default=(), metavar="D,D,...", multiple=True),
    Setting("device", "target", choice(DEVICES),
            "Build the model on this device. meta: no parameter memory, so models of "
            "any size lint on a laptop; values are read from the recorded init calls "
            "[default: as the target builds it].",
            key="device", flag="--device", python=("check_target",), choices=DEVICES),
    # What rules read besides the model (``Rule.inputs``).
    Setting("class_priors", "input", priors,
            "Class priors for BL005: probabilities or counts, or @file (JSON, CSV/TXT, .npy).",
            key="class-priors", flag="--class-priors", python=("check", "check_target"),
            metavar="P,P,...|@FILE", late=read_priors),
    Setting("head", "input", choice(HEADS),
            "Classifier head kind for BL005 [default: softmax if K > 1, sigmoid if K = 1].",
            key="head", flag="--head", python=("check", "check_target"), choices=HEADS),
    Setting("target_mean", "input", means,
            "Mean of the regression target for BL008: one number, or one per output.",
            key="target-mean", flag="--target-mean", python=("check", "check_target"),
            metavar="M[,M,...]"),
    # What the check command does with the results.
    Setting("config", "command", text,
            "Read [tool.biaslint] from this file [default: nearest pyproject.toml "
            "that has one].", flag="--config", python=("check_target",)),
    Setting("fmt", "command", reports,
            "A report: FMT on stdout, FMT=PATH in a file; repeat for several reports from one "
            "lint (at most one on stdout; the text report stays there unless another format "
            f"takes it or text=PATH moves it). FMT: {', '.join(FORMATS)} [default: text].",
            key="format", flag="--format", default=(), metavar="FMT[=PATH]", multiple=True),
    Setting("output", "command", text,
            "Write the one report to this file (with one --format); the terminal still gets "
            "the summary.",
            flag="--output"),
    Setting("baseline", "command", text,
            "Report and fail only on findings not recorded in this baseline file.",
            flag="--baseline"),
    Setting("write_baseline", "command", text,
            "Record the current findings in this file (and exit 0 unless an error).",
            flag="--write-baseline"),
    Setting("quiet", "command", boolean,
            "No summary, notes or progress: only the findings (text) or the report.",
            flag="--quiet", short="-q", default=False, is_flag=True),
    Setting("jobs", "command", positive_int,
            "Lint this many targets at once, each in its own process. [default: 1]",
            flag="--jobs", short="-j", default=1, number=int),
    Setting("timeout", "command", positive_number,
            "Give up on a target after this long (each target then runs in its own "
            "process, so a crash or hang costs only that target).",
            flag="--timeout", metavar="SECONDS", number=float),
    Setting("changed_since", "command", text,
            "Lint only the targets whose recorded source files (those their build and "
            "forward ran, cached by earlier runs) differ from git REF; say which were "
            "skipped and why. Exit by the linted targets.",
            flag="--changed-since", metavar="REF"),
    Setting("shard", "command", shard,
            "Lint only the K-th of N parts of the targets (e.g. 2/3), one part per CI "
            "runner: a stable split that puts each target in exactly one part. biaslint "
            "merge joins the parts' reports.", flag="--shard", metavar="K/N"),
    Setting("shard_times", "command", text,
            "With --shard: balance the parts by the lint times recorded in this file "
            "(biaslint merge -o FILE of the runs' .biaslint_cache/sources.json); every "
            "runner must read the same file: commit it.",
            flag="--shard-times", metavar="FILE"),
    Setting("warm", "command", boolean,
            "Lint in a child of a resident biaslint process that has torch imported "
            "already (started on first use, ended after 15 idle minutes): the same "
            "output and exit code, without the seconds of import. --cold overrides "
            "warm = true.", key="warm", flag="--warm", off_flag="--cold", default=False,
            is_flag=True),
    Setting("watch", "command", boolean,
            "Lint, then lint again the targets whose recorded source files change, "
            "printing only the findings that appeared or went away; Ctrl-C ends it.",
            flag="--watch", default=False, is_flag=True),
    Setting("fix", "command", boolean,
            "Apply the safe fixes to your files (bias=False where a norm cancels the "
            "bias), then lint again and report what remains.",
            flag="--fix", default=False, is_flag=True),
    Setting("unsafe_fixes", "command", boolean,
            "With --fix or --diff: also apply fixes that change initial values (init "
            "calls, forget-gate and prior biases).",
            flag="--unsafe-fixes", default=False, is_flag=True),
    Setting("diff", "command", boolean,
            "Print the diff --fix would write and write nothing; exit 1 if there is "
            "something to change.", flag="--diff", default=False, is_flag=True),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def rows(*scopes: Scope) -> tuple[Setting, ...]:
    return tuple(s for s in SETTINGS if s.scope in scopes)


def python_keys(function: str) -> tuple[str, ...]:
    """The keywords ``biaslint.check`` ("check") or ``check_target`` takes."""
    return tuple(s.name for s in SETTINGS if function in s.python)


def parse(name: str, value: Any, source: Source) -> Any:
    """``value`` for setting ``name``, typed; a ``ConfigError`` naming the source if invalid."""
    try:
        return BY_NAME[name].parse(value, source)
    except Invalid as exc:
        # What caused it, if anything (a plugin module's own error), stays for --debug.
        raise source.error(exc) from exc.__cause__


def parse_values(values: Mapping[str, Any], source: Callable[[str, Any], Source],
                 plugins: Sequence[PluginModule] | None = None) -> dict[str, Any]:
    """Values by setting name, each parsed by its row with ``source(name, value)`` saying
    where it was given. ``plugins`` first: the values that name rule codes are parsed with its
    rules (or, when it is not among them, those of ``plugins``) and the installed entry points'
    taking part."""
    from biaslint.rules import plugged

    parsed: dict[str, Any] = {}
    if "plugins" in values:
        parsed["plugins"] = parse("plugins", values["plugins"],
                                  source("plugins", values["plugins"]))
    rest = {name: value for name, value in values.items() if name != "plugins"}
    scope: ContextManager[None] = nullcontext()
    if any(BY_NAME[name].names_rules for name in rest if name in BY_NAME):
        scope = plugged(plugin_rules(parsed.get("plugins", plugins or ())))
    with scope:
        parsed.update((name, parse(name, value, source(name, value)))
                      for name, value in rest.items())
    return parsed


def given(values: Mapping[str, Any], function: str) -> dict[str, Any]:
    """The keywords a Python entry point was given, each parsed; unknown ones are an error."""
    known = python_keys(function)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"biaslint.{function}: unknown setting(s) {', '.join(unknown)}; "
                          f"known: {', '.join(known)}")
    return parse_values({name: value for name, value in values.items() if value is not None},
                        lambda name, value: Source(f"biaslint.{function} {name}={value!r}"))


def run_settings(values: Mapping[str, Any]) -> Settings:
    """The run's ``Settings`` from values by setting name (parsed; unset ones default)."""
    return Settings(**{row.attribute: values.get(row.name, row.default) for row in rows("run")})


def target_config(target: str, values: Mapping[str, Any]) -> TargetConfig:
    """A target's ``TargetConfig`` from values by setting name (parsed; unset ones default)."""
    def value(row: Setting) -> Any:
        given = values.get(row.name, row.default)
        return row.late(given) if row.late is not None and given is not None else given

    return TargetConfig(target=target, **{row.name: value(row) for row in rows("target")},
                        inputs={row.name: value(row) for row in rows("input")
                                if values.get(row.name) is not None})
