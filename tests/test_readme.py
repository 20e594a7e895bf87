"""The README and the CLI's help agree with the commands' real options: the README's options table lists
exactly `colorize run`'s options, with their choices and defaults, and every command's help says in its
first paragraph what it does, with an example."""

import re
import types
import typing
from enum import Enum
from pathlib import Path

import typer.core
import typer.main

from colorcli.app import app, run

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(text: str, heading: str) -> str:
    """The body of the markdown section titled ``heading`` (up to the next heading of any level)."""
    match = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#)", text, re.DOTALL | re.MULTILINE)
    assert match, f"README has no '{heading}' section"
    return match.group(1)


def readme_options() -> dict[str, dict]:
    """Each option named in the first column of the README's Options table: its table row, the other
    names of the same option (`-o, --output`) and the choices written after it (`--backend a|b|c`)."""
    options: dict[str, dict] = {}
    for line in _section(README.read_text(), "Options").splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = re.split(r"(?<!\\)\|", line)[1]
        for code in re.findall(r"`([^`]+)`", first_cell):
            names, choices = [], None
            for token in re.split(r"[,\s]+", code.replace("\\|", "|")):
                if token.startswith("-"):
                    names.append(token)
                elif "|" in token:
                    choices = set(token.split("|"))
            for name in names:
                options[name] = {"row": line, "names": set(names), "choices": choices}
    return options


def run_params() -> list[typer.core.TyperOption]:
    command = typer.main.get_command(app).commands["run"]
    return [p for p in command.params if isinstance(p, typer.core.TyperOption) and "--help" not in p.opts]


def _declared_type(name: str) -> object:
    """The type ``run`` declares for its parameter ``name``, without ``Annotated`` and ``| None``
    (read from the function, not from Typer's objects, whose attributes differ between versions)."""
    hint = typing.get_type_hints(run)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 else hint


def test_readme_options_table_lists_exactly_the_run_options():
    documented = readme_options()
    real = {name for p in run_params() for name in (*p.opts, *p.secondary_opts)}
    missing, stale = sorted(real - set(documented)), sorted(set(documented) - real)
    assert not missing and not stale, f"README Options table: missing {missing}, not options of `run`: {stale}"
    for p in run_params():  # all names of one option (-o, --output; --overwrite, --no-overwrite) share one cell
        assert documented[p.opts[0]]["names"] == {*p.opts, *p.secondary_opts}, p.opts


def test_readme_choices_and_defaults_are_the_real_ones():
    documented = readme_options()
    for p in run_params():
        doc = documented.get(p.opts[0])
        if doc is None:
            continue  # a missing row: the test above names it
        kind = _declared_type(p.name)  # an Enum for a choice option
        if isinstance(kind, type) and issubclass(kind, Enum):
            choices = {member.value for member in kind}
            assert doc["choices"] == set(choices), f"{p.opts[0]}: README {doc['choices']}, CLI {choices}"
        default = p.default.value if isinstance(p.default, Enum) else p.default
        if default not in (None, False):  # flags and "the engine's own" defaults have no value to state
            assert re.search(rf"\b{re.escape(str(default))}\b", doc["row"]), (
                f"{p.opts[0]}: default {default} not in README"
            )


def test_readme_shows_every_command():
    code_lines = re.findall(r"^colorize .*$", README.read_text(), re.MULTILINE)
    for name in typer.main.get_command(app).commands:
        if name != "run":  # the default command: `colorize photo.jpg`
            assert any(line.startswith(f"colorize {name} ") for line in code_lines), (
                f"README: no `colorize {name}` line"
            )


def _commands(group, prefix: str = "colorize"):
    for name, command in group.commands.items():
        yield f"{prefix} {name}", command
        if hasattr(command, "commands"):  # a group: trt
            yield from _commands(command, f"{prefix} {name}")


def test_every_help_says_what_it_does_with_an_example():
    root = typer.main.get_command(app)
    for path, command in [("colorize", root), *_commands(root)]:
        first = (command.help or "").strip().split("\n\n")[0]
        assert "\n" not in first.strip(), f"{path}: first paragraph of its help is not one line: {first!r}"
        assert "`colorize " in first, f"{path}: its help's first line has no `colorize ...` example: {first!r}"
