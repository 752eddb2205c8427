"""One expensive job on one checkpoint: the steps the pool's actors (``pool``) and
``emerge probe`` both run, written once.

Fix the trial's calibrated settings (its saved calibration, or the pilot run now), load the
checkpoint's weights, run the measure (or the "not converged" rows when the calibration found
no setting), add the LLC's curvature check against the Hessian at the same checkpoint, then
write the diagnostics and, last and atomically, the rows where the queue counts a job as done.
No Ray here: ``emerge probe`` runs these steps without a cluster.
"""

from __future__ import annotations

import time
from typing import Any

from emergence_core.calibrations import PilotRuns, read_calibration, write_calibration
from emergence_core.config import TrainConfig
from emergence_core.run_folder import ProbeJob, RunFolder
from orchestrator.probe_pool.queue import ProbeQueue

__all__ = ["calibrate_trial", "calibration_for", "hessian_at", "measure_checkpoint",
           "write_result"]


def calibrate_trial(folder: RunFolder, trial: str, measure: str, cfg: TrainConfig, model: Any,
                    batch: Any, settings: Any, step: int, fields: dict[str, Any],
                    device: Any = "cpu", store: PilotRuns | None = None) -> dict[str, Any]:
    """Run ``measure``'s pilot on the trial's checkpoint at ``step`` (``model`` is loaded
    with it); the record to save, with the step and the untrained model's loss. ``store``:
    where its finished runs are kept, so that a stopped pilot resumes there (``wall_s`` is
    then this last part's, ``reused_runs`` says how many were read back)."""
    from emergence_core.expensive import run_calibration, untrained_loss
    from emergence_core.store import TrialStore

    TrialStore(folder, trial).load_weights(model, step)
    start = time.time()
    record = run_calibration(measure, model, batch, settings,
                             untrained_loss(cfg, batch, device), fields, store)
    return {"trial": trial, "step": step, "wall_s": time.time() - start, **record}


def calibration_for(folder: RunFolder, trial: str, measure: str, cfg: TrainConfig, model: Any,
                    batch: Any, settings: Any, pilot: int, fields: dict[str, Any],
                    device: Any = "cpu", *, saved: bool = True, save: bool = True
                    ) -> tuple[dict[str, Any], str]:
    """(calibration record, "saved" or "pilot") of a trial's measure: the saved record when
    there is one and ``saved``, else the pilot run now on checkpoint ``pilot`` (and saved
    when ``save``)."""
    record = read_calibration(folder, trial, measure) if saved else None
    if record is not None:
        return record, "saved"
    record = calibrate_trial(folder, trial, measure, cfg, model, batch, settings, pilot,
                             fields, device)
    if save:
        write_calibration(folder, trial, measure, record)
    return record, "pilot"


def hessian_at(queue: ProbeQueue, trial: str, step: int) -> float | None:
    """lambda_max of the Hessian at a checkpoint, when its job is done; else None."""
    from emergence_core.metrics import Measure

    job = ProbeJob(trial, step, "hessian")
    if not queue.is_done(job):
        return None
    # the store holds every step's Hessian rows: this step's, of its latest attempt
    t = queue.store(job).read()
    found = [(a, v) for s, m, a, v in zip(t["step"].to_pylist(), t["measure"].to_pylist(),
                                          t["attempt"].to_pylist(), t["value"].to_pylist(),
                                          strict=True)
             if s == step and m == Measure.HESSIAN_LAMBDA_MAX]
    return max(found)[1] if found else None


def measure_checkpoint(folder: RunFolder, job: ProbeJob, model: Any, batch: Any,
                       settings: Any, record: dict[str, Any] | None = None, *,
                       note_calibration: bool = False) -> Any:
    """``job``'s result (``ExpensiveResult``): load its checkpoint's weights into ``model``,
    run the measure with ``settings`` (None: the calibration ``record`` found no setting, so
    the "not converged" rows), add the LLC's curvature check. ``note_calibration``: a
    computed result's diagnostics name the calibration's choice (the pool's do)."""
    from emergence_core.expensive import llc_curvature, not_converged, run_expensive
    from emergence_core.store import TrialStore

    TrialStore(folder, job.trial).load_weights(model, job.step)
    if settings is None:
        result = not_converged(job.measure, record)
    else:
        result = run_expensive(job.measure, model, batch, settings)
        if note_calibration and record is not None:
            result.diagnostics["calibration"] = {"chosen": record["chosen"],
                                                 "step": record["step"]}
    if job.measure == "llc":
        result.diagnostics.update(llc_curvature(
            result.diagnostics, hessian_at(ProbeQueue(folder), job.trial, job.step)))
    return result


def write_result(folder: RunFolder, sweep: str, cfg: TrainConfig, job: ProbeJob, result: Any,
                 attempt: int, **extra: Any) -> None:
    """``job``'s diagnostics (with ``extra``), then its rows: the metric part, written last
    and atomically, replacing an earlier one (the job is done once it exists)."""
    from emergence_core.metrics import RowBuffer, TrialKey

    queue = ProbeQueue(folder)
    queue.write_diagnostics(job, {**result.diagnostics, "step": job.step, "trial": job.trial,
                                  "attempt": attempt, **extra})
    rows = RowBuffer(TrialKey(sweep, job.trial, cfg.task, cfg.scale, cfg.seed,
                              source="probe"), attempt)
    for measure, value in result.rows:
        rows.add(job.step, measure, value)
    queue.store(job).write_part(rows.take())
