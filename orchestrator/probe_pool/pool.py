"""The probe pool: Ray actors that compute the expensive measures on checkpoints.

The dispatcher runs on a thread of the sweep's driver. It reads the persisted queue
(``probe_queue``), hands each job to an idle actor, and watches the calls:

- an actor that dies (killed, node lost) fails its call with ``RayActorError``; Ray restarts
  the actor (``max_restarts=-1``) and the job goes back to the queue: it is retried;
- a job that raises is retried up to ``max_attempts`` times, then recorded as failed;
- a job whose metric part exists is done and never dispatched again, so ``emerge resume``
  computes only what is missing.

Actors hold the resources the sweep gives them (``probes.resources``), placed apart from the
trials': with 0 CPUs (the default) they never wait for a trial's CPU and trials never wait
for theirs; their torch threads are capped (``probes.threads``) so they share the cores.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import ray

from emergence_core.calibrations import read_calibration
from emergence_core.config import TrainConfig
from emergence_core.extensions import Extensions
from emergence_core.plan import TrialPlan
from emergence_core.run_folder import RunFolder
from orchestrator.probe_pool.config import Probes
from orchestrator.probe_pool.job import calibration_for, measure_checkpoint, write_result
from orchestrator.probe_pool.queue import ProbeJob, ProbeQueue

__all__ = ["ProbePool", "ProbeWorker"]


class ProbeWorker:
    """One actor: rebuilds a trial's model and probe batch, loads weights, measures."""

    def __init__(self, run_dir: str, sweep: str, threads: int,
                 extensions: Extensions | None = None) -> None:
        import torch

        torch.set_num_threads(threads)
        (extensions or Extensions()).apply()  # the sweep's plugins, in this actor's process
        self.folder = RunFolder(run_dir)
        self.run_dir = self.folder.path
        self.sweep = sweep
        self._cache: dict[str, Any] = {}

    def _trial(self, cfg: TrainConfig) -> tuple[Any, Any, Any]:
        key = cfg.fingerprint()
        if key not in self._cache:
            import torch

            from emergence_core.expensive import trial_model

            device = torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available()
                                  else "cpu")
            data, model = trial_model(cfg, device)
            self._cache = {key: (data, model, device)}  # one trial at a time: bounded memory
        return self._cache[key]

    def run(self, job: ProbeJob, cfg: TrainConfig, batch_size: int,
            settings: dict[str, Any], attempt: int,
            calibration: dict[str, Any] | None = None) -> float:
        """Compute ``job``; write its diagnostics, then (last, atomically) its rows.

        ``calibration`` ({"step": pilot checkpoint, "fields": ...}): the measure is
        calibrated per trial; the first job of the trial runs the pilot and saves its record,
        every job then uses the record's choice (or writes "not converged" rows)."""
        from emergence_core.expensive import calibrated_settings, make_settings, trial_probe_batch

        t0 = time.perf_counter()
        self._status({"job": [job.trial, job.step, job.measure], "started": time.time()})
        data, model, device = self._trial(cfg)
        batch = trial_probe_batch(data, batch_size, cfg.seed, device)
        s = make_settings(job.measure, settings)
        record = None
        if calibration is not None:
            record, _ = calibration_for(self.folder, job.trial, job.measure, cfg, model, batch,
                                        s, calibration["step"], calibration.get("fields", {}),
                                        device)
            s = calibrated_settings(s, record)
        result = measure_checkpoint(self.folder, job, model, batch, s, record,
                                    note_calibration=True)
        write_result(self.folder, self.sweep, cfg, job, result, attempt)
        self._status({"job": None, "finished": time.time()})
        return time.perf_counter() - t0

    def _status(self, info: dict[str, Any]) -> None:
        """What this actor process is doing (``probes/workers/<pid>.json``)."""
        import os
        import socket

        from emergence_core.atomic import atomic_path

        with atomic_path(self.folder.probe_worker_path(os.getpid())) as tmp:
            tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                       "node_id": ray.get_runtime_context().get_node_id(),
                                       **info}))


