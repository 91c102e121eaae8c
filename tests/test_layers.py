"""The package's layers (docs/architecture.md): every module imports only from its own layer or
the layers below it, the import graph has no cycle, and imports written inside functions are
few, each for a named reason. Read from the source with ast, so nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "selfexplain"

# lowest first; a module belongs to the first entry that is its name or a package above it
LAYERS: list[tuple[str, ...]] = [
    ("selfexplain", "core"),
    ("config", "models", "hooks", "forward", "precision", "metrics", "packing"),
    ("entities", "prompts", "tasks", "features"),
    ("data",),
    ("evaluate",),
    ("train",),
    ("run", "token_identity", "report", "hub"),
    ("cli",),
]

# imports of selfexplain modules written inside a function: (module, imported module) -> why
LOCAL_IMPORTS_ALLOWED: dict[tuple[str, str], str] = {}


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, modules: set[str]) -> list[tuple[str, bool]]:
    """(imported selfexplain module, written inside a function or class) for each import;
    imports under ``if TYPE_CHECKING:`` are annotations only and left out."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = {id(n) for n in tree.body}
    typing_only: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(x) for x in ast.walk(node)}
        elif isinstance(node, ast.If | ast.Try):
            top |= {id(x) for x in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
            targets = [n for n in names if n in modules] or ([base] if base in modules else [])
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name in modules]
        else:
            continue
        out.extend((t, id(node) not in top) for t in targets if t != name)
    return out


def import_graph(src: Path = SRC) -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """{module: modules it imports} and the (module, imported) pairs written in functions."""
    paths = {module_name(p, src): p for p in src.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in paths}
    local = []
    for m, p in paths.items():
        for target, inside in imports_of(p, m, set(paths)):
            graph[m].add(target)
            if inside:
                local.append((m, target))
    return graph, local


def layer_of(module: str) -> int:
    rel = module.removeprefix("selfexplain.") if module != "selfexplain" else "selfexplain"
    for i, names in enumerate(LAYERS):
        for n in names:
            if rel == n or rel.startswith(n + "."):
                return i
    raise KeyError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m, targets in graph.items()
        for t in targets
        if layer_of(t) > layer_of(m)
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    graph, _ = import_graph()
    assert len(graph) > 40
    for module in graph:
        layer_of(module)


def test_no_module_imports_a_higher_layer():
    graph, _ = import_graph()
    assert upward_imports(graph) == []


def test_the_import_graph_has_no_cycle():
    graph, _ = import_graph()
    assert cycles(graph) == []


def test_imports_inside_functions_are_few_and_named():
    _, local = import_graph()
    unexplained = sorted(set(local) - set(LOCAL_IMPORTS_ALLOWED))
    assert unexplained == []
    assert len(local) <= 10


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path):
    """The checks see what they look for: an upward import, a cycle, a local import."""
    pkg = tmp_path / "selfexplain"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "layout.py").write_text("from selfexplain.run import train_run\n")
    (pkg / "run.py").write_text(
        "from selfexplain.core.layout import x\n\ndef f():\n    from selfexplain import models\n"
    )
    (pkg / "models.py").write_text("")
    graph, local = import_graph(pkg)
    assert upward_imports(graph) == [
        "selfexplain.core.layout (layer 0) imports selfexplain.run (layer 6)"
    ]
    assert cycles(graph) == [["selfexplain.core.layout", "selfexplain.run"]]
    assert local == [("selfexplain.run", "selfexplain.models")]


@pytest.mark.parametrize(
    "module", ["selfexplain.core.settings", "selfexplain.config", "selfexplain.data.matrix"]
)
def test_what_the_snakefile_reads_imports_no_torch(module):
    """common.smk imports these while Snakemake builds the DAG: no torch (seconds per parse)."""
    import subprocess
    import sys

    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
