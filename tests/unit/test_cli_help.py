"""Every command's --help reads cleanly: each option says what it does, flags show no type.

Rich reads ``[...]`` in a help string as markup and drops it, which left "Bind address ." where
"[default: 127.0.0.1]" was; flags without ``metavar=""`` show ``<bool>`` as if they took a value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from posthog_customerio.cli.main import app

# What is left when markup eats a bracketed phrase: a word, a space, then punctuation.
STRAY = re.compile(r"\w [.;,](\s|$)")


def commands() -> Iterator[tuple[list[str], Any]]:
    """Every command and group, with the words that invoke it."""
    todo: list[tuple[list[str], Any]] = [([], typer.main.get_command(app))]
    while todo:
        path, cmd = todo.pop()
        yield path, cmd
        if isinstance(cmd, TyperGroup):
            todo.extend(([*path, name], sub) for name, sub in cmd.commands.items())


def help_text(path: list[str]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_is_covered() -> None:
    names = {" ".join(path) for path, _ in commands()}
    assert {"serve", "backfill", "status", "dead-letters", "dead-letters replay"} <= names


def test_every_option_and_argument_has_help() -> None:
    missing = [
        f"{' '.join(path) or '(root)'} {param.name}"
        for path, cmd in commands()
        for param in cmd.params
        if not getattr(param, "hidden", False) and not (getattr(param, "help", None) or "").strip()
    ]
    assert not missing, missing


def test_help_texts_have_no_stray_punctuation_or_bool() -> None:
    for path, _ in commands():
        text = help_text(path)
        if path == ["serve"]:
            assert "Bind address [default: 127.0.0.1]." in text, text
        for line in text.splitlines():
            assert not STRAY.search(line), f"{' '.join(path)} --help: {line.strip()}"
            # Flags take no value. typer shows its own --help flag as <bool>, which no
            # declaration here reaches; every flag we declare has metavar="".
            if "<bool>" in line:
                assert line.strip(" │").startswith("--help "), f"{' '.join(path)}: {line}"


def test_version_alone_prints_the_version() -> None:
    from posthog_customerio import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == __version__
