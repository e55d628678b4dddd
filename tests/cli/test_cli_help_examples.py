"""Help examples run as written: their options parse and every model they name resolves."""

from __future__ import annotations

import shlex

import click

from embed_collections.cli.main import cli
from embed_collections.cli.options import split_list
from embed_collections.engine.models.specs import ALIASES


def examples(command: click.Command) -> list[list[str]]:
    """The command lines of a command's help example block (continuation lines joined)."""
    text = (command.help or "").replace("\\\n", " ")
    return [
        shlex.split(line, comments=True)[2:]
        for line in text.splitlines()
        if "embed-collections " in line
    ]


def test_every_help_example_parses_and_names_known_models():
    checked = 0
    for name, command in cli.commands.items():
        for args in examples(command):
            if args and args[0] == name:
                args = args[1:]
            context = command.make_context(name, list(args), resilient_parsing=False)
            models = split_list(tuple(context.params.get("models") or ()))
            unknown = [m for m in models if m.lower() not in ALIASES and not m.startswith(".")]
            assert unknown == [], f"{name} example names unknown models: {args}"
            checked += 1
    assert checked >= 10
