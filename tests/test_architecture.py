"""The package's shape, checked statically (``ast`` only: nothing of pdeaccel is imported).

(a) imports go down the layers of :data:`LAYERS`; (b) no import cycles between modules;
(c) no source file over :data:`MAX_LINES` lines. Every import counts, at module level or inside a
function (a lazy import is still a dependency), except those listed in :data:`LAZY_CYCLES`.
Imports under ``if TYPE_CHECKING:`` count for the layers but not for the cycles: they never run.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "pdeaccel"
MAX_LINES = 450

#: Lowest first. A module may import from a strictly lower layer, or from its own unit (the
#: top-level module or subpackage it belongs to: ``physics.flow.builders`` is in ``physics``);
#: two units of one layer are independent of each other. ``""`` is the package's ``__init__``
#: (the public facade: it may import anything, nothing imports it). ``testing`` (fault injection
#: for the test suite) may import anything and is imported by nothing in the package.
LAYERS: list[tuple[str, ...]] = [
    ("_checks",),
    ("config", "grid"),
    ("stencils",),
    ("linalg",),
    ("physics", "nets"),
    ("losses",),
    ("neural_flow", "decompose", "stagger_placement"),
    ("stagger",),
    ("flow_model", "control"),
    ("prdp",),
    ("train",),
    ("experiments",),
    ("cli",),
    ("__main__", ""),
]
UNRESTRICTED = "testing"

_REGISTRATION = ("the registry imports the experiment modules on first lookup, and each registers itself "
                 "by importing the registry at module level")
#: Function-level imports allowed to close a cycle: (importing module, imported module) -> why.
LAZY_CYCLES: dict[tuple[str, str], str] = {
    **{("experiments.registry", f"experiments.{name}"): _REGISTRATION
       for name in ("burgers", "flow", "heat", "navier_stokes", "poisson")},
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted, relative to pdeaccel ("" for the package itself)
    target: str  # imported module
    line: int
    lazy: bool  # inside a function
    type_only: bool  # under ``if TYPE_CHECKING:``

    def where(self) -> str:
        return f"{MODULES[self.source].relative_to(SRC.parent).as_posix()}:{self.line}"


def _module_files() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _module_files()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _unit(module: str) -> str:
    return module.split(".")[0]


def _layer(module: str) -> int | None:
    unit = _unit(module)
    return next((i for i, units in enumerate(LAYERS) if unit in units), None)


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _imports_of(module: str) -> list[Import]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    package = module if _is_package(module) else module.rpartition(".")[0]
    found: list[Import] = []

    def add(target: str, node: ast.stmt, lazy: bool, type_only: bool) -> None:
        found.append(Import(module, target, node.lineno, lazy, type_only))

    def visit(node: ast.AST, lazy: bool, type_only: bool) -> None:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                target = _join(".".join(base), node.module or "")
            elif node.module == "pdeaccel" or (node.module or "").startswith("pdeaccel."):
                target = node.module[len("pdeaccel."):] if node.module != "pdeaccel" else ""
            else:
                return
            for alias in node.names:  # `from . import io` imports the module io, not a name of .
                sub = _join(target, alias.name)
                add(sub if sub in MODULES else target, node, lazy, type_only)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "pdeaccel" or alias.name.startswith("pdeaccel."):
                    add(alias.name[len("pdeaccel."):] if alias.name != "pdeaccel" else "", node, lazy, type_only)
            return
        inner_lazy = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                visit(child, lazy, True)
            for child in node.orelse:
                visit(child, lazy, type_only)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, inner_lazy, type_only)

    visit(tree, False, False)
    return found


ALL_IMPORTS = [imp for module in MODULES for imp in _imports_of(module)]


def _layer_name(module: str) -> str:
    layer = _layer(module)
    return "unlisted" if layer is None else f"layer {layer} {'/'.join(u or '__init__' for u in LAYERS[layer])}"


def layer_violations(imports: list[Import]) -> list[str]:
    bad = []
    for imp in imports:
        src, dst = _unit(imp.source), _unit(imp.target)
        if src == dst or src == UNRESTRICTED:
            continue
        if dst == UNRESTRICTED:
            bad.append(f"{imp.where()} imports pdeaccel.{imp.target}: nothing in the package may import "
                       f"{UNRESTRICTED}/ (it serves the tests)")
            continue
        ls, ld = _layer(imp.source), _layer(imp.target)
        if ls is None or ld is None:
            missing = imp.source if ls is None else imp.target
            bad.append(f"{imp.where()} imports pdeaccel.{imp.target}, but pdeaccel.{missing or '__init__'} has no "
                       "layer: add its unit to LAYERS in tests/test_architecture.py")
        elif ld >= ls:
            bad.append(f"{imp.where()} imports pdeaccel.{imp.target} upward or sideways: "
                       f"{_layer_name(imp.source)} may only import from lower layers, and pdeaccel.{imp.target} "
                       f"is in {_layer_name(imp.target)}")
    return bad


def import_cycles(imports: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module, each sorted."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in imports:
        if imp.type_only or imp.source == imp.target:
            continue
        if imp.lazy and (imp.source, imp.target) in LAZY_CYCLES:
            continue
        graph[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return components


def _describe(cycle: list[str], imports: list[Import]) -> str:
    members = set(cycle)
    edges = [f"    {imp.where()}: pdeaccel.{imp.source or '__init__'} -> pdeaccel.{imp.target}"
             f"{' (inside a function)' if imp.lazy else ''}"
             for imp in imports if imp.source in members and imp.target in members and not imp.type_only]
    return "cycle between " + ", ".join(f"pdeaccel.{m}" for m in cycle) + ":\n" + "\n".join(edges)


def test_every_module_has_a_layer():
    units = {_unit(m) for m in MODULES} - {UNRESTRICTED}
    missing = sorted(u for u in units if _layer(u) is None)
    assert not missing, f"units without a layer in LAYERS: {missing}"


def test_imports_go_down_the_layers():
    bad = layer_violations(ALL_IMPORTS)
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_cycles():
    cycles = import_cycles(ALL_IMPORTS)
    assert not cycles, "\n".join(_describe(c, ALL_IMPORTS) for c in cycles)


def test_lazy_cycle_exemptions_are_still_needed():
    lazy = {(imp.source, imp.target) for imp in ALL_IMPORTS if imp.lazy}
    stale = sorted(set(LAZY_CYCLES) - lazy)
    assert not stale, f"LAZY_CYCLES lists imports that no longer exist: {stale}"


def test_no_source_file_is_too_long():
    long = {path.relative_to(SRC.parent).as_posix(): n for path in MODULES.values()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, (f"source files over {MAX_LINES} lines (split them by concept, one module with a "
                      "docstring per concept): " + ", ".join(f"{p} ({n})" for p, n in sorted(long.items())))


# ---- the checks themselves catch what they are meant to catch -----------------------------------


def test_the_checks_catch_an_upward_import_and_a_cycle():
    upward = Import("linalg.solve", "train.trainer", 1, False, False)
    [message] = layer_violations([upward])
    assert "pdeaccel/linalg/solve.py:1" in message and "pdeaccel.train.trainer" in message
    assert "layer 3 linalg" in message and "layer 10 train" in message
    assert layer_violations([Import("physics.heat", "nets.unet", 1, False, False)])  # sideways
    assert layer_violations([Import("grid", "testing.faults", 1, True, False)])
    assert not layer_violations([Import("testing.faults", "cli", 1, False, False)])
    assert not layer_violations([Import("physics.flow.builders", "physics.flow.environment", 1, False, False)])
    loop = [Import("grid", "stencils", 1, False, False), Import("stencils", "grid", 1, True, False)]
    assert import_cycles(loop) == [["grid", "stencils"]]
    assert import_cycles(loop[:1] + [Import("stencils", "grid", 1, False, True)]) == []  # TYPE_CHECKING only
