"""The run folder, the source of truth of a sweep: every file's name, and its records' writers.

This module is the one place that spells the layout below; everyone else (the trial runner,
the sweep driver, the Tune trainable, the probe pool, the MLflow sync, ``analyze``,
``pythia``) asks it. It imports no Ray, MLflow or CLI code, so any reader can use it.

```
<run>/
  spec.yaml                          the sweep file as launched (a Pythia sweep's, likewise)
  sweep.json                         where it was launched, the tracking URI, the launches
  run.json                           what an `emerge train` folder holds (instead of sweep.json)
  tune/<launch>/                     each launch's Ray Tune experiment (restorable)
  checkpoints/<trial>/state.pt       latest full training state (outside Tune)
  checkpoints/<trial>/weights/step-<step>.safetensors   weights for the expensive probes
  checkpoints/<trial>/COMPLETE.json  the trial finished: step, attempt, events, environment
  metrics/<source>/<trial>/part-<first>-<last>.parquet  the metrics table (source: trial,
                                     pythia, probe/<measure>)
  events/<trial>.parquet             emergence events, one row per level
  alerts/<trial>/part-<first>-<last>.parquet    live alerts, as they fire
  status/<trial>.json                a trial that failed for good, and why
  status/<trial>.worker.json         the process a trial runs in now
  status/pythia-failures.json        (model, revision) tasks that failed
  probes/queue/<trial>/<step>.<measure>.json     an expensive job, enqueued
  probes/results/<trial>/<step>.<measure>.json   its diagnostics
  probes/failed/<trial>/<step>.<measure>.json    a job that kept raising
  probes/workers/<pid>.json          what a probe actor is doing
  probes/calibration/<trial>/<measure>.json  a pilot's grid and the setting it chose
  mlflow/ledger.json (.lock)         trial -> MLflow run id, and rows already sent
  mlflow/artifacts/                  the embedded store's artifacts
  mlflow.db                          the embedded tracking store (no tracking URI given)
  report/                            what `emerge analyze` writes
  driver.lock                        held by the one driver running the folder's work
```

Beside it, each with one job over these names: a trial's *plan* (``emergence_core.plan``: its
probe steps, the steps whose weights are kept, the expensive jobs due), the driver's lock
(``emergence_core.folder_lock``), the calibration records (``emergence_core.calibrations``),
the trial's data files (``emergence_core.store``) and what the JSON records say, read and
checked: a trial's state, the folder's description (``emergence_core.folder_records``).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emergence_core.atomic import atomic_path
from emergence_core.errors import warn_once
from emergence_core.readers import read_text

__all__ = [
    "ProbeJob",
    "RunFolder",
    "RunFolderError",
    "parse_part",
    "part_name",
    "parts_in",
]


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked; the message is one line naming it."""


# -- metric parts --------------------------------------------------------------------------

_PART = re.compile(r"^part-(\d+)-(\d+)\.parquet$")


def part_name(first: int, last: int) -> str:
    return f"part-{first:012d}-{last:012d}.parquet"


def parse_part(name: str) -> tuple[int, int] | None:
    """(first step, last step) of a metric part's file name; None for other files."""
    m = _PART.match(name)
    return (int(m[1]), int(m[2])) if m else None


def parts_in(directory: Path) -> list[tuple[int, int, Path]]:
    """(first step, last step, path) of each part in ``directory``, in step order."""
    if not directory.is_dir():
        return []
    out = []
    for p in directory.iterdir():
        steps = parse_part(p.name)
        if steps is not None:
            out.append((*steps, p))
    return sorted(out)


# -- expensive jobs ----------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class ProbeJob:
    """One expensive measure of one trial at one checkpoint step."""

    trial: str
    step: int
    measure: str

    @property
    def stem(self) -> str:
        return f"{self.step:012d}.{self.measure}"

    @staticmethod
    def parse(trial: str, name: str) -> ProbeJob:
        """From ``<step>.<measure>.json``; ValueError for any other name."""
        step, measure, _ = name.split(".")
        if not measure:
            raise ValueError(f"no measure in {name!r}")
        return ProbeJob(trial, int(step), measure)


