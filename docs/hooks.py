"""MkDocs hook: the command reference (cli.md) is generated from the typer app at build time.

The app is found from ``pyproject.toml``'s ``[project.scripts] emerge`` entry point, so the
page follows the CLI wherever its module lives, and typer's own Markdown generator
(``typer.cli.get_docs_for_click``, what ``typer ... utils docs`` runs) writes every command,
argument, option and default from the code. Nothing generated is committed.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

MARKER = "<!-- emerge-cli -->"
ROOT = Path(__file__).resolve().parent.parent


def emerge_app():
    """The typer app behind the ``emerge`` script."""
    import typer

    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["emerge"]
    module = importlib.import_module(target.partition(":")[0])
    apps = [v for v in vars(module).values() if isinstance(v, typer.Typer)]
    if len(apps) != 1:
        raise RuntimeError(f"{module.__name__} holds {len(apps)} typer apps, expected one")
    return apps[0]


def cli_reference() -> str:
    """Markdown for every ``emerge`` command, its first heading dropped (the page has its own)."""
    import typer
    import typer.cli
    import typer.main

    command = typer.main.get_command(emerge_app())
    ctx = typer.Context(command, info_name="emerge")
    text = typer.cli.get_docs_for_click(obj=command, ctx=ctx, name="emerge", title="emerge")
    lines = text.strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(lines).strip() + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())
