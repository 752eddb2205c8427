"""The queue of expensive-probe jobs, persisted in the run folder as files.

    <run>/probes/queue/<trial>/<step>.<measure>.json      enqueued (by the trial, or reconciled)
    <run>/probes/results/<trial>/<step>.<measure>.json    diagnostics of a finished job
    <run>/probes/failed/<trial>/<step>.<measure>.json     a job that kept raising
    <run>/metrics/probe/<measure>/<trial>/part-<step>-<step>.parquet   its metric rows

A job is *done* when its metric part exists: the part is written last and atomically, so a
job is computed again only if it never finished, and never twice after it did. A trial
enqueues a job when it has saved the weights the job reads, and moves on without waiting.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from emergence_core.store import TrialStore, atomic_path

__all__ = ["ProbeJob", "ProbeQueue"]


@dataclass(frozen=True, order=True)
class ProbeJob:
    trial: str
    step: int
    measure: str

    @property
    def stem(self) -> str:
        return f"{self.step:012d}.{self.measure}"

    @staticmethod
    def parse(trial: str, name: str) -> ProbeJob:
        step, measure, _ = name.split(".")
        return ProbeJob(trial, int(step), measure)


class ProbeQueue:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "probes"

    def _path(self, kind: str, job: ProbeJob) -> Path:
        return self.root / kind / job.trial / f"{job.stem}.json"

    def store(self, job: ProbeJob) -> TrialStore:
        return TrialStore(self.run_dir, job.trial, source=f"probe/{job.measure}")

    def enqueue(self, job: ProbeJob) -> None:
        path = self._path("queue", job)
        if not path.exists():
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps({"enqueued": time.time()}))

    def queued(self) -> list[ProbeJob]:
        root = self.root / "queue"
        if not root.is_dir():
            return []
        return sorted(ProbeJob.parse(d.name, f.name) for d in root.iterdir() if d.is_dir()
                      for f in d.glob("*.json"))

    def is_done(self, job: ProbeJob) -> bool:
        store = self.store(job)
        return any(first <= job.step <= last for first, last, _ in store.parts())

    def done_jobs(self) -> set[ProbeJob]:
        """Every finished job, from one scan of the probe metric folders."""
        root = self.run_dir / "metrics" / "probe"
        done: set[ProbeJob] = set()
        if not root.is_dir():
            return done
        for measure_dir in root.iterdir():
            for trial_dir in (d for d in measure_dir.iterdir() if d.is_dir()):
                for first, last, _ in TrialStore(self.run_dir, trial_dir.name,
                                                 source=f"probe/{measure_dir.name}").parts():
                    done.update(ProbeJob(trial_dir.name, s, measure_dir.name)
                                for s in (first, last))
        return done

    def is_failed(self, job: ProbeJob) -> bool:
        return self._path("failed", job).exists()

    def write_diagnostics(self, job: ProbeJob, diagnostics: dict) -> Path:
        path = self._path("results", job)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(diagnostics))
        return path

    def diagnostics_path(self, job: ProbeJob) -> Path:
        return self._path("results", job)

    def record_failure(self, job: ProbeJob, error: str, attempts: int) -> None:
        with atomic_path(self._path("failed", job)) as tmp:
            tmp.write_text(json.dumps({"error": error, "attempts": attempts, "time": time.time()}))

    def clear_failure(self, job: ProbeJob) -> None:
        """A resume gives failed jobs another chance."""
        self._path("failed", job).unlink(missing_ok=True)

    def failures(self) -> list[ProbeJob]:
        root = self.root / "failed"
        if not root.is_dir():
            return []
        return sorted(ProbeJob.parse(d.name, f.name) for d in root.iterdir() if d.is_dir()
                      for f in d.glob("*.json"))
