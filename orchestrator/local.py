"""``emerge train``: one run on this machine, no Ray, with a live progress bar."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from emergence_core.config import TrainConfig
from emergence_core.runner import ProbeReport, TrialHooks, TrialOutcome, run_trial
from emergence_core.store import atomic_path
from orchestrator.errors import UsageError

__all__ = ["claim_train_folder", "train_local"]

RUN_FILE = "run.json"


def claim_train_folder(out: Path, cfg: TrainConfig) -> bool:
    """Check that ``out`` is new, empty, or holds this very run; True when it holds it.

    Writes nothing: the caller records the run only once everything is validated.
    """
    if not out.exists():
        return False
    if not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    marker = out / RUN_FILE
    if marker.exists():
        held = json.loads(marker.read_text())
        if held.get("fingerprint") != cfg.fingerprint():
            c = held.get("config", {})
            raise UsageError(
                f"--out {out} holds a different run ({c.get('task')} {c.get('scale')} seed "
                f"{c.get('seed')}, config {held.get('fingerprint')}); choose another folder or "
                f"delete it")
        return True
    if any(out.iterdir()):
        raise UsageError(f"--out {out} is not empty and holds no emerge run; choose a new folder")
    return False


def _record(out: Path, cfg: TrainConfig) -> None:
    with atomic_path(out / RUN_FILE) as tmp:
        tmp.write_text(json.dumps({"kind": "train", "fingerprint": cfg.fingerprint(),
                                   "config": cfg.model_dump(mode="json")}, indent=2))


def _acc_text(acc: dict[int, float], events: dict[int, int]) -> str:
    return " ".join(f"L{lv} {a:.2f}{'*' if lv in events else ''}" for lv, a in acc.items())


def train_local(cfg: TrainConfig, out: Path, *, console: Console | None = None,
                **run_kwargs: Any) -> TrialOutcome:
    """Run (or resume) ``cfg`` in ``out`` with a progress bar; Ctrl-C stops at a step boundary."""
    console = console or Console(stderr=True)
    resuming = claim_train_folder(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    _record(out, cfg)
    if resuming:
        console.print(f"[dim]resuming {cfg.trial_name()} in {out}[/dim]")

    interrupted = {"flag": False}

    def on_sigint(_signum: int, _frame: object) -> None:
        if interrupted["flag"]:
            raise KeyboardInterrupt
        interrupted["flag"] = True
        console.print("[yellow]stopping at the next step; Ctrl-C again to abort[/yellow]")

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[acc]}"),
        TimeElapsedColumn(), console=console, transient=False,
    )
    bar = progress.add_task(cfg.trial_name(), total=cfg.steps, loss="-", acc="")

    def on_probe(r: ProbeReport) -> None:
        loss = "-" if r.train_loss is None else f"{r.train_loss:.3f}"
        progress.update(bar, completed=r.step, loss=loss, acc=_acc_text(r.accuracy, r.events))
        for lv, step in r.new_events.items():
            progress.console.print(f"emergence: level {lv} at step {step}")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with progress:
            outcome = run_trial(cfg, out, hooks=TrialHooks(
                on_probe=on_probe, should_stop=lambda: interrupted["flag"]), **run_kwargs)
    finally:
        signal.signal(signal.SIGINT, previous)
    return outcome


def summary_table(cfg: TrainConfig, outcome: TrialOutcome, out: Path) -> Table:
    t = Table(title=f"{outcome.trial}: {outcome.n_params:,} parameters, "
                    f"{'complete' if outcome.completed else f'stopped at step {outcome.step}'}")
    t.add_column("level")
    t.add_column("emergence step", justify="right")
    for lv in cfg.levels:
        ev = outcome.events.get(lv)
        t.add_row(str(lv), "-" if ev is None else str(ev))
    rate = outcome.steps_run / outcome.train_wall_s if outcome.train_wall_s > 0 else 0.0
    t.caption = (f"{outcome.wall_s:.1f} s wall, {rate:.1f} steps/s with probes; "
                 f"metrics in {out / 'metrics'}")
    return t
