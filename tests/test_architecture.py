"""The package layering of ARCHITECTURE.md, checked from the source: imports only point down."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "retrieval"
BASE = {"errors", "_compat"}
ALLOWED = {  # package -> the engine packages it may import (besides itself and BASE)
    "corpus": set(),
    "embed": {"corpus"},
    "store": {"embed", "corpus"},
    "methods": {"store"},
    "scale": {"query", "methods", "store", "embed", "corpus"},
    "ops": {"scale", "methods", "store", "embed", "corpus"},
    "query": {"methods", "store", "embed", "corpus"},
    "classify": {"query", "methods", "store", "embed", "corpus"},
    "serve": {"classify", "scale", "query", "methods", "store", "embed", "corpus"},
    "cli": {"serve", "classify", "scale", "query", "ops", "methods", "store", "embed", "corpus"},
}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        yield path, (rel.parts[0] if len(rel.parts) > 1 else None)


def _engine_imports(path: Path, package: str | None) -> set[str]:
    """Top-level engine packages a module imports (relative or absolute)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").startswith("retrieval"):
                parts = node.module.split(".")[1:]
            elif node.level == 1:
                parts = [package] if package else (node.module or "").split(".")
            elif node.level == 2:
                parts = (node.module or "").split(".")
            else:
                continue
            if parts and parts[0]:
                out.add(parts[0])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("retrieval.")}
    return out


@pytest.mark.parametrize("path,package", [(p, k) for p, k in _modules() if k is not None],
                         ids=lambda v: str(v.relative_to(PKG)) if isinstance(v, Path) else None)
def test_imports_point_down(path, package):
    bad = _engine_imports(path, package) - ALLOWED[package] - BASE - {package}
    assert not bad, f"{path.relative_to(PKG)} imports {sorted(bad)}, above or beside {package}"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_imports(path: Path, modules: set[str]) -> set[str]:
    """Engine modules ``path`` imports anywhere (module level, inside functions, under TYPE_CHECKING)."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            hits = [n for n in names if n in modules] or ([target] if target in modules else [])
            out |= set(hits)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
    return out - {me}


def test_no_import_cycles_between_modules():
    """No module imports, even inside a function, a module that imports it back (directly or not);
    a package's ``__init__`` re-exporting its modules is not a cycle of theirs."""
    paths = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {m: {t for t in _module_imports(p, set(paths)) if not p.name == "__init__.py" or
                 not t.startswith(m + ".")} for m, p in paths.items()}
    graph = {m: {t for t in ts if not paths[t].name == "__init__.py"} for m, ts in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_every_package_is_placed():
    packages = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(ALLOWED)


def test_modules_and_classes_stay_small():
    for path, _ in _modules():
        text = path.read_text()
        assert text.count("\n") <= 400, f"{path.relative_to(PKG)} has over 400 lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                size = node.end_lineno - node.lineno + 1
                assert size <= 150, f"class {node.name} in {path.relative_to(PKG)} has {size} lines"


def test_public_api():
    import retrieval

    for name in ("build_index", "build_from_embeddings", "open_index", "load_model", "index_info", "open_corpus",
                 "Classifier", "xmore", "create_app", "RetrievalError", "CorpusError", "IndexFolderError",
                 "ModelLoadError"):
        assert hasattr(retrieval, name), name
    assert callable(retrieval.xmore.xmore)
