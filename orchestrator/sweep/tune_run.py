"""Ray Tune, in one module: its API moves, so nothing else in emerge imports it.

A trial is ``run_trial`` from ``emergence_core`` inside a Tune function trainable. Its full
training state lives in Tune's checkpoints (``<run>/tune/<launch>/<trial>/checkpoint_*``), so a
failed trial is retried from its last checkpoint and ``Tuner.restore`` resumes a sweep;
metric rows go to the run folder's Parquet parts, committed before each checkpoint is
reported (see ``emergence_core.store``), so no row is lost or written twice.

What a trial reports and what the driver does with it are ``trial_events``' (no Tune there);
this module only carries them: ``tune.report`` in the worker, ``SweepCallback`` in the driver.

Pitfalls (checked with Ray 2.60): configs come from ``ray.tune`` (``ray.train.RunConfig``
crashes ``fit()``); ``fit()`` returns normally when trials fail, so callers check the result
grid; ``storage_path`` must be absolute; the RunConfig, callbacks included, is pickled into
``tuner.pkl`` and comes back on restore, so callbacks must pickle.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.trainable import wrap_function

from emergence_core.emergence_rule import EmergenceRule
from emergence_core.errors import first_line
from emergence_core.run_folder import ProbeJob, RunFolder, RunFolderError
from orchestrator.sweep.spec import SweepSpec, Trial
from orchestrator.sweep.trial_events import TrialEvents, final_metrics, trial_metrics

__all__ = ["SweepCallback", "build_tuner", "can_restore", "configure", "heal_launch",
           "restore_tuner"]


def configure() -> None:
    """Tune's settings for a sweep driver; called before a Tuner is built, never at import.

    Snapshot the experiment state often: after a hard-killed driver, trials resume from what
    the last snapshot recorded (Tune's default is 10 s or more).
    """
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")


class _TuneState:
    """A trial's training state kept in Tune's checkpoints (runner.StateStore).

    A damaged latest checkpoint (truncated by a full disk, say) falls back to the one Tune
    kept before it (``num_to_keep=2``) with a note: the steps after it are trained again and
    give the same rows. With no readable checkpoint the trial fails with one line."""

    def __init__(self, folder: RunFolder, trial: str) -> None:
        self.folder, self.trial = folder, trial
        self._pending: str | None = None
        self._reported: list[str] = []
        self.notes: list[str] = []

    def load(self) -> dict | None:
        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return self._kept()
        with ckpt.as_directory() as d:
            latest = Path(d) / RunFolder.STATE
            state, problem = _read_state(latest)
            if problem is None:
                return state
        for older in _earlier_checkpoints(Path(ckpt.path)):
            state, _ = _read_state(older / RunFolder.STATE)
            if state is not None:
                self.notes.append(f"training state {latest} {problem}; resumed from Tune's "
                                  f"previous checkpoint {older.name} (step {state.get('step')}): "
                                  "the steps after it are trained again, giving the same rows")
                return state
        raise RunFolderError(f"training state {latest} {problem} and Tune kept no readable "
                             "earlier checkpoint; start the trial again in a new run folder "
                             "(its rows so far stay in this one)")

    def _kept(self) -> dict | None:
        """With no checkpoint from Tune: the newest readable one the run folder keeps for the
        trial from a record of its launch that was set aside (see ``heal_launch``)."""
        kept = sorted(self.folder.tune_dir.glob(f"*/{self.trial}/checkpoint_*"),
                      key=lambda p: p.stat().st_mtime, reverse=True)
        for path in (p / RunFolder.STATE for p in kept):
            state, _ = _read_state(path)
            if state is not None:
                self.notes.append(f"Tune has no checkpoint of the trial; resumed from {path} "
                                  f"(step {state.get('step')}), kept in the run folder")
                return state
        return None

    def save(self, state: dict) -> None:
        import torch

        d = tempfile.mkdtemp(prefix="emerge-state-")
        torch.save(state, Path(d) / RunFolder.STATE)
        if self._pending is not None:  # two commits without a report between: keep the last
            shutil.rmtree(self._pending, ignore_errors=True)
        self._pending = d

    def take(self) -> tune.Checkpoint | None:
        """The checkpoint to attach to the next report (Tune persists it during the call)."""
        for d in self._reported:  # already copied into Tune's storage
            shutil.rmtree(d, ignore_errors=True)
        self._reported.clear()
        if self._pending is None:
            return None
        d, self._pending = self._pending, None
        self._reported.append(d)
        return tune.Checkpoint.from_directory(d)


def _read_state(path: Path) -> tuple[dict | None, str | None]:
    """A saved training state, or None and why it cannot be used."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True), None
    except Exception as err:  # truncated, zeroed, missing, not a torch file at all
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return None, f"cannot be read ({first})"


def _earlier_checkpoints(latest: Path) -> list[Path]:
    """The checkpoints Tune kept before ``latest`` in the trial's folder, newest first (local
    storage: the run folder is on a local or shared file system)."""
    if not latest.is_dir():
        return []
    return sorted((p for p in latest.parent.glob("checkpoint_*")
                   if p.is_dir() and p.name < latest.name), reverse=True)


def _trainable(config: dict[str, Any]) -> None:
    """One trial, in a Ray worker: the typed ``Trial`` validated once by the driver."""
    import torch

    from emergence_core.trial.runner import TrialDiverged, TrialHooks, run_trial

    trial: Trial = config["trials"].get(config["trial"]["name"])
    config["extensions"].apply()  # the sweep's plugins and declared scales, in this process
    folder = RunFolder(config["run_dir"])
    _record_worker(folder, trial.name)
    torch.set_num_threads(max(1, int(trial.resources.cpus)))
    cfg = trial.config  # device "auto": Ray hides unowned GPUs
    state = _TuneState(folder, trial.name)
    notes: list[str] = []  # shown by the driver with the trial's next result

    def on_probe(report: Any) -> None:
        metrics = trial_metrics(report)
        if notes:
            metrics["notes"] = "\n".join(notes)
            notes.clear()
        tune.report(metrics, checkpoint=state.take())

    try:
        outcome = run_trial(cfg, folder.path, sweep=config["sweep"],
                            hooks=TrialHooks(on_probe=on_probe, on_note=notes.append,
                                             on_jobs=_enqueuer(folder, trial)),
                            state_store=state, plan=trial.plan,
                            rule=EmergenceRule(config["threshold"], config["persistence"]))
    except TrialDiverged as e:
        # Deterministic: a retry from the same checkpoint diverges again, so the trial ends
        # here (Tune retries only what raises); the run folder records it as failed.
        tune.report({"done": False, "committed": True, "diverged": str(e)},
                    checkpoint=state.take())
        state.take()
        return
    tune.report(final_metrics(outcome, cfg.steps), checkpoint=state.take())
    state.take()  # clean the last temporary directory


def _enqueuer(folder: RunFolder, trial: Trial) -> Any:
    """The trial's side of the probe pool: enqueue the jobs it hands out, move on."""
    from orchestrator.probe_pool.queue import ProbeQueue

    if not trial.plan.jobs:
        return None
    queue = ProbeQueue(folder)

    def enqueue(jobs: list[ProbeJob]) -> None:
        for job in jobs:
            queue.enqueue(job)

    return enqueue


def _record_worker(folder: RunFolder, name: str) -> None:
    """Where the trial runs now (``emerge status`` shows it; tests use the pid)."""
    import socket
    import time

    import ray

    folder.record_worker(name, {"pid": os.getpid(), "host": socket.gethostname(),
                                "node_id": ray.get_runtime_context().get_node_id(),
                                "started": time.time()})


def _resources(config: dict[str, Any]) -> tune.PlacementGroupFactory:
    res = config["trial"]
    bundle = {"CPU": float(res["cpus"]), **res["custom"]}
    if res["gpus"]:
        bundle["GPU"] = float(res["gpus"])
    return tune.PlacementGroupFactory([bundle])


def _trial_name(trial: Any) -> str:
    return trial.config["trial"]["name"]


class TrialTable:
    """The launch's typed trials, by name. Tune keeps an object like this in Ray's object
    store (its driver sees a placeholder) and hands each worker the object itself, so the
    configs validated once by the driver reach the trials as they are."""

    def __init__(self, trials: Sequence[Trial]) -> None:
        self.trials = {t.name: t for t in trials}

    def get(self, name: str) -> Trial:
        return self.trials[name]


class EmergeTrial(wrap_function(_trainable)):
    """A trial's Ray actor. Its repr, which the Ray dashboard shows, is the trial's name
    (TASK-SCALE-SEED) rather than the wrapped function's."""

    def __repr__(self) -> str:
        info = getattr(self, "_trial_info", None)
        return info.trial_name if info is not None else "emerge-trial"


TRAINABLE = tune.with_resources(EmergeTrial, _resources)


def build_tuner(spec: SweepSpec, trials: Sequence[Trial], folder: RunFolder, launch: str,
                callbacks: list[tune.Callback]) -> tune.Tuner:
    """A Tuner for ``trials`` as the experiment of launch ``launch`` in the run folder.

    The grid is each trial's name and resources (what Tune's driver needs); the typed trials
    travel once, as a ``TrialTable``, and a worker validates nothing again.
    """
    configure()
    return tune.Tuner(
        TRAINABLE,
        param_space=_param_space(spec, trials, folder),
        tune_config=tune.TuneConfig(
            max_concurrent_trials=spec.max_concurrent_trials,
            # A fresh worker per trial by default: its repr (the trial's name) stays right in
            # the dashboard; reuse saves ~2 s per trial for grids of very short ones.
            reuse_actors=spec.reuse_workers,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=launch,
            storage_path=str(folder.tune_dir),
            failure_config=tune.FailureConfig(max_failures=spec.retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
            verbose=0,
        ),
    )


def _param_space(spec: SweepSpec, trials: Sequence[Trial], folder: RunFolder) -> dict:
    grid = [{"name": t.name, "cpus": t.resources.cpus, "gpus": t.resources.gpus,
             "custom": dict(t.resources.custom)} for t in trials]
    return {
        "trial": tune.grid_search(grid),
        "trials": TrialTable(trials),
        "run_dir": str(folder.path),
        "sweep": spec.name,
        "extensions": spec.extensions,
        "threshold": spec.emergence.threshold,
        "persistence": spec.emergence.persistence,
    }


def restore_tuner(folder: RunFolder, launch: str, spec: SweepSpec,
                  trials: Sequence[Trial]) -> tune.Tuner:
    """Resume a launch's experiment: unfinished and errored trials continue from their
    last checkpoints; finished ones are kept.

    The param space is given again, as at launch: Tune keeps the ``TrialTable`` in Ray's
    object store, which a new Ray session no longer holds, so trials that had not started
    before the stop were handed a placeholder and failed at once
    (``'tuple' object has no attribute 'get'``, 4 such trials on resuming the two-scale
    sweep) while those already running resumed."""
    configure()
    return tune.Tuner.restore(str(folder.launch_dir(launch)), trainable=TRAINABLE,
                              resume_unfinished=True, resume_errored=True,
                              param_space=_param_space(spec, trials, folder))


def can_restore(folder: RunFolder, launch: str) -> bool:
    return tune.Tuner.can_restore(str(folder.launch_dir(launch)))


def fit(tuner: tune.Tuner) -> tuple[int | None, bool]:
    """``tuner.fit()``; returns the number of errored trials (None when Tune could not read
    its own record of them back, a full disk say: the run folder then says which trials are
    unfinished) and whether Ctrl-C stopped it.

    Tune swaps in its own SIGINT handler for ``fit()`` (it stops the trials and saves the
    experiment) and puts the previous one back only when a Ctrl-C arrives. Left in place
    after ``fit()`` it would swallow the next Ctrl-C silently, so the previous handler is
    restored here; and a Ctrl-C that reached Tune as its last trials were finishing still
    counts as one, though ``fit()`` returns just as for a completed run.
    """
    before = signal.getsignal(signal.SIGINT)
    tune_catches = (threading.current_thread() is threading.main_thread()
                    and not int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0")))
    errors: int | None = None
    try:
        errors = tuner.fit().num_errors
    except (pickle.UnpicklingError, EOFError, OSError, ValueError):
        pass  # the results grid reads each error back from storage; the board showed them
    finally:
        after = signal.getsignal(signal.SIGINT)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, before)
    return errors, tune_catches and after is before


def heal_launch(folder: RunFolder, launch: str) -> str | None:
    """Check Tune's record of a launch before restoring it. A damaged one (cut by a full
    disk: Tune's experiment state and its trials' error records live in the run folder) is
    set aside whole, its trials' checkpoints with it, so the launch starts afresh and each
    unfinished trial continues from its newest readable checkpoint (``_TuneState._kept``).
    Returns a warning to show, or None."""
    d = folder.launch_dir(launch)
    problem = None
    for path in sorted(d.glob("experiment_state-*.json"))[-1:]:
        try:
            json.loads(path.read_text())
        except (OSError, ValueError) as err:
            problem = problem or f"{path.name} cannot be read ({first_line(err)})"
    # (the search's state is a pickle despite its .json name)
    for path in [d / "tuner.pkl", *sorted(d.glob("basic-variant-state-*.json"))[-1:],
                 *sorted(d.glob("*/error.pkl"))]:
        # not unpickled here (tuner.pkl holds object references of the launch that made it):
        # a pickle cut short lacks its final STOP opcode
        if path.exists() and not path.read_bytes().endswith(pickle.STOP):
            problem = problem or f"{path.relative_to(d)} is truncated"
    if problem is None:
        return None
    n = 0
    while (aside := d.with_name(f"{d.name}.damaged-{n}")).exists():
        n += 1
    d.replace(aside)
    return (f"Tune's record of {launch} is damaged ({problem}); kept as {aside.name}, and its "
            "unfinished trials continue from their newest readable checkpoints")


# -- the driver side ---------------------------------------------------------------------------

class SweepCallback(tune.Callback):
    """Tune's callback hooks, handed to the driver's ``TrialEvents`` (``trial_events``).

    Pickled into ``tuner.pkl`` with its ``run_dir`` and ``configs`` only, as before the
    reactions moved out, so a launch recorded then restores."""

    def __init__(self, run_dir: Path, configs: dict[str, Any]) -> None:
        self.run_dir = str(run_dir)
        self.configs = configs  # trial name -> TrainConfig, validated once by the driver

    @property
    def _events(self) -> TrialEvents:
        return TrialEvents(self.run_dir, self.configs)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._events.started(_trial_name(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self._events.reported(_trial_name(trial), result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._events.completed(_trial_name(trial), trial.last_result)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._events.retrying(_trial_name(trial), _error_text(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._events.failed(_trial_name(trial), _error_text(trial))

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._events.step_end()


def _error_text(trial: Any) -> str:
    """The last line of a trial's error: from Tune's storage, else from the driver's own copy
    (storage in the run folder may be the very thing that failed, a full disk say)."""
    err = trial.get_error()
    if not str(err or "").strip() and trial.error_file and os.path.exists(trial.error_file):
        err = Path(trial.error_file).read_text()  # storage's copy is missing or truncated
    text = str(err) if err is not None else "unknown error"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"
