"""``emerge pythia SPEC``: the command, ready for ``orchestrator/cli.py`` to register with

    app.command("pythia")(pythia_command)

It imports nothing heavy at module level (``emerge --help`` stays instant) and nothing from
``orchestrator.cli`` either, so cli.py may import it at the top. ``python -m
orchestrator.pythia_cli pythia SPEC`` runs the same command on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["app", "pythia_command"]


def pythia_command(
    spec: Annotated[Path, typer.Argument(help="pythia sweep file, e.g. sweeps/pythia.yaml")],
    address: Annotated[str | None, typer.Option(
        help="Ray cluster to join (auto, host:port); 'local' starts a new one. Default: "
             "RAY_ADDRESS, else a cluster started on this machine, else a new local one")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="validate and print the (model, revision) grid; start nothing")
    ] = False,
    allow_pending: Annotated[bool, typer.Option(
        "--allow-pending", help="start even if no node has the GPUs a model asks for "
                                "(an autoscaler will add them)")] = False,
) -> None:
    """Measure every (model, revision) of a Pythia sweep file, one Ray task each.

    What the run folder holds is skipped; failures are listed at the end (exit code 1).
    """
    from rich.console import Console

    from orchestrator.cli import handles_usage_errors  # at call time: cli.py imports us
    from orchestrator.pythia_run import launch

    code = handles_usage_errors(launch)(spec, address=address, dry_run=dry_run,
                                        allow_pending=allow_pending,
                                        console=Console(stderr=True))
    raise typer.Exit(code)


app = typer.Typer(name="emerge", add_completion=False, pretty_exceptions_enable=False,
                  no_args_is_help=True)


@app.callback()
def _root() -> None:
    """``emerge pythia`` on its own (until cli.py registers it)."""


app.command("pythia")(pythia_command)

if __name__ == "__main__":
    app(prog_name="emerge")
