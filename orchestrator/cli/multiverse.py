"""``emerge multiverse``: every claim under every definition of the collapse measure."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.common import handles_usage_errors, parse_sets, stops_cleanly
from orchestrator.common.errors import UsageError


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--{what} {text!r}: expected comma-separated numbers, e.g. "
                         "0.5,0.8") from None


def _held(path: Path) -> set[str]:
    """The measures a trial's multiverse file holds; none when it is missing or unreadable
    (a zero-byte or truncated file is recomputed, never trusted)."""
    import polars as pl

    try:
        return set(pl.read_parquet(path, columns=["measure"])["measure"].unique().to_list())
    except (OSError, pl.exceptions.PolarsError):
        return set()


def _check_target(target: Path) -> None:
    """An --out that holds files of its own is refused: the tables would mix with them."""
    if target.is_file():
        raise UsageError(f"--out {target} is a file; give a folder")
    if target.is_dir() and any(target.iterdir()) and not (target / "multiverse.md").exists():
        raise UsageError(f"--out {target} holds other files (no multiverse.md); give a new "
                         "or empty folder, or an earlier multiverse output")


def _recompute(run_dir: Path, name: str, cfg, definitions, sweep: str) -> tuple[str, float]:
    """One trial's definitions (in a worker process: one torch thread, as a trial has)."""
    import torch

    from emergence_core.multiverse.recompute import recompute_trial

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    recompute_trial(run_dir, name, cfg, definitions, sweep=sweep)
    return name, time.perf_counter() - t0


def _recompute_all(run_dir: Path, todo: dict, definitions, sweep: str, workers: int,
                   echo) -> None:
    """Recompute ``todo`` (trial -> (config, kept steps)), ``workers`` trials at a time."""
    def said(name: str, seconds: float) -> None:
        echo(f"{name}: {len(definitions)} definitions at {len(todo[name][1])} steps in "
             f"{seconds:.0f} s")

    if workers <= 1 or not todo:
        from emergence_core.multiverse.recompute import recompute_trial

        for name, (cfg, _) in todo.items():
            t0 = time.perf_counter()
            recompute_trial(run_dir, name, cfg, definitions, sweep=sweep)
            said(name, time.perf_counter() - t0)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: a fork of a process that has run torch can hang in its thread pools
    with ProcessPoolExecutor(min(workers, len(todo)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_recompute, run_dir, name, cfg, definitions, sweep)
                   for name, (cfg, _) in todo.items()]
        try:
            for f in as_completed(futures):
                said(*f.result())
        except KeyboardInterrupt:
            # a signal reaches this process only (`kill PID`, a scheduler's SIGTERM); the
            # workers' files are written atomically, so ending them loses no finished trial
            procs = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                proc.terminate()
            raise


