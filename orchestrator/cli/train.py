"""``emerge train``: one run on this machine, no Ray, with a live progress bar."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

if TYPE_CHECKING:  # torch and transformers load when a run starts, not for --help
    from emergence_core.config import TrainConfig
    from emergence_core.trial.runner import ProbeReport, TrialOutcome

from emergence_core.folder_records import read_run_record
from emergence_core.run_folder import RunFolder
from orchestrator.cli.common import handles_usage_errors, parse_sets
from orchestrator.common.errors import UsageError

__all__ = ["claim_train_folder", "train", "train_local"]


def claim_train_folder(out: Path, cfg: TrainConfig) -> bool:
    """Check that ``out`` is new, empty, or holds this very run; True when it holds it.

    Writes nothing: the caller records the run only once everything is validated.
    """
    if not out.exists():
        return False
    if not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    held = read_run_record(RunFolder(out))
    if held is not None:
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
    RunFolder(out).write_run_record({"kind": "train", "fingerprint": cfg.fingerprint(),
                                     "config": cfg.model_dump(mode="json")})


def _acc_text(acc: dict[int, float], events: dict[int, int]) -> str:
    return " ".join(f"L{lv} {a:.2f}{'*' if lv in events else ''}" for lv, a in acc.items())


def train_local(cfg: TrainConfig, out: Path, *, console: Console | None = None,
                stopped_by: list[int] | None = None, intro: str | None = None,
                **run_kwargs: Any) -> TrialOutcome:
    """Run (or resume) ``cfg`` in ``out`` with a progress bar; Ctrl-C, SIGTERM or SIGHUP
    stops at a step boundary (the signal is appended to ``stopped_by``). ``intro`` is
    printed once the folder is claimed."""
    from emergence_core.trial.runner import TrialHooks, run_trial

    console = console or Console(stderr=True)
    resuming = claim_train_folder(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    _record(out, cfg)
    if intro is not None:  # after the folder's checks: a refusal stays one line
        console.print(intro)
    if resuming:
        console.print(f"[dim]resuming {cfg.trial_name()} in {out}[/dim]")

    interrupted: dict[str, Any] = {"flag": False, "signum": None}

    def on_sigint(signum: int, _frame: object) -> None:
        if interrupted["flag"]:
            raise KeyboardInterrupt
        interrupted["flag"], interrupted["signum"] = True, signum
        console.print("[yellow]stopping at the next step; Ctrl-C again to abort[/yellow]")

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[acc]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
        transient=False,
    )
    bar = progress.add_task(cfg.trial_name(), total=cfg.steps, loss="-", acc="")

    lines = AlertLines()

    def on_probe(r: ProbeReport) -> None:
        loss = "-" if r.train_loss is None else f"{r.train_loss:.3f}"
        progress.update(bar, completed=r.step, loss=loss, acc=_acc_text(r.accuracy, r.events))
        for alert in r.new_alerts:
            if (line := lines.line(alert)) is not None:
                progress.console.print(f"[cyan]{line}[/cyan]")
        for lv, step in r.new_events.items():
            progress.console.print(f"emergence: level {lv} at step {step}")

    # SIGTERM (a scheduler, `kill`) and SIGHUP (a closed terminal) stop it as Ctrl-C does
    previous = {s: signal.signal(s, on_sigint) for s in _STOPS}
    try:
        with progress:
            outcome = run_trial(cfg, out, hooks=TrialHooks(
                on_probe=on_probe, should_stop=lambda: interrupted["flag"],
                on_note=lambda n: progress.console.print(f"[yellow]warning: {n}[/yellow]")),
                **run_kwargs)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if (held := lines.summary(RunFolder(out).trial_alerts_dir(cfg.trial_name()))):
        console.print(held)
    if interrupted["signum"] is not None and stopped_by is not None:
        stopped_by.append(interrupted["signum"])
    return outcome


_STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class AlertLines:
    """Live-alert lines for a terminal: the first ``per_level`` of each level in full, the
    rest counted (a run where nothing emerged printed 35 lines)."""

    def __init__(self, per_level: int = 3) -> None:
        self.per_level = per_level
        self.shown: dict[int, int] = {}
        self.held: dict[int, int] = {}

    def line(self, alert: Any) -> str | None:
        """The line to print for ``alert`` (an ``alerts.Alert``), or None past the limit."""
        n = self.shown.get(alert.level, 0)
        if n >= self.per_level:
            self.held[alert.level] = self.held.get(alert.level, 0) + 1
            return None
        self.shown[alert.level] = n + 1
        last = n + 1 == self.per_level
        return alert.line() + (" (later alerts of this level are counted)" if last else "")

    def summary(self, where: Path) -> str | None:
        """One line for the alerts not printed, or None when every one was."""
        if not self.held:
            return None
        total = sum(self.shown.values()) + sum(self.held.values())
        return ("alerts not shown: " + ", ".join(f"level {lv} {n}" for lv, n in
                                                 sorted(self.held.items()))
                + f"; all {total} are in {where}")


def _final(out: Path) -> dict[tuple[str, int | None], float]:
    """(measure, level) -> its value at the run's last probe step, for the summary."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from emergence_core.store import read_metrics

    try:
        table = read_metrics(out)
    except (OSError, ValueError):
        return {}
    wanted = pc.is_in(table["measure"], value_set=pa.array(["accuracy", "chance",
                                                             "diag_loss"]))
    rows = table.filter(wanted).to_pylist()
    last = max((r["step"] for r in rows if r["measure"] != "chance"), default=None)
    return {(r["measure"], r["level"]): r["value"] for r in rows
            if r["step"] == last or r["measure"] == "chance"}


