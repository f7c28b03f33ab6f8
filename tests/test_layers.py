"""The package layers: no import cycle between edgekit's modules, and no import from a lower layer to a higher one.

Imports are read with ``ast`` from the source (inside functions too; an import under ``if TYPE_CHECKING:``
doesn't count, since it never runs). ``from edgekit import NAME`` counts as an import of the module the lazy
public API takes NAME from.
"""

from __future__ import annotations

import ast
from pathlib import Path

import edgekit

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"edgekit": ROOT / "edgekit", "edgekit.convert": ROOT / "convert", "edgekit.bench": ROOT / "bench"}

# Lowest first. A module may import its own layer and the ones before it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("ground", ("edgekit", "edgekit.errors", "edgekit.paths", "edgekit.progress", "edgekit.stats", "edgekit.atomic",
                "edgekit._compute", "edgekit._llama", "edgekit._llama_probe", "edgekit.llama_facts", "edgekit.llama_handles",
                "edgekit.gguf_meta", "edgekit.gguf_check", "edgekit.profile", "edgekit.device")),
    ("converter", ("edgekit.convert",)),
    ("model resolution", ("edgekit.store", "edgekit.planner")),
    ("runtime", ("edgekit.runtime",)),
    ("consumers", ("edgekit.evaluate", "edgekit.bench", "edgekit.serve", "edgekit.chatui")),
    ("samples", ("edgekit.samples",)),
    ("entry points", ("edgekit.bench.studies", "edgekit.cli", "edgekit.__main__")),
]


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = path
    return mods


def _layer(module: str) -> int:
    """The index of the most specific layer entry that contains ``module``."""
    best, best_len = None, -1
    for i, (_name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or (module.startswith(prefix + ".") and prefix != "edgekit")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skip]


def import_graph() -> dict[str, set[str]]:
    """{module: the edgekit modules it imports}."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in mods)
                continue
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                if full in mods:
                    deps.add(full)
                elif target == "edgekit" and alias.name in edgekit._LAZY:
                    deps.add(edgekit._LAZY[alias.name])
                elif target == "edgekit" and alias.name in edgekit._LAZY_MODULES:
                    deps.add(edgekit._LAZY_MODULES[alias.name])
                elif target in mods:
                    deps.add(target)
        deps.discard(name)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_a_higher_layer():
    upward = [f"{mod} ({LAYERS[_layer(mod)][0]}) imports {dep} ({LAYERS[_layer(dep)][0]})"
              for mod, deps in sorted(import_graph().items()) for dep in sorted(deps) if _layer(dep) > _layer(mod)]
    assert upward == []


def test_every_module_has_a_layer_and_the_layers_order_the_packages():
    graph = import_graph()
    assert all(_layer(m) >= 0 for m in graph)
    assert _layer("edgekit.convert.pipeline") < _layer("edgekit.runtime.model") < _layer("edgekit.bench.runner")
    assert _layer("edgekit.bench.studies.speculation") > _layer("edgekit.samples.demo")


def test_the_public_load_is_defined_where_it_resolves():
    from edgekit.runtime import load as load_module

    assert edgekit.load is load_module.load and edgekit.load.__module__ == "edgekit.runtime.load"


def test_the_public_tools_module_is_the_runtimes():
    from edgekit import tools
    from edgekit.runtime import tools as runtime_tools

    assert tools is runtime_tools