class RunFolder:
    """One run folder: its paths (see the module docstring) and its records' writers (what
    the records say is read by ``emergence_core.folder_records``)."""

    SPEC = "spec.yaml"
    SWEEP = "sweep.json"
    RUN = "run.json"
    STATE = "state.pt"  # a trial's full training state, here or in a Tune checkpoint

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().absolute()

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- the sweep as launched ---------------------------------------------------------------

    @property
    def spec_path(self) -> Path:
        return self.path / self.SPEC

    @property
    def sweep_path(self) -> Path:
        return self.path / self.SWEEP

    @property
    def run_record_path(self) -> Path:
        return self.path / self.RUN

    @property
    def tune_dir(self) -> Path:
        return self.path / "tune"

    def launch_dir(self, launch: str) -> Path:
        return self.tune_dir / launch

    def is_sweep(self) -> bool:
        return self.sweep_path.exists()

    def spec_text(self) -> str:
        return read_text(self.spec_path, "restore the sweep file as launched (it is the "
                         "sweep's record of its grid)", what="sweep file")

    def record_launch(self, spec_text: str, tracking_uri: str,
                      launches: list[dict[str, Any]]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.spec_path) as tmp:
            tmp.write_text(spec_text)
        with atomic_path(self.sweep_path) as tmp:
            tmp.write_text(json.dumps({"run_dir": str(self.path), "tracking_uri": tracking_uri,
                                       "launches": launches}, indent=1))

    def write_spec(self, spec_text: str) -> None:
        with atomic_path(self.spec_path) as tmp:
            tmp.write_text(spec_text)

    def write_run_record(self, record: dict[str, Any]) -> None:
        with atomic_path(self.run_record_path) as tmp:
            tmp.write_text(json.dumps(record, indent=2))

    # -- a trial's files ---------------------------------------------------------------------

    @property
    def metrics_root(self) -> Path:
        return self.path / "metrics"

    def metrics_dir(self, source: str, trial: str) -> Path:
        return self.metrics_root / source / trial

    def source_dir(self, source: str) -> Path:
        return self.metrics_root / source

    @staticmethod
    def probe_source(measure: str) -> str:
        return f"probe/{measure}"

    @property
    def probe_metrics_root(self) -> Path:
        return self.metrics_root / "probe"

    def checkpoint_dir(self, trial: str) -> Path:
        return self.path / "checkpoints" / trial

    def state_path(self, trial: str) -> Path:
        return self.checkpoint_dir(trial) / self.STATE

    def previous_state_path(self, trial: str) -> Path:
        """The state before the latest, kept so that a damaged latest one costs one commit."""
        return self.checkpoint_dir(trial) / f"previous-{self.STATE}"

    def weights_dir(self, trial: str) -> Path:
        return self.checkpoint_dir(trial) / "weights"

    def weights_path(self, trial: str, step: int) -> Path:
        return self.weights_dir(trial) / f"step-{step:012d}.safetensors"

    def weight_steps(self, trial: str) -> list[int]:
        d = self.weights_dir(trial)
        if not d.is_dir():
            return []
        return sorted(int(p.stem.split("-")[1]) for p in d.glob("step-*.safetensors"))

    def complete_path(self, trial: str) -> Path:
        return self.checkpoint_dir(trial) / "COMPLETE.json"

    def mark_complete(self, trial: str, record: dict[str, Any]) -> None:
        with atomic_path(self.complete_path(trial)) as tmp:
            tmp.write_text(json.dumps(record))

    def is_complete(self, trial: str) -> bool:
        return self.complete_path(trial).exists()

    @property
    def events_dir(self) -> Path:
        return self.path / "events"

    def events_path(self, trial: str) -> Path:
        return self.events_dir / f"{trial}.parquet"

    @property
    def alerts_dir(self) -> Path:
        return self.path / "alerts"

    def trial_alerts_dir(self, trial: str) -> Path:
        """A trial's live alerts, one part per probe step that raised any."""
        return self.alerts_dir / trial

    # -- status ------------------------------------------------------------------------------

    @property
    def status_dir(self) -> Path:
        return self.path / "status"

    def failure_path(self, trial: str) -> Path:
        return self.status_dir / f"{trial}.json"

    def record_failure(self, trial: str, error: str, kind: str = "error",
                       **details: Any) -> None:
        """The trial failed for good: ``kind`` is ``error`` (an exception that kept coming
        back) or ``diverged`` (a non-finite loss or weights; ``details`` say where)."""
        with atomic_path(self.failure_path(trial)) as tmp:
            tmp.write_text(json.dumps({"state": "failed", "kind": kind, "error": error,
                                       "time": time.time(), **details}))

    def clear_failure(self, trial: str) -> None:
        self.failure_path(trial).unlink(missing_ok=True)

    def worker_path(self, trial: str) -> Path:
        return self.status_dir / f"{trial}.worker.json"

    def record_worker(self, trial: str, info: dict[str, Any]) -> None:
        with atomic_path(self.worker_path(trial)) as tmp:
            tmp.write_text(json.dumps(info))

    @property
    def pythia_failures_path(self) -> Path:
        return self.status_dir / "pythia-failures.json"

    # -- the expensive probes ----------------------------------------------------------------

    @property
    def probes_dir(self) -> Path:
        return self.path / "probes"

    def probe_dir(self, kind: str) -> Path:
        """``queue``, ``results`` or ``failed``."""
        return self.probes_dir / kind

    def probe_path(self, kind: str, job: ProbeJob) -> Path:
        return self.probe_dir(kind) / job.trial / f"{job.stem}.json"

    def probe_jobs(self, kind: str) -> list[ProbeJob]:
        """The jobs filed under ``kind``; a file whose name is not a job's is skipped, with a
        warning (once per file)."""
        root = self.probe_dir(kind)
        if not root.is_dir():
            return []
        jobs = []
        for d in (d for d in root.iterdir() if d.is_dir()):
            for f in d.glob("*.json"):
                try:
                    jobs.append(ProbeJob.parse(d.name, f.name))
                except ValueError:
                    warn_once(f, f"skipping {f}: not a probe job's file (STEP.MEASURE.json); "
                                  "remove it")
        return sorted(jobs)

    def queued_at(self, trial: str, step: int) -> list[ProbeJob]:
        """A trial's jobs enqueued at one checkpoint step."""
        d = self.probe_dir("queue") / trial
        return sorted(ProbeJob.parse(trial, f.name) for f in d.glob(f"{step:012d}.*.json"))

    def calibration_path(self, trial: str, measure: str) -> Path:
        """A trial's calibration of a measure: its pilot's grid and the choice it fixed
        (``emergence_core.calibrations`` reads and writes them)."""
        return self.probe_dir("calibration") / trial / f"{measure}.json"

    @property
    def calibration_dir(self) -> Path:
        return self.probe_dir("calibration")

    def probe_worker_path(self, pid: int) -> Path:
        return self.probes_dir / "workers" / f"{pid}.json"

    def clear_probe_workers(self) -> None:
        """Forget every probe actor's status file. The pool calls it as it starts: one driver
        holds a run folder at a time and its actors end with it, so a file left there is an
        earlier driver's actor's (a file of a lost node's actor is one no liveness check on
        this host can see through). The files of a finished sweep stay, each saying where its
        actor worked last."""
        root = self.probe_worker_path(0).parent
        for f in root.glob("*.json") if root.is_dir() else ():
            f.unlink(missing_ok=True)

    # -- tracking and report -----------------------------------------------------------------

    @property
    def mlflow_dir(self) -> Path:
        return self.path / "mlflow"

    @property
    def ledger_path(self) -> Path:
        return self.mlflow_dir / "ledger.json"

    @property
    def ledger_lock_path(self) -> Path:
        return self.mlflow_dir / "ledger.lock"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.mlflow_dir / "artifacts"

    @property
    def mlflow_db(self) -> Path:
        return self.path / "mlflow.db"

    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    @property
    def lock_path(self) -> Path:
        """Held by the one driver running the folder's work (``emergence_core.folder_lock``)."""
        return self.path / "driver.lock"

    def is_empty(self) -> bool:
        """Nothing in the folder but (perhaps) its driver lock; RunFolderError for a file."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"run folder {self.path} is a file; set run_dir to a folder")
        return not self.path.exists() or all(
            p == self.lock_path for p in self.path.iterdir())

    # -- what kind of folder -----------------------------------------------------------------

    def markers(self) -> list[str]:
        """What makes the folder a run folder (``folder_records.describe`` reads them):
        sweep.json or run.json; else metric parts or event tables that emerge wrote (a folder
        that merely has a ``checkpoints/`` or ``metrics/`` of its own, a code folder say, is
        not one); a Pythia sweep's spec with its status; or, alone, the report of an empty
        folder analysed once."""
        marks = [m for m in (self.SWEEP, self.RUN) if (self.path / m).is_file()]
        if self.metrics_root.is_dir() and any(
                parse_part(p.name) for p in self.metrics_root.rglob("part-*.parquet")):
            marks.append("metrics")
        if self.events_dir.is_dir() and any(self.events_dir.glob("*.parquet")):
            marks.append("events")
        if self.spec_path.is_file() and (self.pythia_failures_path.is_file()
                                          or "metrics" in marks):
            marks.append(self.SPEC)
        if not marks and (self.report_dir / "report.json").is_file() and all(
                p in (self.report_dir, self.lock_path) for p in self.path.iterdir()):
            marks.append("report/report.json")  # an empty folder analysed once
        return marks

    def shared_check_path(self, token: str) -> Path:
        """A hidden file the cluster preflight writes, to see which nodes can read it."""
        return self.path / f".emerge-shared-{token}"
