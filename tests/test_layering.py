"""The import structure: layers import downwards only, and no module imports itself back.

Imports are read from the source (function-level ones included), so a cycle hidden behind an
import inside a function fails here too.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Packages/modules that sit low in the stack, and what each must never import.
LOWER = ("mdm.errors", "mdm.schedules", "mdm.process", "mdm.categorical", "mdm.time_grids", "mdm.networks", "mdm.data")
UPPER = (
    "mdm.objectives",
    "mdm.samplers",
    "mdm.energy",
    "mdm.generation",
    "mdm.unmasking",
    "mdm.loop",
    "mdm.experiment",
    "mdm.trained",
    "mdm.notebook",
    "mdm.cli",
)
FORBIDDEN = [
    ("mdm", ("scaling_laws",)),  # the library never depends on a package that uses it
    ("mdm.objectives", ("mdm.samplers", "mdm.generation", "mdm.loop", "mdm.trained")),
    ("mdm.energy", ("mdm.samplers", "mdm.objectives", "mdm.generation", "mdm.loop", "mdm.trained")),
    ("mdm.samplers", ("mdm.objectives", "mdm.generation", "mdm.loop", "mdm.experiment", "mdm.trained")),
    *[(low, UPPER) for low in LOWER],
]


def _module_name(path: pathlib.Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def imports_of(source: str) -> set[str]:
    """Absolute module names imported anywhere in `source` ('from a.b import c' gives a.b and a.b.c)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _sources() -> dict[str, str]:
    return {_module_name(p): p.read_text() for p in (ROOT / "mdm").rglob("*.py")}


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(sources: dict[str, str]) -> list[str]:
    """'a imports b' for every import that FORBIDDEN rules out."""
    bad = []
    for name, source in sources.items():
        for low, highs in FORBIDDEN:
            if _inside(name, low):
                bad += [f"{name} imports {d}" for d in sorted(imports_of(source)) if any(_inside(d, h) for h in highs)]
    return bad


def _edges(source: str, modules) -> set[str]:
    """The library modules `source` imports: 'from pkg import mod' is an edge to pkg.mod only."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
    return found & set(modules)


def cycles(sources: dict[str, str]) -> list[list[str]]:
    """Groups of more than one library module that import each other in a loop (Tarjan)."""
    graph = {n: _edges(s, sources) - {n} for n, s in sources.items()}
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_a_higher_layer():
    assert violations(_sources()) == []


def test_no_import_cycles_among_library_modules():
    assert cycles(_sources()) == []


@pytest.mark.parametrize(
    "module, line",
    [
        ("mdm.objectives.ar", "from mdm.samplers import make_sampler"),
        ("mdm.energy.likelihood", "from mdm.samplers.ancestral import ancestral_sample"),
        ("mdm.notebook", "from scaling_laws import report"),
        ("mdm.schedules", "from mdm.objectives import Objective"),
    ],
)
def test_an_upward_import_inside_a_function_is_caught(module, line):
    sources = _sources()
    sources[module] += f"\n\ndef _late():\n    {line}\n"
    assert violations(sources)


def test_a_cycle_is_caught():
    sources = _sources()
    sources["mdm.process"] += "\n\ndef _late():\n    from mdm.objectives.base import Objective\n"  # base imports process
    assert ["mdm.objectives.base", "mdm.process"] in cycles(sources)
