"""The queue of expensive-probe jobs, persisted in the run folder as files.

A job is enqueued (by the trial, or reconciled by the driver), may leave diagnostics and,
after ``max_attempts`` failures, a failure record; where these lie is the run folder's to
say (``emergence_core.run_folder``). A job is *done* when its metric part exists: the part is
written last and atomically, so a job is computed again only if it never finished, and never
twice after it did. A trial enqueues a job when it has saved the weights the job reads, and
moves on without waiting.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from emergence_core.atomic import atomic_path
from emergence_core.run_folder import ProbeJob, RunFolder
from emergence_core.store import TrialStore

__all__ = ["ProbeJob", "ProbeQueue"]


class ProbeQueue:
    def __init__(self, run_dir: Path | RunFolder) -> None:
        self.folder = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
        self.run_dir = self.folder.path

    def store(self, job: ProbeJob) -> TrialStore:
        return TrialStore(self.folder, job.trial, source=RunFolder.probe_source(job.measure))

    def enqueue(self, job: ProbeJob) -> None:
        path = self.folder.probe_path("queue", job)
        if not path.exists():
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps({"enqueued": time.time()}))

    def queued(self) -> list[ProbeJob]:
        return self.folder.probe_jobs("queue")

    def is_done(self, job: ProbeJob) -> bool:
        return any(first <= job.step <= last for first, last, _ in self.store(job).parts())

    def done_jobs(self) -> set[ProbeJob]:
        """Every finished job, from one scan of the probe metric folders."""
        root = self.folder.probe_metrics_root
        done: set[ProbeJob] = set()
        if not root.is_dir():
            return done
        for measure_dir in root.iterdir():
            for trial_dir in (d for d in measure_dir.iterdir() if d.is_dir()):
                store = TrialStore(self.folder, trial_dir.name,
                                   source=RunFolder.probe_source(measure_dir.name))
                for first, last, _ in store.parts():
                    done.update(ProbeJob(trial_dir.name, s, measure_dir.name)
                                for s in (first, last))
        return done

    def write_diagnostics(self, job: ProbeJob, diagnostics: dict) -> Path:
        path = self.folder.probe_path("results", job)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(diagnostics))
        return path

    def diagnostics_path(self, job: ProbeJob) -> Path:
        return self.folder.probe_path("results", job)

    def record_failure(self, job: ProbeJob, error: str, attempts: int) -> None:
        with atomic_path(self.folder.probe_path("failed", job)) as tmp:
            tmp.write_text(json.dumps({"error": error, "attempts": attempts, "time": time.time()}))

    def clear_failure(self, job: ProbeJob) -> None:
        """A resume gives failed jobs another chance."""
        self.folder.probe_path("failed", job).unlink(missing_ok=True)

    def failures(self) -> list[ProbeJob]:
        return self.folder.probe_jobs("failed")
