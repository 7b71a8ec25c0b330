"""The pipeline's shape, enforced: imports flow down the stages, with no cycles and no private
names crossing modules.

A small ``ast`` scan rather than import-linter: besides layers and cycles we also forbid
cross-module ``_private`` imports, which import-linter does not check, and the scan is forty
lines with no new dependency. Every import counts, lazy ones inside functions included; imports
under ``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
import importlib
import pathlib
from dataclasses import dataclass, field

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "biaslint"

# Highest first. A module may import from its own layer and from any layer below it. Every
# layer but the two outermost is a folder of the package; the top level holds only the public
# doors (the first layer) and the ground floor (the last): ``test_the_top_level_is_doors_and_
# ground_floor`` keeps it so.
DOORS = ("biaslint", "biaslint.__main__", "biaslint.cli", "biaslint.api", "biaslint.testing",
         "biaslint.pytest_plugin", "biaslint.init", "biaslint.version")
# Types and tables every stage shares, and nothing that runs a stage.
GROUND = ("biaslint.errors", "biaslint.findings", "biaslint.settings", "biaslint.target",
          "biaslint.vocabulary", "biaslint.laws", "biaslint.sources", "biaslint.process")
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # The command line and the in-Python entry points (``check()``, ``assert_clean``, the pytest
    # plugin, the Lightning callback): each runs what the command line runs. The package's
    # ``__init__`` offers ``biaslint.check`` (imported when used), so no module of the stages
    # below imports the package itself (they import ``biaslint.version``).
    # ``biaslint.serve``: the warm server, its client, watch mode and the language server,
    # which run the command line (a child of the server runs ``cli``; ``cli`` runs the client).
    ("doors", (*[d for d in DOORS if d not in ("biaslint.init", "biaslint.version")],
               "biaslint.integrations", "biaslint.serve")),
    # The check command: settings, target choice (--changed-since), one process per target,
    # baselines, --fix checked on a copy.
    ("run", ("biaslint.run",)),
    ("engine", ("biaslint.engine",)),
    ("report", ("biaslint.report",)),
    ("rules", ("biaslint.rules",)),
    ("fix", ("biaslint.fix",)),
    ("analysis", ("biaslint.analysis",)),
    ("capture", ("biaslint.capture",)),
    ("load", ("biaslint.load",)),
    # ``init`` (the helpers the fixes call) and ``version`` are public, and every stage may use
    # them: they sit on the ground floor.
    ("ground", (*GROUND, "biaslint.init", "biaslint.version")),
]
# Each stage reads only the previous stage's output: rules see the model through
# ``biaslint.analysis`` alone, reporters only format what the engine produced.
SKIPPED: dict[str, tuple[str, ...]] = {
    "rules": ("capture", "load"),
    "fix": ("analysis", "capture", "load"),
    "report": ("analysis", "capture", "load"),
}


@dataclass
class ImportGraph:
    edges: dict[str, set[str]] = field(default_factory=dict)
    private: list[str] = field(default_factory=list)  # "importer: module._name"


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def scan(root: pathlib.Path) -> ImportGraph:
    """The import graph among the modules of the package at ``root``. ``from a.b import c``
    points at ``a.b.c`` when that is a module, else at ``a.b`` (as grimp does)."""
    package = root.name
    files = {_module_name(f, root): f for f in root.rglob("*.py")}
    graph = ImportGraph({name: set() for name in files})
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_lines(tree)
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".") if is_package else name.split(".")[:-1]
                    parts = parts[:len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [(base, a.name) for a in node.names]
            else:
                continue
            for module, imported in targets:
                if module != package and not module.startswith(package + "."):
                    continue
                full = f"{module}.{imported}" if imported else module
                target = full if full in files else module
                if target != name:
                    graph.edges[name].add(target)
                if imported and imported.startswith("_") and not imported.startswith("__") \
                        and target == module and module != name:
                    graph.private.append(f"{name}: {module}.{imported}")
    return graph


def cycles(graph: ImportGraph) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph.edges):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> int:
    best: tuple[int, int] | None = None  # (prefix length, layer index)
    for position, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), position)
    if best is None or (best[0] == len("biaslint") and module != "biaslint"):
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return best[1]


def layer_violations(graph: ImportGraph) -> list[str]:
    names = [layer for layer, _ in LAYERS]
    problems = []
    for importer, targets in sorted(graph.edges.items()):
        here = layer_of(importer)
        for target in sorted(targets):
            there = layer_of(target)
            if there < here:
                problems.append(f"{importer} ({names[here]}) imports {target} ({names[there]}), "
                                "a higher stage")
            elif names[there] in SKIPPED.get(names[here], ()):
                problems.append(f"{importer} ({names[here]}) reaches past its input into "
                                f"{target} ({names[there]})")
    return problems


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return scan(PACKAGE)


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_no_private_names_cross_modules(graph):
    assert graph.private == []


def test_imports_go_down_the_stages(graph):
    assert layer_violations(graph) == []


def test_the_stage_packages_are_at_the_top_level():
    assert not (PACKAGE.parent / "src").exists()
    for stage in ("load", "capture", "analysis", "rules", "fix", "report", "engine", "run"):
        assert (PACKAGE / stage / "__init__.py").is_file(), stage


def test_the_top_level_is_doors_and_ground_floor():
    """A module at the top of the package is a public door or a ground-floor type; anything that
    runs a stage or a step of the check command lives in that layer's folder."""
    top = {f"biaslint.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert top - set(DOORS) - set(GROUND) == set()
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == {name for name, _ in LAYERS[1:-1]} | {"integrations", "serve"}


def test_every_module_the_forkserver_preloads_imports():
    from biaslint.run.parallel import _PRELOAD

    for name in _PRELOAD:
        importlib.import_module(name)


def test_the_scan_sees_cycles_private_and_upward_imports(tmp_path):
    """The checks above can fail: a package with each fault is caught."""
    root = tmp_path / "biaslint"
    (root / "rules").mkdir(parents=True)
    (root / "capture").mkdir()
    (root / "__init__.py").write_text("")
    (root / "rules" / "__init__.py").write_text("")
    (root / "capture" / "__init__.py").write_text("")
    (root / "rules" / "a.py").write_text("from biaslint.rules.b import thing\n")
    (root / "rules" / "b.py").write_text(
        "def thing():\n    from biaslint.rules import a\n"
        "    from biaslint.capture.c import _secret\n")
    (root / "capture" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from biaslint.rules.a import x\n"
        "from biaslint.rules import b\n_secret = 1\n")
    fake = scan(root)
    assert any({"biaslint.rules.a", "biaslint.rules.b"} <= set(c) for c in cycles(fake))
    assert fake.private == ["biaslint.rules.b: biaslint.capture.c._secret"]
    problems = layer_violations(fake)
    assert any("biaslint.capture.c (capture) imports biaslint.rules.b" in p for p in problems)
    assert any("biaslint.rules.b (rules) reaches past its input" in p for p in problems)
    assert "biaslint.rules.a" not in fake.edges["biaslint.capture.c"]  # TYPE_CHECKING only


# Reading a tensor's values: what a rule must leave to ``biaslint.analysis.values.ParamValue``
# (measured on real tensors, from the recorded init laws on the meta device).
# (Reductions such as ``.mean()`` are allowed: rules apply them to what ``ParamValue`` returned,
# to activations and to quadrature points; ``torch.detach`` in an op table is a name, not a read.)
VALUE_READS = frozenset({"detach", "data", "item", "tolist", "numpy", "aminmax", "var_mean",
                         "std_mean", "running_mean", "running_var"})


def value_reads(root: pathlib.Path) -> list[str]:
    """``file:line: .attr`` for every attribute access in the rules that reads tensor values."""
    found = []
    for path in sorted((root / "rules").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in VALUE_READS and not (
                    isinstance(node.value, ast.Name) and node.value.id == "torch"):
                found.append(f"{path.relative_to(root)}:{node.lineno}: .{node.attr}")
    return found


def test_rules_read_values_only_through_the_value_interface():
    """No rule reads a parameter's values itself (``.detach()``, ``.data``, ``.item()``,
    reductions): on the meta device there are none, and the init laws answer instead. Shapes,
    dims and module attributes are fine."""
    assert value_reads(PACKAGE) == []


def test_the_value_scan_sees_a_direct_read(tmp_path):
    root = tmp_path / "biaslint"
    (root / "rules").mkdir(parents=True)
    (root / "rules" / "r.py").write_text(
        "def check(layer):\n    w = layer.param('weight')\n    return w.detach().abs().max()\n")
    assert value_reads(root) == ["rules/r.py:3: .detach"]


# What an ``AnalysedModel`` was built from: the model, the capture and the loaded target. Rules
# read them through its own methods (``root``, ``construction_site``, ``not_called``,
# ``captured_forward_failed``, ``on_meta``...), never by reaching through it.
MODEL_REACHES = frozenset({"model", "capture", "target", "loaded"})


def model_reaches(root: pathlib.Path) -> list[str]:
    """``file:line: expression`` for every read, in the rules, of what an analysed model was
    built from. An analysed model is a name called ``model`` or annotated ``AnalysedModel``, or
    an attribute of ``self`` so named (``self.model`` in a helper class); ``node.target``,
    ``layer.module`` and the like are other objects' attributes."""
    found = []
    for path in sorted((root / "rules").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {"model"} | {arg.arg for arg in ast.walk(tree) if isinstance(arg, ast.arg)
                             and arg.annotation is not None
                             and "AnalysedModel" in ast.unparse(arg.annotation)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or node.attr not in MODEL_REACHES:
                continue
            held = node.value
            if isinstance(held, ast.Attribute) and isinstance(held.value, ast.Name) and \
                    held.value.id == "self":
                name = held.attr
            elif isinstance(held, ast.Name):
                name = held.id
            else:
                continue
            if name in names:
                found.append((str(path), node.lineno, node.col_offset,
                              f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}"))
    return [text for *_, text in sorted(found)]


def test_rules_read_the_model_only_through_the_analysed_model():
    """No rule reaches through ``AnalysedModel`` into the module, the capture or the loaded
    target: what a rule needs of them is a method there, so the facts stay in one place."""
    assert model_reaches(PACKAGE) == []


def test_the_model_scan_sees_a_reach_through(tmp_path):
    root = tmp_path / "biaslint"
    (root / "rules").mkdir(parents=True)
    (root / "rules" / "r.py").write_text(
        "def check(model, layer, node):\n"
        "    a = model.model.modules()\n"
        "    b = model.target.module_sites\n"
        "    c = layer.module, node.target, model.submodule(''), model.root\n"
        "    return a, b, c\n"
        "class Walk:\n"
        "    def __init__(self, analysed: 'AnalysedModel') -> None:\n"
        "        self.analysed = analysed\n"
        "    def run(self, other: AnalysedModel, call):\n"
        "        return self.analysed.capture.parts, other.loaded, call.target\n")
    assert model_reaches(root) == ["rules/r.py:2: model.model", "rules/r.py:3: model.target",
                                   "rules/r.py:10: self.analysed.capture",
                                   "rules/r.py:10: other.loaded"]
