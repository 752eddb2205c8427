"""``emerge sweep`` / ``resume`` / ``sync-mlflow``: the driver of a sweep.

It runs each launch's Tune experiment (``tune_run``) with the probe pool beside it
(``probe_pool``), shows live progress, and keeps MLflow filled from Parquet on a background
thread; what was launched and where it stands is read from the run folder (``run_folder``).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from emergence_core.store import atomic_path
from orchestrator.cluster import connect, preflight
from orchestrator.errors import UsageError
from orchestrator.mlflow_sync import MlflowSync, default_tracking_uri
from orchestrator.progress import SweepBoard
from orchestrator.run_folder import (
    RunFolder,
    added_trials,
    dry_run_table,
    probe_progress,
    run_dir_of,
    trial_state,
)
from orchestrator.spec import SweepSpec, TrialPlan, load_spec

__all__ = ["launch", "resume", "sync_mlflow"]


class Live:
    """This driver's live objects, looked up by the Tune callback (``tune_run.LIVE``).

    MLflow calls run on a background thread, so a slow or dead tracking server never holds
    up Tune's event loop. A failed call is dropped, not retried: every sync sends all that
    is missing (the ledger knows), and ``close`` does a last full sync.
    """

    def __init__(self, board: SweepBoard, mlflow: MlflowSync | None, run_dir: Path) -> None:
        self.board = board
        self.mlflow = mlflow
        self.run_dir = run_dir
        self.failures: dict[str, str] = {}
        self._queue: queue.Queue = queue.Queue()
        self._down_until = 0.0
        self._thread = threading.Thread(target=self._work, name="emerge-mlflow", daemon=True)
        self._thread.start()

    def mlflow_call(self, fn: Callable[[MlflowSync], Any]) -> None:
        if self.mlflow is not None:
            self._queue.put(fn)

    def _work(self) -> None:
        while (fn := self._queue.get()) is not None:
            if time.monotonic() < self._down_until:
                continue  # the server was down moments ago: the next sync catches up
            try:
                fn(self.mlflow)
            except Exception as e:  # any MLflow failure: note it, never stop the sweep
                self._down_until = time.monotonic() + 20
                text = str(e).strip()
                first = text.splitlines()[0][:120] if text else type(e).__name__
                self.board.note(f"[yellow]MLflow unavailable ({first}); Parquet stays complete; "
                                f"`emerge sync-mlflow {self.run_dir}` fills it in[/yellow]")

    def close(self, final: Callable[[MlflowSync], Any] | None = None) -> None:
        """Finish queued calls, run ``final`` (after any outage), stop the thread."""
        if final is not None:
            self._queue.put(lambda m: setattr(self, "_down_until", 0.0))
            self._queue.put(final)
        self._queue.put(None)
        self._thread.join()

    def record_failure(self, name: str, error: str) -> None:
        self.failures[name] = error
        with atomic_path(self.run_dir / "status" / f"{name}.json") as tmp:
            tmp.write_text(json.dumps({"state": "failed", "error": error, "time": time.time()}))


def _fit_launches(folder: RunFolder, spec: SweepSpec, launches: list[dict[str, Any]],
                  plans: dict[str, TrialPlan], fresh: set[str]) -> tuple[int, bool]:
    """Fit (or restore and fit) each launch in turn; returns the number of errored trials
    and whether Ctrl-C stopped them."""
    from orchestrator import tune_run

    errors = 0
    for launch in launches:
        if all(trial_state(folder.path, n)[0] == "done" for n in launch["trials"]):
            continue
        if launch["name"] in fresh or not tune_run.can_restore(folder.path, launch["name"]):
            callback = tune_run.SweepCallback(
                folder.path, {n: plans[n].config.model_dump(mode="json")
                              for n in launch["trials"]})
            tuner = tune_run.build_tuner(spec, [plans[n] for n in launch["trials"]],
                                         folder.path, launch["name"], [callback])
        else:
            tuner = tune_run.restore_tuner(folder.path, launch["name"])
        results, interrupted = tune_run.fit(tuner)  # returns normally on errors and Ctrl-C
        errors += results.num_errors
        if interrupted:
            return errors, True
        if any(trial_state(folder.path, n)[0] != "done" for n in launch["trials"]):
            break  # trials failed: later launches wait for a resume
    return errors, False


def _run_launches(folder: RunFolder, spec: SweepSpec, launches: list[dict[str, Any]],
                  tracking_uri: str, console: Console, fresh: set[str]) -> int:
    """Run the trials and the probe pool beside them; returns the exit code."""
    from orchestrator import tune_run
    from orchestrator.probe_pool import ProbePool

    plans = {p.name: p for p in spec.trials()}
    mlflow = MlflowSync(folder.path, tracking_uri, spec.name)
    board = SweepBoard({n: p.config.steps for n, p in plans.items()}, console)
    live = Live(board, mlflow, folder.path)
    tune_run.LIVE[str(folder.path)] = live
    live.mlflow_call(lambda m: m.parent_run(folder.spec_path.read_text()))
    live.mlflow_call(lambda m: m.set_status(None, "RUNNING"))
    for name in plans:
        state, _, events = trial_state(folder.path, name)
        if state == "done":
            board.finished(name, True)
            board.result(name, plans[name].config.steps, {k: v for k, v in events.items()
                                                           if v is not None})
    pool = ProbePool(folder.path, spec.name, spec.probes,
                     {n: p.config for n, p in plans.items()},
                     on_done=lambda job: live.mlflow_call(
                         lambda m: m.sync_probes(job.trial, plans[job.trial].config)),
                     on_change=board.probes)
    pool.reconcile(retry_failed=True)
    errors = 0
    try:
        with board:
            pool.start()
            finished = False
            try:
                errors, interrupted = _fit_launches(folder, spec, launches, plans, fresh)
                finished = not interrupted and all(trial_state(folder.path, n)[0] == "done"
                                                   for n in plans)
                if finished:
                    if pool.enabled:
                        board.note("trials done; the probe pool finishes the checkpoints")
                    pool.finish()
            except KeyboardInterrupt:
                finished = False  # Ctrl-C outside Tune's fit(): stop just as inside it
            finally:
                if not finished:
                    pool.close()
    finally:
        tune_run.LIVE.pop(str(folder.path), None)
        states = {n: trial_state(folder.path, n)[0] for n in plans}
        missing = [n for n, s in states.items() if s != "done"]
        failed = [n for n in missing if states[n] == "failed"] or (missing if errors else [])
        p_done, p_due, p_failed = probe_progress(folder.path, spec)
        complete = not missing and p_done + len(p_failed) == p_due
        parent = ("FINISHED" if complete and not p_failed
                  else "FAILED" if failed or p_failed else "RUNNING")

        def final(m: MlflowSync) -> None:
            m.sync_all([p.config for p in plans.values()])
            m.set_status(None, parent)

        live.close(final)
    if complete and not p_failed:
        probes = f", {p_done} expensive probes" if p_due else ""
        console.print(f"sweep {spec.name} complete: {len(plans)} trials{probes} in "
                      f"{folder.path}")
        return 0
    if failed or p_failed:
        for n in failed:
            console.print(f"[red]failed: {n}: {live.failures.get(n, 'see emerge status')}[/red]")
        for job in p_failed:
            console.print(f"[red]probe failed: {job} (see {folder.path}/probes/failed)[/red]")
        console.print(f"{len(failed)} trial(s) and {len(p_failed)} probe(s) failed; "
                      f"`emerge resume {folder.path}` retries them")
        return 1
    console.print(f"stopped with {len(missing)} trial(s) and {p_due - p_done} probe(s) "
                  f"unfinished; `emerge resume {folder.path}` finishes them")
    return 130


def launch(spec_path: Path, *, address: str | None, tracking_uri: str | None,
           dry_run: bool, allow_pending: bool, console: Console) -> int:
    spec = load_spec(spec_path)
    plans = spec.trials()
    if dry_run:
        Console().print(dry_run_table(spec, plans))
        return 0
    folder = RunFolder(run_dir_of(spec))
    spec_text = spec_path.read_text()
    if folder.exists():
        state = folder.state()
        new = added_trials(folder.frozen_spec(), spec)
        launches = state["launches"]
        fresh: set[str] = set()
        if new:
            name = f"launch-{len(launches)}"
            launches = [*launches, {"name": name, "trials": [p.name for p in new]}]
            fresh.add(name)
            console.print(f"the sweep file adds {len(new)} trial(s); running them as {name}")
        else:
            console.print(f"{folder.path} holds this sweep; resuming it")
        uri = tracking_uri or state["tracking_uri"]
    else:
        if folder.path.exists() and any(folder.path.iterdir()):
            raise UsageError(f"run folder {folder.path} exists and holds no sweep; set run_dir "
                             "in the sweep file to a new folder")
        launches = [{"name": "launch-0", "trials": [p.name for p in plans]}]
        fresh = {"launch-0"}
        uri = tracking_uri or spec.tracking_uri or default_tracking_uri(folder.path)
    started = connect(address, console)
    try:
        preflight(folder.path, plans, allow_pending=allow_pending, pool=spec.probes)
        folder.write(spec_text, uri, launches)
        return _run_launches(folder, spec, launches, uri, console, fresh)
    finally:
        if started:
            import ray

            ray.shutdown()


def resume(run_dir: Path, *, address: str | None, tracking_uri: str | None,
           allow_pending: bool, console: Console) -> int:
    folder = RunFolder(run_dir)
    state = folder.state()
    spec = folder.frozen_spec()
    uri = tracking_uri or state["tracking_uri"]
    p_done, p_due, _ = probe_progress(folder.path, spec)
    if all(trial_state(folder.path, p.name)[0] == "done" for p in spec.trials()) \
            and p_done == p_due:
        console.print(f"sweep {spec.name} is complete; nothing to resume")
        return 0
    started = connect(address, console)
    try:
        preflight(folder.path, spec.trials(), allow_pending=allow_pending, pool=spec.probes)
        folder.write(folder.spec_path.read_text(), uri, state["launches"])
        return _run_launches(folder, spec, state["launches"], uri, console, set())
    finally:
        if started:
            import ray

            ray.shutdown()


def sync_mlflow(run_dir: Path, *, tracking_uri: str | None) -> dict[str, int]:
    folder = RunFolder(run_dir)
    state = folder.state()
    spec = folder.frozen_spec()
    sync = MlflowSync(folder.path, tracking_uri or state["tracking_uri"], spec.name)
    sync.parent_run(folder.spec_path.read_text())
    sent = sync.sync_all([p.config for p in spec.trials()])
    if all(trial_state(folder.path, p.name)[0] == "done" for p in spec.trials()):
        sync.set_status(None, "FINISHED")
    return sent
