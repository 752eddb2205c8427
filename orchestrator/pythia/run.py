"""``emerge pythia``: every (model, revision) of a Pythia sweep file as one Ray task.

A task loads one checkpoint, measures it on the probe sets (``evaluate_revision``) and
writes one Parquet part per probe set, i.e. per trial id and step:

    RUN/metrics/pythia/<model--name:probeset>/part-<step>-<step>.parquet

Parts appear atomically, so the files present say what is done: a (model, revision) is
skipped when every probe set has its part, and measured only on the missing sets when some
have one. A second launch therefore does nothing for what is done, and rerunning after a
crash or Ctrl-C finishes what is missing. A checkpoint that cannot be loaded (unknown
revision, model not cached while offline) fails that task alone, as one line naming model
and revision; the rest goes on, the failures are listed at the end, and the exit code is 1.

Hub access: a revision whose ref is in the local hub cache loads with
``local_files_only=True``, so a cached checkpoint never waits on the Hub (HEAD requests,
or about 23 s of retries when it is unreachable); anything else goes to the Hub unless
``HF_HUB_OFFLINE=1``. The flag is per call, where the environment variable would be fixed
at import for the whole worker and forbid downloading what is missing.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from emergence_core.atomic import atomic_path
from emergence_core.run_folder import RunFolder
from emergence_core.store import TrialStore
from orchestrator.common.errors import UsageError
from orchestrator.common.progress import PythiaBoard
from orchestrator.common.signals import exit_code, stop_signals
from orchestrator.pythia.spec import (
    MEASUREMENT_FIELDS,
    PythiaResources,
    PythiaSpec,
    RevisionTask,
    load_pythia_spec,
)

__all__ = ["PythiaBoard", "done_steps", "dry_run_table", "evaluate_task", "failure_line",
           "launch", "plan", "quiet_hf", "run_tasks"]

# Passed to the workers, so a joined cluster reads the same hub cache and stays quiet.
_HF_VARS = ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_QUIET = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
          "TOKENIZERS_PARALLELISM": "false"}


def _run_dir(spec: PythiaSpec) -> Path:
    return Path(spec.run_dir or Path("runs") / spec.name).absolute()


def _store(run_dir: Path, model: str, probeset: str) -> TrialStore:
    from emergence_core.pythia import trial_id

    return TrialStore(run_dir, trial_id(model, probeset), source="pythia")


def done_steps(run_dir: Path, model: str, probeset: str) -> set[int]:
    """Steps of ``model`` on ``probeset`` whose rows are on disk (parts, compacted or not)."""
    import pyarrow.parquet as pq

    steps: set[int] = set()
    for first, last, path in _store(run_dir, model, probeset).parts():
        if first == last:
            steps.add(first)
        else:  # a compacted part: read which steps it holds
            steps.update(pq.read_table(path, columns=["step"])["step"].to_pylist())
    return steps


def plan(spec: PythiaSpec, run_dir: Path) -> tuple[list[RevisionTask], list[RevisionTask]]:
    """(to run, already done): each task to run carries only its missing probe sets."""
    done = {(m, ps): done_steps(run_dir, m, ps) for m in spec.models for ps in spec.probesets}
    todo, skipped = [], []
    for task in spec.grid():
        missing = tuple(ps for ps in task.probesets if task.step not in done[task.model, ps])
        if missing:
            todo.append(replace(task, probesets=missing))
        else:
            skipped.append(task)
    return todo, skipped


# -- the Ray task ---------------------------------------------------------------------------

def quiet_hf() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # transformers' and huggingface_hub's bars


def evaluate_task(task: RevisionTask, run_dir: str, sweep: str, batch_size: int,
                  positions: tuple[str, ...]) -> dict[str, Any]:
    """Measure one (model, revision) and write one part per probe set (in a Ray worker)."""
    import pyarrow.compute as pc
    import torch
    from huggingface_hub import constants

    from emergence_core.pythia import PythiaLoadError, cached_revisions, evaluate_revision

    quiet_hf()
    torch.set_num_threads(max(1, math.floor(task.resources.cpus)))  # the worker is reused
    cached = task.revision in cached_revisions(task.model)
    start = time.monotonic()

    def measure(local_only: bool):
        return evaluate_revision(task.model, task.revision, task.probesets, device=task.device,
                                 dtype=task.dtype, sweep=sweep, batch_size=batch_size,
                                 positions=positions, local_files_only=local_only)

    try:
        table = measure(cached)
    except PythiaLoadError:
        if not cached or constants.is_offline_mode():
            raise
        table = measure(False)  # a ref without a complete snapshot: let the Hub fill it in
    files = []
    for ps in task.probesets:
        part = _store(Path(run_dir), task.model, ps).write_part(
            table.filter(pc.equal(table["task"], ps)))
        files.append(str(part))
    return {"rows": table.num_rows, "files": files, "seconds": time.monotonic() - start}


def failure_line(task: RevisionTask, error: BaseException) -> str:
    """One line naming the model and the revision, whatever went wrong."""
    from emergence_core.pythia import PythiaLoadError

    cause = getattr(error, "cause", None) or error  # a RayTaskError carries the original
    if isinstance(cause, PythiaLoadError):
        return str(cause)
    text = str(cause).strip()
    first = text.splitlines()[0][:300] if text else ""
    return f"{task.label}: {type(cause).__name__}" + (f": {first}" if first else "")


def _remote_options(res: PythiaResources, retries: int) -> dict[str, Any]:
    env = {k: os.environ[k] for k in _HF_VARS if k in os.environ}
    opts: dict[str, Any] = {"num_cpus": res.cpus, "num_gpus": res.gpus, "max_retries": retries,
                            "retry_exceptions": False,  # a load error is not a crash
                            "runtime_env": {"env_vars": {**_QUIET, **env}}}
    if res.memory_gb is not None:
        opts["memory"] = int(res.memory_gb * 2**30)
    return opts


def run_tasks(spec: PythiaSpec, run_dir: Path, todo: list[RevisionTask], board: PythiaBoard,
              cap: int) -> dict[str, str]:
    """Run ``todo`` with at most ``cap`` tasks in flight; returns {label: failure line}."""
    import ray

    # Decorated once per resource class: a GPU task then gets a fresh worker each time
    # (Ray's default for num_gpus in the decorator), which returns its GPU memory.
    remotes: dict[PythiaResources, Any] = {}
    pending, in_flight = deque(todo), {}
    failures: dict[str, str] = {}
    try:
        while pending or in_flight:
            while pending and len(in_flight) < cap:
                task = pending.popleft()
                fn = remotes.get(task.resources)
                if fn is None:
                    fn = remotes[task.resources] = ray.remote(
                        **_remote_options(task.resources, spec.retries))(evaluate_task)
                ref = fn.options(name=f"pythia {task.label}").remote(
                    task, str(run_dir), spec.name, spec.batch_size, tuple(spec.positions))
                in_flight[ref] = task
                board.started(task.label)
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            for ref in ready:
                task = in_flight.pop(ref)
                try:
                    ray.get(ref)
                    board.done(task.label)
                except Exception as e:  # every failure, load error or crash, becomes one line
                    failures[task.label] = failure_line(task, e)
                    board.failed(task.label, failures[task.label])
    except KeyboardInterrupt:
        for ref in in_flight:
            ray.cancel(ref, force=True)
        raise
    return failures


# -- the driver -----------------------------------------------------------------------------

def dry_run_table(spec: PythiaSpec, run_dir: Path) -> Table:
    """The (model, revision) grid, each model's resources, and what is already done."""
    todo, skipped = plan(spec, run_dir)
    revisions = [r for r, _ in spec.revision_list()]
    shown = ", ".join(revisions) if len(revisions) <= 8 else \
        f"{', '.join(revisions[:4])} ... {revisions[-1]}"
    t = Table(title=f"pythia {spec.name}: {len(spec.models)} model(s) x {len(revisions)} "
                    f"revision(s) = {len(todo) + len(skipped)} tasks (dry run: nothing started)")
    for col in ("model", "to do", "resources per task", "device"):
        t.add_column(col, justify="right" if col == "to do" else "left")
    for model in spec.models:
        where, res = spec.resources_for(model)
        device, dtype = spec.device_and_dtype(res)
        n_todo = sum(task.model == model for task in todo)
        mem = "" if res.memory_gb is None else f", {res.memory_gb:g} GiB"
        t.add_row(model, f"{n_todo}/{len(revisions)}",
                  f"{res.cpus:g} CPU, {res.gpus:g} GPU{mem} ({where})", f"{device} {dtype}")
    t.caption = (f"revisions: {shown}\nprobe sets: {', '.join(spec.probesets)} (read at "
                 f"{', '.join(spec.positions)})\nrun folder: {run_dir} ({len(skipped)} done)")
    return t


