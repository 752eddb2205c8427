"""``emerge pythia SPEC``: the command. It imports nothing heavy at module level."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.common import err_console, handles_usage_errors

__all__ = ["pythia_command"]


def pythia_command(
    spec: Annotated[Path, typer.Argument(
        metavar="SPEC", help="pythia sweep file, e.g. sweeps/pythia.yaml")],
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
    from orchestrator.pythia.run import launch

    code = handles_usage_errors(launch)(spec, address=address, dry_run=dry_run,
                                        allow_pending=allow_pending, console=err_console())
    raise typer.Exit(code)
