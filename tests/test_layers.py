"""The package's layers (docs/design.md, "Architecture"), checked from the imports themselves:
every `import recon_ft...` in recon_ft/, at module level or inside a function, goes to the module's
own package or to a lower layer, and no modules import each other in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recon_ft"

# Lowest first; a module may import its own top-level unit and the units of lower layers.
LAYERS = [
    {"constants", "utils", "cli"},
    {"data"},
    {"models"},
    {"method"},
    {"zoo"},
    {"training"},
    {"eval"},
    {"experiments"},
    {"study"},  # python -m recon_ft.study: the study's experiments, each through its tool
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
# The package's face registers the `${zoo:...}` config resolver, which builds a zoo on first use
# (imported inside the resolver, when a config is resolved, not when recon_ft is imported).
EXEMPT = {"recon_ft"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The recon_ft modules `path` imports (`from a.b import c` counts a.b.c when that is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("recon_ft")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("recon_ft"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}: relative import; write recon_ft.<...> so the layers read at a glance")
    return out


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py") if "shipped" not in p.parts}
    known = set(files)
    return {name: imported_modules(path, known) - {name} for name, path in files.items()}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_every_unit_has_a_layer():
    units = {unit(m) for m in import_graph()} - EXEMPT
    assert units <= set(LAYER), f"units without a layer in LAYERS (add them): {sorted(units - set(LAYER))}"


def test_no_upward_import():
    upward = sorted(
        f"{a} -> {b}"
        for a, targets in import_graph().items() if a not in EXEMPT
        for b in targets if unit(a) != unit(b) and LAYER[unit(b)] > LAYER[unit(a)]
    )
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_import_circle():
    graph = import_graph()
    # Tarjan's strongly connected components; any component of 2+ modules is a circle.
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
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
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"modules that import each other in a circle: {circles}"


@pytest.mark.parametrize("source, expected", [
    ("from recon_ft.models import lora\n", {"recon_ft.models.lora"}),
    ("def f():\n    from recon_ft.zoo.cache import ensure_zoo\n", {"recon_ft.zoo.cache"}),
    ("import recon_ft.data.synthetic as s\n", {"recon_ft.data.synthetic"}),
])
def test_the_checker_sees_every_kind_of_import(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert imported_modules(path, {"recon_ft.models.lora"}) == expected