def summary_table(cfg: TrainConfig, outcome: TrialOutcome, out: Path) -> Table:
    t = Table(title=f"{outcome.trial}: {outcome.n_params:,} parameters, "
                    f"{'complete' if outcome.completed else f'stopped at step {outcome.step}'}")
    final = _final(out)
    for name, justify in (("level", "left"), ("emergence step", "right"),
                          ("final accuracy", "right"), ("chance-corrected", "right"),
                          ("final loss / token", "right")):
        t.add_column(name, justify=justify)

    def num(x: float | None, fmt: str = ".3f") -> str:
        return "-" if x is None else format(x, fmt)

    for lv in cfg.levels:
        ev = outcome.events.get(lv)
        acc, chance = final.get(("accuracy", lv)), final.get(("chance", lv))
        corrected = None if acc is None or chance is None or chance >= 1 else \
            (acc - chance) / (1 - chance)
        t.add_row(str(lv), "-" if ev is None else str(ev), num(acc), num(corrected),
                  num(final.get(("diag_loss", lv))))
    rate = outcome.steps_run / outcome.train_wall_s if outcome.train_wall_s > 0 else 0.0
    t.caption = (f"{outcome.wall_s:.1f} s wall, {rate:.1f} steps/s with probes; "
                 f"metrics in {RunFolder(out).metrics_root}; next: emerge analyze {out}")
    return t


