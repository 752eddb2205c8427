"""The ``emerge`` command line: parse, validate, call one orchestrator function, print.

Heavy imports (torch, ray, mlflow) happen inside the commands, so ``emerge --help`` and
input errors answer at once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml

from orchestrator.errors import UsageError, format_validation_error

app = typer.Typer(
    name="emerge",
    help="Sweeps on Ray for studying how capabilities emerge while neural networks train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


@app.callback()
def _root() -> None:
    """Sweeps on Ray for studying how capabilities emerge while neural networks train."""


def _fail(lines: list[str], code: int = 2) -> None:
    for line in lines:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)


def handles_usage_errors(fn: F) -> F:
    """Turn bad input anywhere below a command into one line per problem and exit code 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pydantic import ValidationError

        from emergence_core.tasks import TaskError

        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            _fail(e.problems)
        except ValidationError as e:
            _fail(format_validation_error(e))
        except TaskError as e:
            _fail([str(e)])

    return wrapper  # type: ignore[return-value]


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``key.sub=value`` pairs into a nested dict; values are read as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. --set probe.n_probes=100")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise UsageError(f"--set {item!r}: value is not valid YAML ({e.problem})") from None
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UsageError(f"--set {item!r}: {p} is set both as a value and a section")
        node[leaf] = value
    return out


def _levels(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise UsageError(
            f"--levels {text!r}: expected a comma-separated list such as 1,2,3") from None


@app.command()
@handles_usage_errors
def train(
    task: Annotated[str, typer.Option(help="task name: COPY REV CMP PAR ADD MOD SORT MUL")],
    scale: Annotated[str, typer.Option(help="model scale: s0 (0.4M) .. s4 (85M)")] = "s0",
    seed: Annotated[int, typer.Option(help="seed of the model, the batches and the data")] = 0,
    steps: Annotated[int | None, typer.Option(help="training steps (default: per task)")] = None,
    out: Annotated[Path | None, typer.Option(
        help="run folder (default: runs/train-TASK-SCALE-SEED); rerun to resume")] = None,
    levels: Annotated[str | None, typer.Option(help="levels to mix, e.g. 1,2,3")] = None,
    lr: Annotated[float | None, typer.Option(
        help="peak learning rate (default: per scale)")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="samples per step, split over levels")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="any config field, e.g. --set probe.n_probes=100 (repeatable)")] = None,
) -> None:
    """Train one model on one task, writing its measures to OUT/metrics (no Ray needed)."""
    overrides: dict[str, Any] = parse_sets(set_ or [])
    for name, value in (("steps", steps), ("lr", lr), ("batch_size", batch_size),
                        ("levels", _levels(levels))):
        if value is not None:
            overrides[name] = value
    overrides["device"] = device
    if steps is not None and steps <= 0:
        raise UsageError(f"--steps must be positive, got {steps}")
    if threads is not None and threads <= 0:
        raise UsageError(f"--threads must be positive, got {threads}")

    from emergence_core.config import resolve_config

    cfg = resolve_config(task, scale, seed, **overrides)
    folder = (out or Path("runs") / f"train-{cfg.trial_name()}").absolute()

    import torch
    from rich.console import Console

    from orchestrator.local import summary_table, train_local

    if threads is not None:
        torch.set_num_threads(threads)
    console = Console(stderr=True)
    outcome = train_local(cfg, folder, console=console)
    Console().print(summary_table(cfg, outcome, folder))
    if not outcome.completed:
        console.print(f"stopped at step {outcome.step}; run the same command again to resume")
        raise typer.Exit(130)


def _console():
    from rich.console import Console

    return Console(stderr=True)


@app.command()
@handles_usage_errors
def sweep(
    spec: Annotated[Path, typer.Argument(help="sweep file, e.g. sweeps/smoke.yaml")],
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
    from orchestrator.sweep import launch

    raise typer.Exit(launch(spec, address=address, tracking_uri=tracking_uri, dry_run=dry_run,
                            allow_pending=allow_pending, console=_console()))


@app.command()
@handles_usage_errors
def resume(
    run_dir: Annotated[Path, typer.Argument(help="the sweep's run folder, e.g. runs/smoke")],
    address: Annotated[str | None, typer.Option(help="as for emerge sweep")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        help="MLflow tracking URI (default: the one the sweep was launched with)")] = None,
    allow_pending: Annotated[bool, typer.Option("--allow-pending")] = False,
) -> None:
    """Finish a sweep after a crash, a preemption or Ctrl-C: errored trials included."""
    from orchestrator.sweep import resume as resume_sweep

    raise typer.Exit(resume_sweep(run_dir, address=address, tracking_uri=tracking_uri,
                                  allow_pending=allow_pending, console=_console()))


@app.command()
@handles_usage_errors
def status(
    run_dir: Annotated[Path, typer.Argument(help="the sweep's run folder")],
) -> None:
    """Print a table of the sweep's trials: state, step, emergence events."""
    from rich.console import Console

    from orchestrator.run_folder import status_table

    table, _ = status_table(run_dir)
    Console().print(table)


@app.command("sync-mlflow")
@handles_usage_errors
def sync_mlflow(
    run_dir: Annotated[Path, typer.Argument(help="the sweep's run folder")],
    tracking_uri: Annotated[str | None, typer.Option(
        help="MLflow tracking URI (default: the one the sweep was launched with)")] = None,
) -> None:
    """Send MLflow what it missed (rows, runs, tags) from the run folder's Parquet."""
    from orchestrator.sweep import sync_mlflow as sync

    sent = sync(run_dir, tracking_uri=tracking_uri)
    typer.echo(f"sent {sum(sent.values())} rows to MLflow for {len(sent)} trials")


def _register() -> None:
    """Commands defined in their own modules (they import nothing heavy at import time)."""
    from orchestrator.analyze_cli import analyze_command
    from orchestrator.pythia_cli import pythia_command

    app.command("pythia")(pythia_command)
    app.command("analyze")(analyze_command)


_register()


def main() -> None:
    app(prog_name="emerge")


if __name__ == "__main__":
    sys.exit(main())