def pilot_step(plan: TrialPlan) -> int:
    """The checkpoint a trial's calibration runs on: its last with weights (the trained
    model, whose basin is the sharpest, where a step size too large shows first)."""
    return max(plan.weight_steps)


class Trial(Protocol):
    """What the pool needs of a sweep's trial (``orchestrator.sweep.spec.Trial``)."""

    config: TrainConfig
    plan: TrialPlan


@dataclass
class _Slot:
    actor: Any
    job: ProbeJob | None = None
    ref: Any = None
    started: float = 0.0


@dataclass
class PoolCounts:
    queued: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    busy_s: float = 0.0
    attempts: dict[ProbeJob, int] = field(default_factory=dict)


class ProbePool:
    """Dispatches queued jobs to actors until told to drain; see the module docstring."""

    def __init__(self, folder: RunFolder, sweep: str, probes: Probes,
                 trials: dict[str, Trial], extensions: Extensions | None = None,
                 on_done: Callable[[ProbeJob], None] | None = None,
                 on_change: Callable[[PoolCounts], None] | None = None) -> None:
        self.folder = folder
        self.run_dir = folder.path
        self.sweep = sweep
        self.probes = probes
        self.trials = trials
        self.extensions = extensions or Extensions()
        self.queue = ProbeQueue(folder)
        self.on_done = on_done or (lambda job: None)
        self.on_change = on_change or (lambda counts: None)
        self.counts = PoolCounts()
        self._stop = threading.Event()
        self._drain = threading.Event()
        self._error: BaseException | None = None
        self._slots: list[_Slot] = []
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.probes.measures)

    def reconcile(self, retry_failed: bool = False) -> None:
        """Enqueue the due jobs whose weights exist (a trial may have died between saving
        weights and enqueueing); with ``retry_failed``, give failed jobs another chance."""
        for name, trial in self.trials.items():
            have = set(self.folder.weight_steps(name))
            for job in trial.plan.jobs:
                if job.step in have:
                    self.queue.enqueue(job)
        if retry_failed:
            for job in self.queue.failures():
                self.queue.clear_failure(job)

    def start(self) -> None:
        if not self.enabled:
            return
        self.folder.clear_probe_workers()  # an earlier driver's actors ended with it
        res = self.probes.resources
        actor_cls = ray.remote(ProbeWorker).options(
            num_cpus=res.cpus, num_gpus=res.gpus, resources=dict(res.custom) or None,
            max_restarts=-1, max_task_retries=0, name=None)
        self._slots = [_Slot(actor_cls.remote(str(self.run_dir), self.sweep,
                                              self.probes.threads, self.extensions))
                       for _ in range(self.probes.actors)]
        self._thread = threading.Thread(target=self._loop, name="emerge-probe-pool",
                                        daemon=True)
        self._thread.start()

    def finish(self, timeout: float | None = None) -> None:
        """Work through everything queued (the trials are done), then stop the actors."""
        if self._thread is None:
            return
        self.reconcile()
        self._drain.set()
        self._thread.join(timeout)
        self.close()
        if not self.probes.keep_weights:
            for name in self.trials:  # the trials are done: no checkpoint is still to come
                for step in self.folder.weight_steps(name):
                    self._retire_weights(name, step)

    def close(self) -> None:
        """Stop now (Ctrl-C): jobs in flight are redone on the next resume."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for slot in self._slots:
            ray.kill(slot.actor)
        self._slots = []
        if self._error is not None:
            raise self._error

    # -- the dispatcher thread ---------------------------------------------------------------

    def _loop(self) -> None:
        try:
            last_scan = 0.0
            pending: list[ProbeJob] = []
            while not self._stop.is_set():
                if time.monotonic() - last_scan > 1.0:
                    pending = self._pending()
                    last_scan = time.monotonic()
                self._dispatch(pending)
                self._collect()
                busy = any(s.job is not None for s in self._slots)
                if self._drain.is_set() and not busy and not self._pending():
                    return
                if not busy:
                    time.sleep(0.5)
        except BaseException as e:  # surfaced by close(): the driver must not hang silently
            self._error = e

    def _pending(self) -> list[ProbeJob]:
        done = self.queue.done_jobs()
        running = {s.job for s in self._slots if s.job is not None}
        queued = self.queue.queued()
        failed = set(self.queue.failures())
        todo = [j for j in queued if j not in done and j not in running and j not in failed]
        c = self.counts
        c.queued, c.running = len(todo), len(running)
        c.done = sum(1 for j in queued if j in done)
        c.failed = len(failed)
        self.on_change(c)
        return todo

    def _calibration(self, job: ProbeJob) -> tuple[bool, dict[str, Any] | None]:
        """(may run now, calibration argument) of a job: a calibrated measure's jobs wait
        for the pilot's checkpoint, and only one of a trial's runs until its pilot is saved."""
        spec = self.probes.measures[job.measure]
        if not spec.calibrate:
            return True, None
        plan = self.trials[job.trial].plan
        arg = {"step": pilot_step(plan), "fields": dict(spec.calibration)}
        if read_calibration(self.folder, job.trial, job.measure) is not None:
            return True, arg
        busy = any(s.job is not None and (s.job.trial, s.job.measure)
                   == (job.trial, job.measure) for s in self._slots)
        ready = self.folder.weights_path(job.trial, arg["step"]).exists()
        return ready and not busy, arg

    def _dispatch(self, pending: list[ProbeJob]) -> None:
        for slot in self._slots:
            if slot.job is not None:
                continue
            for job in list(pending):
                if job.trial not in self.trials:
                    pending.remove(job)
                    continue  # a trial of another launch's spec: not ours to run
                may_run, calibration = self._calibration(job)
                if not may_run:
                    continue  # stays pending: its trial's pilot is not ready or is running
                pending.remove(job)
                spec = self.probes.measures[job.measure]
                from emergence_core.expensive import get_measure

                attempt = self.counts.attempts.get(job, 0)
                slot.job, slot.started = job, time.monotonic()
                slot.ref = slot.actor.run.remote(
                    job, self.trials[job.trial].config,
                    spec.batch_size or get_measure(job.measure).batch_size, spec.settings,
                    attempt, calibration)
                break

    def _collect(self) -> None:
        refs = [s.ref for s in self._slots if s.ref is not None]
        if not refs:
            return
        ready, _ = ray.wait(refs, num_returns=1, timeout=0.5)
        for slot in self._slots:
            if slot.ref is None or slot.ref not in ready:
                continue
            job, slot.job, ref, slot.ref = slot.job, None, slot.ref, None
            self.counts.busy_s += time.monotonic() - slot.started
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError:
                self.counts.retried += 1  # the actor died: Ray restarts it, the job reruns
                continue
            except ray.exceptions.RayTaskError as e:
                n = self.counts.attempts[job] = self.counts.attempts.get(job, 0) + 1
                if n >= self.probes.max_attempts:
                    text = str(e).strip().splitlines()[-1][:300]
                    self.queue.record_failure(job, text, n)
                continue
            if not self.probes.keep_weights:
                self._retire_weights(job.trial, job.step)
            self.on_done(job)

    def _retire_weights(self, trial: str, step: int) -> None:
        """Delete a checkpoint's weights once all its jobs are done (keep_weights: false):
        those of its plan and those its trial added (adaptive density), as queued."""
        at_step = set(self.trials[trial].plan.jobs_at(step)) | set(
            self.folder.queued_at(trial, step))
        if all(self.queue.is_done(j) for j in at_step):
            self.folder.weights_path(trial, step).unlink(missing_ok=True)
