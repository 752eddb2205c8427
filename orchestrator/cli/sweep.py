"""``emerge sweep``, ``resume``, ``status`` and ``sync-mlflow``: parse, call the driver, print.

Heavy imports (torch, ray, mlflow) happen inside the commands, so ``emerge --help`` and
input errors answer at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.common import err_console, handles_usage_errors
from orchestrator.common.errors import cli_tracking_uri

__all__ = ["resume", "status", "sweep", "sync_mlflow"]


@handles_usage_errors
def sweep(
    spec: Annotated[Path, typer.Argument(
        metavar="SPEC", help="sweep file, e.g. sweeps/smoke.yaml")],
    address: Annotated[str | None, typer.Option(
        help="Ray cluster to join (auto, host:port); 'local' starts a new one. Default: "
             "RAY_ADDRESS, else a cluster started on this machine, else a new local one")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        help="MLflow tracking URI, e.g. http://127.0.0.1:5000 (default: the sweep file's, "
             "else sqlite in the run folder)")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="validate and print the grid; start nothing")] = False,
    allow_pending: Annotated[bool, typer.Option(
        "--allow-pending", help="start even if no node has the GPUs a trial asks for "
                                "(an autoscaler will add them)")] = False,
) -> None:
    """Run the task x scale x seed grid of SPEC as Ray Tune trials."""
    from orchestrator.sweep.driver import launch

    tracking_uri = cli_tracking_uri(tracking_uri)
    raise typer.Exit(launch(spec, address=address, tracking_uri=tracking_uri, dry_run=dry_run,
                            allow_pending=allow_pending, console=err_console()))


@handles_usage_errors
def resume(
    run_dir: Annotated[Path, typer.Argument(
        metavar="RUN_DIR", help="the sweep's run folder, e.g. runs/smoke")],
    address: Annotated[str | None, typer.Option(help="as for emerge sweep")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        help="MLflow tracking URI (default: the one the sweep was launched with)")] = None,
    allow_pending: Annotated[bool, typer.Option(
        "--allow-pending", help="start even if no node has the GPUs a trial asks for "
                                "(an autoscaler will add them)")] = False,
) -> None:
    """Finish a sweep after a crash, a preemption or Ctrl-C: errored trials included."""
    from orchestrator.sweep.driver import resume as resume_sweep

    tracking_uri = cli_tracking_uri(tracking_uri)
    raise typer.Exit(resume_sweep(run_dir, address=address, tracking_uri=tracking_uri,
                                  allow_pending=allow_pending, console=err_console()))


@handles_usage_errors
def status(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="the sweep's run folder")],
    as_json: Annotated[bool, typer.Option(
        "--json", help="print JSON (trials, states, steps, events, probes, failures)")] = False,
) -> None:
    """Print the sweep's trials from the run folder alone: state, step, emergence events,
    expensive probes, and why a trial failed."""
    if as_json:
        import json

        from orchestrator.sweep.views import status_data

        typer.echo(json.dumps(status_data(run_dir), indent=1))
        return
    from rich.console import Console

    from orchestrator.sweep.views import status_table

    table, _ = status_table(run_dir)
    Console().print(table)


@handles_usage_errors
def sync_mlflow(
    run_dir: Annotated[Path, typer.Argument(
        metavar="RUN_DIR", help="the sweep's run folder")],
    tracking_uri: Annotated[str | None, typer.Option(
        help="MLflow tracking URI (default: the one the sweep was launched with)")] = None,
) -> None:
    """Send MLflow what it missed (rows, runs, tags) from the run folder's Parquet."""
    from orchestrator.sweep.driver import sync_mlflow as sync

    sent = sync(run_dir, tracking_uri=cli_tracking_uri(tracking_uri))
    typer.echo(f"sent {sum(sent.values())} rows to MLflow for {len(sent)} trials")
