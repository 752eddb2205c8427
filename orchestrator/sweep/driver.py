"""``emerge sweep`` / ``resume`` / ``sync-mlflow``: the driver of a sweep.

It runs each launch's Tune experiment (``tune_run``) with the probe pool beside it
(``orchestrator.probe_pool``), shows live progress, and keeps MLflow filled from Parquet on a
background thread (``orchestrator.tracking``); what was launched and where it stands is read
from the run folder (``emergence_core.run_folder``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from emergence_core.folder_lock import driver_lock
from emergence_core.folder_records import failure, sweep_state, trial_state
from emergence_core.readers import UnreadableFile
from emergence_core.run_folder import RunFolder, RunFolderError
from orchestrator.common.errors import RuntimeFault, UsageError
from orchestrator.common.progress import SweepBoard
from orchestrator.common.signals import Stop, exit_code, stop_signals
from orchestrator.sweep.cluster import capacity_in_view, connect, preflight
from orchestrator.sweep.spec import SweepSpec, Trial, load_spec
from orchestrator.sweep.trial_events import RUNNING_SWEEPS
from orchestrator.sweep.views import (
    added_trials,
    dry_run_table,
    frozen_spec,
    probe_progress,
    run_folder_of,
)
from orchestrator.tracking.store import (
    check_store,
    default_tracking_uri,
    experiment_url,
    moved_tracking_uri,
)
from orchestrator.tracking.sync import MlflowSync

__all__ = ["launch", "resume", "sync_mlflow"]


class SweepServices:
    """What this driver offers its running sweep's trial events (``trial_events``): the
    progress board, the MLflow thread and the failure record, found by run folder in
    ``trial_events.RUNNING_SWEEPS``.

    MLflow calls run on a background thread, so a slow or dead tracking server never holds
    up Tune's event loop. A failed call is dropped, not retried: every sync sends all that
    is missing (the ledger knows), and ``close`` does a last full sync.
    """

    def __init__(self, board: SweepBoard, mlflow: MlflowSync | None, folder: RunFolder) -> None:
        self.board = board
        self.mlflow = mlflow
        self.folder = folder
        self.run_dir = folder.path
        self.failures: dict[str, str] = {}
        self.mlflow_failed = False
        self._queue: queue.Queue = queue.Queue()
        self._down_until = 0.0
        self._thread = threading.Thread(target=self._work, name="emerge-mlflow", daemon=True)
        self._thread.start()

    def mlflow_call(self, fn: Callable[[MlflowSync], Any], *, always: bool = False) -> None:
        """Run ``fn`` on the MLflow thread. While the server was down moments ago, ordinary
        calls are skipped (the next sync sends all that is missing); ``always`` calls (the
        final sync, the parent's status) are attempted whatever happened before."""
        if self.mlflow is not None:
            self._queue.put((fn, always))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, always = item
            if not always and time.monotonic() < self._down_until:
                continue  # the server was down moments ago: the next sync catches up
            try:
                fn(self.mlflow)
                while self.mlflow.notes:
                    self.board.note(f"[yellow]{self.mlflow.notes.pop(0)}[/yellow]")
            except Exception as e:  # any MLflow failure: note it, never stop the sweep
                self._down_until = time.monotonic() + 20
                self.mlflow_failed = True
                first = _cause(e)
                self.board.note(f"[yellow]MLflow unavailable ({first}); Parquet stays complete; "
                                f"`emerge sync-mlflow {self.run_dir}` fills it in[/yellow]")
            else:
                if always:
                    self.mlflow_failed = False

    def close(self, final: Callable[[MlflowSync], Any] | None = None) -> bool:
        """Finish queued calls, then run ``final`` however recent an outage was, and stop the
        thread. Returns False when ``final`` failed (MLflow is behind the run folder)."""
        if final is not None:
            self.mlflow_failed = False
            self.mlflow_call(final, always=True)
        self._queue.put(None)
        self._thread.join()
        return final is None or not self.mlflow_failed

    def record_failure(self, name: str, error: str) -> None:
        self.failures[name] = error
        try:
            self.folder.record_failure(name, error)
        except OSError as err:  # a full disk: the failure still ends the sweep's output
            self.board.note(f"[yellow]the run folder cannot record {name}'s failure ({err})"
                            "[/yellow]")


def _cause(err: BaseException) -> str:
    """One line for an MLflow failure: the database driver's own message where SQLAlchemy
    wraps one ("(sqlite3.OperationalError) database or disk is full"), else the first."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    driver = [ln for ln in lines if ln.startswith("(") and "Error) " in ln]
    return (driver or lines or [type(err).__name__])[0][:160]


def _fit_launches(folder: RunFolder, spec: SweepSpec, launches: list[dict[str, Any]],
                  trials: dict[str, Trial], fresh: set[str],
                  note: Callable[[str], None]) -> tuple[int, bool]:
    """Fit (or restore and fit) each launch in turn; returns the number of errored trials
    and whether Ctrl-C stopped them."""
    from orchestrator.sweep import tune_run

    errors = 0
    for launch in launches:
        if all(folder.is_complete(n) for n in launch["trials"]):
            continue
        if launch["name"] not in fresh and tune_run.can_restore(folder, launch["name"]) \
                and (warning := tune_run.heal_launch(folder, launch["name"])) is not None:
            note(f"[yellow]warning: {escape(warning)}[/yellow]")
        if launch["name"] in fresh or not tune_run.can_restore(folder, launch["name"]):
            callback = tune_run.SweepCallback(
                folder.path, {n: trials[n].config for n in launch["trials"]})
            tuner = tune_run.build_tuner(spec, [trials[n] for n in launch["trials"]],
                                         folder, launch["name"], [callback])
        else:
            tuner = tune_run.restore_tuner(folder, launch["name"], spec,
                                           [trials[n] for n in launch["trials"]])
        failed, interrupted = tune_run.fit(tuner)  # returns normally on errors and Ctrl-C
        errors += failed if failed is not None else sum(
            not folder.is_complete(n) for n in launch["trials"])
        if interrupted:
            return errors, True
        if not all(folder.is_complete(n) for n in launch["trials"]):
            break  # trials failed: later launches wait for a resume
    return errors, False


def _run_launches(folder: RunFolder, spec: SweepSpec, launches: list[dict[str, Any]],
                  tracking_uri: str, console: Console, fresh: set[str],
                  stop: Stop | None = None) -> int:
    """Run the trials and the probe pool beside them; returns the exit code (130, or 128 +
    the signal's number when ``stop`` recorded SIGTERM or SIGHUP, if stopped)."""
    from orchestrator.probe_pool.pool import ProbePool

    trials = {p.name: p for p in spec.trials()}
    mlflow = MlflowSync(folder.path, tracking_uri, spec.name)
    board = SweepBoard({n: p.config.steps for n, p in trials.items()}, console)
    services = SweepServices(board, mlflow, folder)
    RUNNING_SWEEPS[str(folder.path)] = services
    spec_text = folder.spec_text()
    services.mlflow_call(lambda m: m.parent_run(spec_text, spec.emergence.rule))
    services.mlflow_call(lambda m: m.set_status(None, "RUNNING"))
    for name in trials:
        st = trial_state(folder, name)
        if st.state == "done":
            board.finished(name, True)
            board.result(name, trials[name].config.steps, {k: v for k, v in st.events.items()
                                                           if v is not None})
    pool = ProbePool(folder, spec.name, spec.probes, trials, spec.extensions,
                     on_done=lambda job: services.mlflow_call(
                         lambda m: m.sync_probes(job.trial, trials[job.trial].config)),
                     on_change=board.probes)
    pool.reconcile(retry_failed=True)
    errors = 0
    try:
        with board:
            pool.start()
            finished = False
            try:
                errors, interrupted = _fit_launches(folder, spec, launches, trials, fresh,
                                                    board.note)
                finished = not interrupted and all(folder.is_complete(n) for n in trials)
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
        RUNNING_SWEEPS.pop(str(folder.path), None)
        states = {n: trial_state(folder, n).state for n in trials}
        missing = [n for n, s in states.items() if s != "done"]
        failed = [n for n in missing if states[n] == "failed"] or (missing if errors else [])
        p_done, p_due, p_failed = probe_progress(folder, spec)
        complete = not missing and p_done + len(p_failed) == p_due
        parent = ("FINISHED" if complete and not p_failed
                  else "FAILED" if failed or p_failed else "RUNNING")

        def final(m: MlflowSync) -> None:
            m.sync_all([p.config for p in trials.values()])
            m.set_status(None, parent)

        if not services.close(final):
            console.print(f"[yellow]MLflow missed the end of the sweep; `emerge sync-mlflow "
                          f"{folder.path}` sends it (rows, runs, statuses)[/yellow]")
        else:
            try:
                with mlflow._ledger() as led:
                    exp = led.get("experiment_id")
            except Exception:  # a link is never worth a failed sweep
                exp = None
            if exp is not None:
                console.print(f"MLflow: the runs and their charts at "
                              f"{experiment_url(mlflow.tracking_uri, exp)}")
    if complete and not p_failed:
        probes = f", {p_done} expensive probes" if p_due else ""
        console.print(f"sweep {spec.name} complete: {len(trials)} trials{probes} in "
                      f"{folder.path}")
        return 0
    if failed or p_failed:
        for n in failed:
            why = services.failures.get(n) or failure(folder, n) or "see emerge status"
            console.print(f"[red]failed: {n}: {why}[/red]")
        for job in p_failed:
            console.print(f"[red]probe failed: {job} (see {folder.probe_dir('failed')})[/red]")
        console.print(f"{len(failed)} trial(s) and {len(p_failed)} probe(s) failed; "
                      f"`emerge resume {folder.path}` retries them")
        return 1
    by = f" by {stop.name}" if stop is not None and stop.signum else ""
    console.print(f"stopped{by} with {len(missing)} trial(s) and {p_due - p_done} probe(s) "
                  f"unfinished; `emerge resume {folder.path}` finishes them")
    return exit_code(stop) if stop is not None else 130


def launch(spec_path: Path, *, address: str | None, tracking_uri: str | None,
           dry_run: bool, allow_pending: bool, console: Console) -> int:
    spec = load_spec(spec_path)
    trials = spec.trials()
    if dry_run:
        Console().print(dry_run_table(spec, trials, capacity_in_view(address)))
        return 0
    folder = run_folder_of(spec)
    if not folder.is_sweep() and not folder.is_empty():
        raise UsageError(f"run folder {folder.path} exists and holds no sweep; set run_dir "
                         "in the sweep file to a new folder")
    with driver_lock(folder, f"emerge sweep {spec_path}"):
        return _launch(spec, spec_path, folder, address=address, tracking_uri=tracking_uri,
                       allow_pending=allow_pending, console=console)


def _launch(spec: SweepSpec, spec_path: Path, folder: RunFolder, *, address: str | None,
            tracking_uri: str | None, allow_pending: bool, console: Console) -> int:
    trials = spec.trials()
    spec_text = spec_path.read_text()
    if folder.is_sweep():
        state = sweep_state(folder)
        new = added_trials(frozen_spec(folder), spec)
        launches = state["launches"]
        fresh: set[str] = set()
        if new:
            name = f"launch-{len(launches)}"
            launches = [*launches, {"name": name, "trials": [p.name for p in new]}]
            fresh.add(name)
            console.print(f"the sweep file adds {len(new)} trial(s); running them as {name}")
        else:
            console.print(f"{folder.path} holds this sweep; resuming it")
        uri = _tracking_uri(folder, state, spec.name, tracking_uri, console)
    else:
        launches = [{"name": "launch-0", "trials": [p.name for p in trials]}]
        fresh = {"launch-0"}
        uri = tracking_uri or spec.tracking_uri or default_tracking_uri(folder.path)
    check_store(uri)
    started = connect(address, console)
    try:
        with stop_signals() as stop:
            try:
                preflight(folder.path, trials, allow_pending=allow_pending, pool=spec.probes)
                folder.record_launch(spec_text, uri, launches)
            except KeyboardInterrupt:
                return _stopped_early(console, stop, f"emerge sweep {spec_path}")
            return _run_launches(folder, spec, launches, uri, console, fresh, stop)
    finally:
        if started:
            import ray

            ray.shutdown()


def _stopped_early(console: Console, stop: Stop, again: str) -> int:
    """Ctrl-C, SIGTERM or SIGHUP before any trial started: nothing ran, say how to start."""
    console.print(f"stopped by {stop.name} before any trial started; `{again}` starts it")
    return exit_code(stop)


def _tracking_uri(folder: RunFolder, state: dict[str, Any], sweep: str,
                  tracking_uri: str | None, console: Console, *, reach: bool = False) -> str:
    """The tracking URI of a launched sweep: ``tracking_uri`` if given, else the recorded
    one. A folder that moved since it was recorded keeps its embedded store (the store moved
    with it), whose artifact locations are pointed at the folder's new place."""
    recorded = Path(state["run_dir"]) if state.get("run_dir") else None
    uri = tracking_uri or moved_tracking_uri(state["tracking_uri"], recorded, folder.path)
    check_store(uri, reach=reach)
    if recorded is not None and recorded != folder.path:
        n = MlflowSync(folder.path, uri, sweep).repair_artifact_locations(recorded)
        if n:
            console.print(f"the run folder moved from {recorded}: {n} MLflow artifact "
                          "locations now point into it")
    return uri


def resume(run_dir: Path, *, address: str | None, tracking_uri: str | None,
           allow_pending: bool, console: Console) -> int:
    folder = RunFolder(run_dir)
    sweep_state(folder)  # a sweep's folder, before anything is created in it
    with driver_lock(folder, f"emerge resume {run_dir}"):
        return _resume(folder, address=address, tracking_uri=tracking_uri,
                       allow_pending=allow_pending, console=console)


def _resume(folder: RunFolder, *, address: str | None, tracking_uri: str | None,
            allow_pending: bool, console: Console) -> int:
    state = sweep_state(folder)
    spec = frozen_spec(folder)
    uri = _tracking_uri(folder, state, spec.name, tracking_uri, console)
    p_done, p_due, _ = probe_progress(folder, spec)
    if all(folder.is_complete(p.name) for p in spec.trials()) and p_done == p_due:
        console.print(f"sweep {spec.name} is complete; nothing to resume")
        return 0
    started = connect(address, console)
    try:
        with stop_signals() as stop:
            try:
                preflight(folder.path, spec.trials(), allow_pending=allow_pending,
                          pool=spec.probes)
                folder.record_launch(folder.spec_text(), uri, state["launches"])
            except KeyboardInterrupt:
                return _stopped_early(console, stop, f"emerge resume {folder.path}")
            return _run_launches(folder, spec, state["launches"], uri, console, set(), stop)
    finally:
        if started:
            import ray

            ray.shutdown()


def sync_mlflow(run_dir: Path, *, tracking_uri: str | None,
                console: Console | None = None) -> dict[str, int]:
    """Send MLflow all the run folder holds that it lacks; returns rows sent per trial."""
    folder = RunFolder(run_dir)
    state = sweep_state(folder)
    spec = frozen_spec(folder)
    console = console or Console(stderr=True)
    # the store checked before the ledger (or its lock) is touched
    uri = _tracking_uri(folder, state, spec.name, tracking_uri, console, reach=True)
    try:
        sync = MlflowSync(folder.path, uri, spec.name)
        sync.parent_run(folder.spec_text(), spec.emergence.rule)
        sent = sync.sync_all([p.config for p in spec.trials()])
        if all(folder.is_complete(p.name) for p in spec.trials()):
            sync.set_status(None, "FINISHED")
        elif any(failure(folder, p.name) for p in spec.trials()):
            sync.set_status(None, "FAILED")
    except (UsageError, RunFolderError, UnreadableFile, OSError):
        raise  # the run folder's own problems, each one line already
    except Exception as err:  # MLflow's, the database driver's, the HTTP client's
        raise RuntimeFault(f"MLflow at {uri} failed ({_cause(err)}); the run folder is "
                           "unchanged: run `emerge sync-mlflow` again when it works") from None
    for note in sync.notes:
        console.print(f"[yellow]warning: {note}[/yellow]")
    return sent
