"""The package layering of ARCHITECTURE.md, held by a walk over imports."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("colorcli", "engines", "training", "benchmarks")
ALLOWED = {
    "engines": set(),
    "training": {"engines"},
    "benchmarks": {"engines", "training"},
    "colorcli": {"engines", "benchmarks"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_it_may(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files or package == "benchmarks"
    for f in files:
        wrong = (_imports(f) & set(PACKAGES)) - ALLOWED[package] - {package}
        assert not wrong, f"{f.relative_to(ROOT)} imports {wrong}"


def test_help_imports_no_heavy_modules():
    code = "import sys; from colorcli import app; assert not {'torch', 'av', 'cv2'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
