"""The ``emerge`` command line: each command parses, validates, calls one function, prints.

The commands live beside this module (``train``, ``sweep``, ``analyze``, ``pythia``, ``probe``) and
share ``common``; this module only assembles them. Heavy imports (torch, ray, mlflow) happen
inside the commands, so ``emerge --help`` and input errors answer at once.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from orchestrator.cli import analyze, multiverse, probe, pythia, sweep, train

__all__ = ["app", "main"]

app = typer.Typer(
    name="emerge",
    help="Sweeps on Ray for studying how capabilities emerge while neural networks train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags without a '<bool>' metavar
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"emerge {version('emerge')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Sweeps on Ray for studying how capabilities emerge while neural networks train."""


app.command("train")(train.train)
app.command("sweep")(sweep.sweep)
app.command("resume")(sweep.resume)
app.command("status")(sweep.status)
app.command("sync-mlflow")(sweep.sync_mlflow)
app.command("pythia")(pythia.pythia_command)
app.command("analyze")(analyze.analyze_command)
app.command("probe")(probe.probe)
app.command("multiverse")(multiverse.multiverse_command)


def main() -> None:
    app(prog_name="emerge")


if __name__ == "__main__":
    sys.exit(main())