def _levels(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise UsageError(
            f"--levels {text!r}: expected a comma-separated list such as 1,2,3") from None


def _config(task: str, scale: str, seed: int, steps: int | None, levels: str | None,
            lr: float | None, batch_size: int | None, device: str | None,
            threads: int | None,
            sets: list[str]) -> TrainConfig:
    """The run's config from the options; every problem at once, one line each."""
    from pydantic import ValidationError

    from emergence_core.config import TrainConfig, check_device, resolve_config
    from emergence_core.registry import RegistryError
    from emergence_core.scales import scale_shape
    from emergence_core.tasks import get_task
    from orchestrator.common.errors import format_validation_error

    problems: list[str] = []
    try:
        overrides: dict[str, Any] = parse_sets(sets)
    except UsageError as e:
        overrides, problems = {}, [*e.problems]
    if steps is not None and steps <= 0:
        problems.append(f"--steps must be positive, got {steps}")
        steps = None
    if threads is not None and threads <= 0:
        problems.append(f"--threads must be positive, got {threads}")
    try:
        lv = _levels(levels)
    except UsageError as e:
        problems += e.problems
        lv = None
    for name in ("task", "scale", "seed"):  # positional in resolve_config: flags only
        if name in overrides:
            problems.append(f"--set {name}={overrides.pop(name)!r}: {name} is set with "
                            f"--{name}, not --set")
    for name, value in (("steps", steps), ("lr", lr), ("batch_size", batch_size),
                        ("levels", lv), ("device", device)):
        if value is None:
            continue
        flag = f"--{name.replace('_', '-')}"
        if name in overrides and overrides[name] != value and not (
                name == "levels" and isinstance(overrides[name], list)
                and tuple(overrides[name]) == value):
            problems.append(f"{flag} {value!r} and --set {name}={overrides[name]!r} disagree; "
                            "give one of them")
        overrides[name] = value
    if "device" in overrides:
        try:
            overrides["device"] = check_device(overrides["device"], available=True)
        except ValueError as e:
            problems.append(f"device: {e}")
            overrides.pop("device")
    names = {}
    for flag, value, canon in (("--task", task, get_task), ("--scale", scale, scale_shape)):
        try:
            names[flag] = canon(value).name
        except RegistryError as e:  # an unknown task or scale
            problems.append(f"{flag}: {e}")
    # the other fields are checked even when the task or scale is unknown, with stand-ins
    try:
        cfg = resolve_config(names.get("--task", "MOD"), names.get("--scale", "s0"), seed,
                             **overrides)
    except ValidationError as e:
        problems += format_validation_error(e, model=TrainConfig)
    if problems:
        raise UsageError(*problems)
    if "n_probes" not in overrides.get("probe", {}) and \
            cfg.probe.n_probes > cfg.steps // PROBE_SHARE:
        # a short run: the default probe count would probe (nearly) every step
        probe = {**overrides.get("probe", {}), "n_probes": max(1, cfg.steps // PROBE_SHARE)}
        cfg = resolve_config(cfg.task, cfg.scale, seed, **{**overrides, "probe": probe})
    return cfg


# A run shorter than PROBE_SHARE x the default probe count probes every PROBE_SHARE-th step
# unless probe.n_probes is given: 200 default probes on a 200-step run are most of its time.
PROBE_SHARE = 4


def probe_line(cfg: TrainConfig, explicit: bool) -> str:
    """The probe grid stated before a run starts; a warning when it is as dense as the
    steps (the diagnostic forward passes then cost more than the training)."""
    line = (f"{cfg.trial_name()}: {cfg.steps} steps, cheap probes at {cfg.probe.n_probes} "
            "of them (and step 0)")
    if not explicit and cfg.probe.n_probes == max(1, cfg.steps // PROBE_SHARE):
        line += f", every {PROBE_SHARE}th step of this short run (--set probe.n_probes=N)"
    if explicit and cfg.probe.n_probes * 2 > cfg.steps:
        line += (f"\n[yellow]warning: probe.n_probes={cfg.probe.n_probes} probes "
                 f"{'every' if cfg.probe.n_probes >= cfg.steps else 'most'} step(s) of a "
                 f"{cfg.steps}-step run: the probes will take most of its time[/yellow]")
    return line


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
    device: Annotated[str | None, typer.Option(
        help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE",
        help="any config field, e.g. --set probe.n_probes=100 (repeatable)")] = None,
) -> None:
    """Train one model on one task, writing its measures to OUT/metrics (no Ray needed)."""
    cfg = _config(task, scale, seed, steps, levels, lr, batch_size, device, threads, set_ or [])
    folder = (out or Path("runs") / f"train-{cfg.trial_name()}").absolute()

    import torch
    from rich.console import Console

    if threads is not None:
        torch.set_num_threads(threads)
    from emergence_core.trial.runner import TrialDiverged

    console = Console(stderr=True)
    stopped_by: list[int] = []
    intro = probe_line(cfg, any(x.startswith("probe.n_probes=") for x in set_ or []))
    try:
        outcome = train_local(cfg, folder, console=console, stopped_by=stopped_by,
                              intro=intro)
    except TrialDiverged as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    Console().print(summary_table(cfg, outcome, folder))
    if not outcome.completed:
        console.print(f"stopped at step {outcome.step}; run the same command again to resume")
        raise typer.Exit(128 + (stopped_by or [signal.SIGINT])[0])
