"""The package's import graph, read from the source with ``ast`` (nothing is imported): one-way, no cycles, no
upward imports, no entry point imported by the library, no other module's private names (docs/architecture.md).

Every ``import`` counts, at module level or inside a function: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "captionless3d"

#: The library's rooms, lowest first: a module may import only from its own room or from rooms listed before it.
#: (The room of ``captionless3d.x.y`` is ``x``.)
LAYERS: tuple[str, ...] = (
    "errors",
    "version",
    "utils",
    "data",
    "models",
    "losses",
    "teacher",
    "landmarks",
    "shape_index",
    "mining",
    "training",
    "evaluation",
    "baselines",
    "hydra_utils",
    "pipeline",
    "prepare_data",
    "sweep",
    "reproduce",
    "api",
    "export",
    "hub",
)

#: Applications on top of the library: nothing in the library imports them. (``__main__`` modules are entry points
#: too; the top-level package ``captionless3d`` is the facade that lazily re-exports ``api.load``.)
ENTRY_POINTS: tuple[str, ...] = ("train", "eval", "features", "cli", "demo")

#: Known offenders, each ``(importing module, imported module or name)``, allowed until the helper they use becomes
#: public where it belongs. Empty: keep it so.
MODELS_ALLOWED: frozenset[tuple[str, str]] = frozenset()


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path, module: str) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` of every captionless3d import in ``path``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, str | None, int]] = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == PACKAGE:
                out += [(target, a.name, node.lineno) for a in node.names]
    return out


def _target(imported: str, name: str | None) -> str:
    """The module an import depends on: ``from pkg import sub`` is the submodule, ``from mod import f`` the module."""
    if name is not None and f"{imported}.{name}" in MODULES:
        return f"{imported}.{name}"
    return imported


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<facade>"


def _is_entry(module: str) -> bool:
    return _room(module) in ENTRY_POINTS or module.endswith(".__main__") or module == PACKAGE


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for imported, name, _ in _imports(path, module):
            target = _target(imported, name)
            if target in MODULES and target != module:
                edges[module].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
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
        for w in sorted(edges[v]):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _allowed(module: str, target: str) -> bool:
    return (module, target) in MODELS_ALLOWED


def test_every_room_is_known():
    rooms = {_room(m) for m in MODULES if not _is_entry(m)}
    unknown = sorted(rooms - set(LAYERS))
    assert not unknown, f"modules outside the layer list of docs/architecture.md: {unknown} (add them to LAYERS)"


def test_no_import_cycles():
    cycles = [c for c in _cycles(_edges()) if not all(_allowed(a, b) for a in c for b in c if a != b)]
    assert not cycles, f"import cycles: {cycles}"


def test_the_library_never_imports_an_entry_point():
    bad = [f"{m} -> {t}" for m, targets in _edges().items() for t in sorted(targets)
           if not _is_entry(m) and _is_entry(t) and not _allowed(m, t)]
    assert not bad, "library modules importing an entry point:\n" + "\n".join(bad)


def test_imports_only_go_down_the_layers():
    rank = {room: i for i, room in enumerate(LAYERS)}
    bad = []
    for module, targets in _edges().items():
        if _is_entry(module):
            continue
        for target in sorted(targets):
            if _is_entry(target):
                continue  # reported by test_the_library_never_imports_an_entry_point
            a, b = _room(module), _room(target)
            if a != b and rank[b] > rank[a] and not _allowed(module, target):
                bad.append(f"{module} ({a}) -> {target} ({b})")
    assert not bad, "upward imports (docs/architecture.md lists the rooms in order):\n" + "\n".join(bad)


def _private_imports(path: Path, module: str) -> list[str]:
    own_package = module.rpartition(".")[0] if path.name != "__init__.py" else module
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    bad = []
    for imported, name, line in _imports(path, module):
        target = _target(imported, name)
        if name is not None and name.startswith("_") and not name.startswith("__") and target == imported:
            if imported != module and not _allowed(module, f"{imported}.{name}"):
                bad.append(f"{where}:{line}: {name} from {imported}")
        private_parts = [p for p in target.split(".") if p.startswith("_") and not p.startswith("__")]
        if private_parts:
            owner = target[: target.index("." + private_parts[0])]
            if not (module == owner or module.startswith(owner + ".") or own_package == owner) \
                    and not _allowed(module, target):
                bad.append(f"{where}:{line}: private module {target}")
    return bad


def test_no_module_imports_another_modules_private_names():
    bad = []
    for module, path in MODULES.items():
        bad += _private_imports(path, module)
    for folder in ("scripts", "benchmarks"):
        for path in sorted((ROOT / folder).glob("*.py")):
            bad += _private_imports(path, f"{folder}.{path.stem}")
    assert not bad, ("imports of another module's private names (make the helper public where it belongs):\n"
                     + "\n".join(bad))


@pytest.mark.parametrize("path", sorted((ROOT / "scripts").glob("*.py")), ids=lambda p: p.name)
def test_scripts_do_not_patch_sys_path(path):
    tree = ast.parse(path.read_text("utf-8"))
    patched = [node.lineno for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and node.attr == "path"
               and isinstance(node.value, ast.Name) and node.value.id == "sys"]
    assert not patched, f"{path.name}: uses sys.path (lines {patched}); import library functions instead"


def test_the_checks_see_a_planted_offence(tmp_path):
    """The analysis itself: a cycle, an upward import and a private import are found."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycles(edges) == [["a", "b", "c"]]
    planted = tmp_path / "x.py"
    planted.write_text("from captionless3d.data.pointcloud import _hidden\nimport captionless3d.evaluation._checks\n")
    assert len(_private_imports(planted, "scripts.x")) == 2
