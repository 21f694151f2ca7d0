"""The layout's rules, checked on the source: one folder per stage family, no import cycles
(between modules or between packages), no module importing another module's underscore names,
the host side free of the build side, and no module past 500 lines."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "edgelora"
# What the air-gapped host may import: the bundle format, the GGUF reader, the runtime, utilities.
HOST_ALLOWED = ("edgelora.host", "edgelora.errors", "edgelora.artifacts", "edgelora.util", "edgelora.runtime",
                "edgelora.gguf.reader", "edgelora.bundle.layout", "edgelora.bundle.manifest",
                "edgelora.bundle.signing", "edgelora.bundle.probes")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[tuple[str, str]]]:
    """{module: {(imported module, imported name)}} for every edgelora import, lazy ones included."""
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}: relative import"
                if node.module and node.module.startswith("edgelora"):
                    for alias in node.names:
                        full = f"{node.module}.{alias.name}"
                        found[name].add((full, "") if full in modules else (node.module, alias.name))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("edgelora"):
                        found[name].add((alias.name, ""))
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def _package(module: str) -> str:
    """The subpackage (``training``), or the top-level module itself (``config``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "edgelora"


def test_no_import_cycles_between_modules_or_packages():
    modules = _modules()
    imports = _imports(modules)
    edges = {m: {t for t, _ in imps if t in modules and t != m and not m.startswith(t + ".")}
             for m, imps in imports.items()}
    assert _cycles(edges) == []
    packages: dict[str, set[str]] = defaultdict(set)
    for m, targets in edges.items():
        packages[_package(m)].update(_package(t) for t in targets if _package(t) != _package(m))
    assert _cycles(packages) == []


def test_no_module_imports_another_modules_private_names():
    modules = _modules()
    private = sorted(f"{m} imports {t}.{n}" for m, imps in _imports(modules).items() for t, n in imps
                     if n.startswith("_") and not n.startswith("__"))
    assert private == []


def test_host_side_imports_only_the_bundle_format_reader_runtime_and_utilities():
    modules = _modules()
    imports = _imports(modules)
    bad = sorted(f"{m} -> {t}" for m, imps in imports.items() if m.startswith("edgelora.host.")
                 and not m.endswith(".stage") for t, _ in imps if not t.startswith(HOST_ALLOWED))
    assert bad == []


def test_modules_stay_small_and_the_top_level_stays_short():
    modules = _modules()
    long = sorted(str(p.relative_to(PKG.parent)) for p in modules.values()
                  if len(p.read_text(encoding="utf-8").splitlines()) > 500)
    assert long == []
    top = [m for m in modules if m.count(".") == 1 and not (PKG / m.split(".")[1]).is_dir()]
    assert len(top) <= 15, sorted(top)


def test_every_builtin_stage_lives_in_its_packages_stage_module():
    from edgelora.default_plugins.stages import BUILTIN_STAGES

    for stage in BUILTIN_STAGES:
        module = stage.run.__module__
        assert module.startswith("edgelora.") and module.endswith(".stage"), (stage.name, module)
