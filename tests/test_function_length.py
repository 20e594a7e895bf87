"""No function in the project (outside tests/) is longer than MAX_LINES, so that each can be read whole.

A function's length is its body's: from its first statement (the docstring, if any) to its last line,
nested functions included. The signature does not count: a Typer command declares its options there,
one entry each, and that list is scanned rather than followed.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("colorcli", "engines", "training", "benchmarks")
MAX_LINES = 80
# Still over, to be split: (file, function) -> nothing else belongs here.
ALLOWED: set[tuple[str, str]] = set()


def _body_lengths(path: Path) -> dict[str, int]:
    """``qualified name -> body lines`` for every function and method in ``path``."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lengths[name] = child.end_lineno - child.body[0].lineno + 1
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), str(path)), "")
    return lengths


def _project_lengths() -> dict[tuple[str, str], int]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for name, lines in _body_lengths(path).items():
                found[(path.relative_to(ROOT).as_posix(), name)] = lines
    return found


def test_body_length_counts_from_the_first_statement(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "def f(\n    a,\n    b,\n):\n    '''doc'''\n    x = a\n    return x\n\n"
        "class C:\n    def g(self):\n        def inner():\n            pass\n\n        return inner\n"
    )
    assert _body_lengths(source) == {"f": 3, "C.g": 4, "C.g.inner": 1}


def test_no_function_is_longer_than_the_limit():
    lengths = _project_lengths()
    assert len(lengths) > 100, "the walk found too few functions: is ROOT right?"
    too_long = {key: n for key, n in lengths.items() if n > MAX_LINES and key not in ALLOWED}
    assert not too_long, f"split these (body lines; at most {MAX_LINES}):\n" + "\n".join(
        f"  {path} {name}: {n}" for (path, name), n in sorted(too_long.items())
    )


def test_the_allow_list_holds_only_functions_still_over():
    lengths = _project_lengths()
    stale = {key: lengths.get(key) for key in ALLOWED if lengths.get(key, 0) <= MAX_LINES}
    assert not stale, "remove from ALLOWED (gone, or now short enough): " + ", ".join(
        f"{path} {name} ({n if n is not None else 'not found'})" for (path, name), n in sorted(stale.items())
    )