def _check_run_folder(run_dir: Path, spec: PythiaSpec) -> None:
    frozen = RunFolder(run_dir).spec_path
    if frozen.exists():
        try:
            old = load_pythia_spec(frozen)
        except UsageError:
            raise UsageError(f"run folder {run_dir} holds another kind of run (its spec.yaml "
                             "is not a pythia sweep file); set run_dir to a new folder") from None
        changed = [f"{k} changed from {getattr(old, k)!r} to {getattr(spec, k)!r}"
                   for k in MEASUREMENT_FIELDS if getattr(old, k) != getattr(spec, k)]
        if changed:
            raise UsageError(*(f"the sweep file changed since launch: {c}; models, revisions, "
                               "probe sets and resources may change, not what is measured; use "
                               "a new name or run_dir" for c in changed))
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise UsageError(f"run folder {run_dir} exists and holds no pythia sweep; set run_dir "
                         "in the sweep file to a new folder")


def _preflight(spec: PythiaSpec, run_dir: Path, allow_pending: bool) -> None:
    """Refuse tasks no node can hold; on a multi-node cluster, a run folder not shared."""
    import ray

    from emergence_core.pythia import parse_model_name
    from orchestrator.sweep.cluster import preflight

    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    most = {k: max((n.get(k, 0) for n in nodes), default=0) for k in ("CPU", "GPU", "memory")}
    problems = []
    for model in spec.models:
        where, res = spec.resources_for(model)
        key = where if where.startswith("resources.") else \
            f"resources.{parse_model_name(model).size or model}"
        fix = f"lower {key} in the sweep file"
        if res.cpus > most["CPU"]:
            problems.append(f"{model} needs {res.cpus:g} CPUs but the largest node has "
                            f"{most['CPU']:g}; {fix}")
        if res.gpus > most["GPU"] and not allow_pending:
            problems.append(f"{model} needs {res.gpus:g} GPU(s) but no node has that many; run "
                            f"it on CPU (set {key}: {{cpus: 2, gpus: 0}}), or pass "
                            "--allow-pending to wait for an autoscaler")
        if res.memory_gb is not None and res.memory_gb * 2**30 > most["memory"]:
            problems.append(f"{model} reserves {res.memory_gb:g} GiB but the largest node "
                            f"offers {most['memory'] / 2**30:.1f} GiB to tasks; {fix}")
    if problems:
        raise UsageError(*problems)
    preflight(run_dir, [], allow_pending=allow_pending)  # the shared-storage check