def multiverse_run(run_dir: Path, out: Path | None = None, *, samples: tuple[int, ...] = (),
                   thresholds: tuple[float, ...] = (), sets: dict | None = None,
                   recompute: bool = True, workers: int = 1, echo=typer.echo) -> Path:
    """Recompute the definitions of every trial with kept weights (unless already done, or
    ``recompute`` is False; ``workers`` trials at a time, each in its own process), then
    write the multiverse tables and figures to ``out`` (default RUN_DIR/report/multiverse);
    returns ``out``."""
    import polars as pl

    from emergence_core.folder_records import describe
    from emergence_core.multiverse.claims import multiverse_table
    from emergence_core.multiverse.definitions import Definition, grid
    from emergence_core.multiverse.recompute import multiverse_path
    from emergence_core.multiverse.report import summary_lines, write_multiverse
    from emergence_core.run_folder import RunFolder
    from emergence_core.store import TrialStore
    from orchestrator.cli.analyze import _readable_parts, resolve_settings
    from orchestrator.probe_pool.one import trial_configs
    from orchestrator.sweep.spec import load_spec

    if workers < 1:
        raise UsageError(f"--workers {workers}: must be at least 1")
    folder = RunFolder(run_dir)
    info = describe(folder)
    sweep, trials, _ = trial_configs(folder, load_spec)
    target = out or folder.report_dir / "multiverse"
    _check_target(target)  # before any work
    settings = resolve_settings(info.spec, sets or {})
    if any(k < 2 for k in samples):
        raise UsageError(f"--samples {','.join(map(str, samples))}: each must be >= 2")
    first = next(iter(trials.values()))
    # a level has at most diag_size samples: a larger count would name the same matrix
    most = first.diag_size
    head_k = min(first.probe.rankme_samples, most)
    chosen = tuple(sorted({min(k, most) for k in samples or (head_k, most)}))
    definitions = grid(chosen)
    headline = Definition("singular", True, "sep", "blocks", head_k).name
    todo = {}
    for name, cfg in trials.items():
        if recompute and not _held(multiverse_path(folder.path, name)) >= {
                d.name for d in definitions}:
            steps = TrialStore(folder.path, name).weight_steps()
            if steps:
                todo[name] = (cfg, steps)
            else:
                echo(f"{name}: no kept weights, left out (keep them with "
                     "train.checkpoint.weights_every: 1 and probes.keep_weights: true)")
    _recompute_all(folder.path, todo, definitions, sweep, workers, echo)
    parts = []
    for name in trials:
        path = multiverse_path(folder.path, name)
        if _held(path):
            parts.append(path)
        elif path.exists():
            echo(f"{name}: {path} cannot be read, left out (it is recomputed unless "
                 "--no-recompute)")
    if not parts:
        raise UsageError(f"{folder.path}: no trial has kept weights or multiverse rows; run "
                         "the sweep with train.checkpoint.weights_every: 1 and "
                         "probes.keep_weights: true")
    wanted = [d.name for d in definitions]
    mv = pl.concat([pl.read_parquet(p).filter(pl.col("measure").is_in(wanted))
                    for p in parts], how="vertical_relaxed")
    metric_parts, _ = _readable_parts(info)
    metrics = pl.concat([pl.read_parquet(p) for p in metric_parts], how="vertical_relaxed")
    t0 = time.perf_counter()
    table = multiverse_table(metrics, mv, settings, thresholds or (settings.threshold, 0.8),
                             headline)
    write_multiverse(table, target)
    echo("\n".join(summary_lines(table)))
    echo(f"{table.height} specifications in {time.perf_counter() - t0:.0f} s; tables and "
         f"specification curves in {target}")
    return target


def multiverse_command(
    run_dir: Annotated[Path, typer.Argument(
        metavar="RUN_DIR", help="a run folder whose trials kept their weights")],
    out: Annotated[Path | None, typer.Option(
        help="folder for the tables and figures (default: RUN_DIR/report/multiverse)")] = None,
    samples: Annotated[str | None, typer.Option(
        help="sample counts per level, comma-separated (default: the trials' "
             "probe.rankme_samples and diag_size)")] = None,
    thresholds: Annotated[str | None, typer.Option(
        help="emergence thresholds, comma-separated (default: the analysis's and 0.8)")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE", help="any AnalysisSettings field (repeatable)")] = None,
    no_recompute: Annotated[bool, typer.Option(
        "--no-recompute", help="use the rows already in RUN_DIR/multiverse only")] = False,
    workers: Annotated[int, typer.Option(
        help="trials recomputed at a time, each in its own process with one torch thread "
             "(a core each)")] = 1,
) -> None:
    """Every claim's statistic and verdict under every definition of the collapse measure.

    A definition fixes the formula (RankMe's singular values, or covariance eigenvalues),
    centring, read position (sep, last_answer, prompt_mean, all), where the stack ends
    (blocks, ln_f, logits) and the sample count; the analysis adds per level or pooled, the
    onset rule and the emergence threshold. The values are recomputed from the trials' kept
    weights into RUN_DIR/multiverse/ (once), then each claim gets a table and a
    specification curve. Example:

        emerge multiverse runs/cpu-study --samples 200,300 --thresholds 0.5,0.8 --workers 2
    """
    @stops_cleanly
    @handles_usage_errors
    def run() -> None:
        multiverse_run(run_dir, out,
                       samples=tuple(int(x) for x in _floats(samples, "samples"))
                       if samples else (),
                       thresholds=_floats(thresholds, "thresholds") if thresholds else (),
                       sets=parse_sets(set_ or []), recompute=not no_recompute,
                       workers=workers)

    run()
