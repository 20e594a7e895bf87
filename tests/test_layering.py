"""The layering of the README's Layout section, held by a walk over imports (lazy ones included)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("colorcli", "engines", "training", "benchmarks")
ALLOWED = {
    "engines": set(),
    "training": {"engines"},
    "benchmarks": {"engines", "training"},
    "colorcli": {"engines", "benchmarks"},
}
# Rooms of engines/ (a subpackage, or a module at the top) and the rooms each may import: leaves first,
# the photo pipeline last. A room may always import within itself.
ROOMS = {
    "color_np": set(),
    "color": {"color_np"},
    "metrics": set(),
    "files": set(),
    "media": {"files"},
    "models": {"color", "metrics", "files"},
    "runtime": {"models", "color", "files"},
    "video": {"color_np", "media", "files", "runtime"},  # runtime: process memory settings for long films
    "evaluation": {"color", "metrics", "media", "models", "video", "files"},
    "pipeline": {"color", "models", "runtime"},
    # The photo path without PyTorch; PyTorch's pipeline only for the float compose of 16-bit photos.
    "ort_pipeline": {"color_np", "files", "models", "runtime", "pipeline"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imported_modules(path: Path) -> set[str]:
    """Every project module ``path`` imports, anywhere in the file; ``from a import b`` counts as ``a.b``
    when ``b`` is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if _is_module(sub) else node.module)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def _room(module: str) -> str:
    return module.split(".")[1]


ENGINE_FILES = sorted(p for p in (ROOT / "engines").rglob("*.py") if "weights" not in p.parts)
GRAPH = {_module_name(p): _imported_modules(p) for p in ENGINE_FILES}


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_it_may(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files or package == "benchmarks"
    for f in files:
        wrong = {m.split(".")[0] for m in _imported_modules(f)} - ALLOWED[package] - {package}
        assert not wrong, f"{f.relative_to(ROOT)} imports {wrong}"


def test_every_engines_module_sits_in_a_known_room():
    strays = {m for m in GRAPH if m != "engines" and _room(m) not in ROOMS}
    assert not strays, f"modules outside the rooms of ROOMS (add the room and its rule): {sorted(strays)}"


def test_rooms_import_only_the_rooms_below_them():
    for module, imports in GRAPH.items():
        if module == "engines":
            continue
        for target in imports:
            if target == "engines":
                continue
            here, there = _room(module), _room(target)
            assert there == here or there in ROOMS[here], f"{module} ({here}) imports {target} ({there})"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle's path found by a depth-first walk (each cycle at least once)."""
    found, state = [], {}  # state: 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_cycle_finder_finds_a_cycle_and_a_clean_graph_has_none():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles_among_engines_modules():
    graph = {m: {t for t in imports if t.startswith("engines.")} for m, imports in GRAPH.items()}
    assert _cycles(graph) == []


def test_pyproject_package_discovery_includes_every_subpackage():
    found = set(find_packages(ROOT, include=["colorcli*", "engines*", "training*", "benchmarks*"]))
    on_disk = {_module_name(p) for p in ROOT.glob("*/**/__init__.py") if p.parts[len(ROOT.parts)] in PACKAGES}
    assert "engines.models" in on_disk and on_disk <= found
    assert 'include = ["colorcli*", "engines*", "training*", "benchmarks*"]' in (ROOT / "pyproject.toml").read_text()


def test_help_imports_no_heavy_modules():
    code = "import sys; from colorcli import app; assert not {'torch', 'av', 'cv2'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_photo_reading_imports_no_torch():
    """Photos are read on a thread while torch loads (``colorcli.app._Prefetch``): what that thread
    imports must not pull torch in, or the reading waits for it."""
    code = (
        "import sys; import engines.video.streams, engines.media.photo_io; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