def _write_failures(run_dir: Path, failures: dict[str, str]) -> None:
    path = RunFolder(run_dir).pythia_failures_path
    if not failures:
        path.unlink(missing_ok=True)
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"time": time.time(), "failures": failures}, indent=1))


def launch(spec_path: Path, *, address: str | None, dry_run: bool, allow_pending: bool,
           console: Console) -> int:
    """Validate, plan, fan out; returns the exit code (0, 1 on failures, 130 on Ctrl-C)."""
    spec = load_pythia_spec(spec_path)
    run_dir = _run_dir(spec)
    if dry_run:
        Console().print(dry_run_table(spec, run_dir))
        return 0
    _check_run_folder(run_dir, spec)
    todo, skipped = plan(spec, run_dir)
    if not todo:
        console.print(f"pythia {spec.name}: all {len(skipped)} (model, revision) tasks are "
                      f"already in {run_dir}; nothing to do", soft_wrap=True)
        return 0
    import ray

    from orchestrator.sweep.cluster import connect

    connect(address, console)
    try:
        _preflight(spec, run_dir, allow_pending)
        run_dir.mkdir(parents=True, exist_ok=True)
        RunFolder(run_dir).write_spec(spec_path.read_text())
        cap = spec.max_concurrent or max(1, int(ray.cluster_resources().get("CPU", 1)))
        board = PythiaBoard(len(todo), skipped=len(skipped), console=console)
        try:
            with stop_signals() as stop, board:
                failures = run_tasks(spec, run_dir, todo, board, cap)
        except KeyboardInterrupt:
            by = f" by {stop.name}" if stop.signum else ""
            console.print(f"stopped{by}; run the same command again to finish the "
                          f"{board.remaining()} task(s) left")
            return exit_code(stop)
    finally:
        ray.shutdown()
    _write_failures(run_dir, failures)
    n_done = len(todo) - len(failures)
    console.print(f"pythia {spec.name}: {n_done} done, {len(skipped)} skipped, "
                  f"{len(failures)} failed; rows in {RunFolder(run_dir).source_dir('pythia')}",
                  soft_wrap=True)
    for line in failures.values():
        console.print(f"[red]failed: {escape(line)}[/red]", soft_wrap=True)
    return 1 if failures else 0
