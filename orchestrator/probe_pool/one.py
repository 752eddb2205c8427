"""One expensive measure on one saved checkpoint of an existing run folder (``emerge probe``).

The pool's one job (``job``), run by hand. A sweep's frozen spec is read by the sweep room's
``load_spec``, which the command passes in: the sweep room imports this one, not the other
way round.

How a researcher recomputes a measure with other settings, or calibrates, on checkpoints
that already exist, without a sweep, Ray or the pool. The run folder is a sweep's (its
frozen spec names the trials and the measure's settings) or an ``emerge train`` folder (its
run record holds the one config; measures take their defaults).

Settings, lowest to highest: the measure's defaults, the sweep file's ``settings``, the
calibration's choice (a measure that has one, unless ``calibrate=False``), then ``--set``;
``--set calibration.KEY=VALUE`` sets a field of the pilot (the LLC's ``steps``, ...);
``--set batch_size=N`` the probe batch.
The calibration used is the trial's saved one when there is one (what the pool fixed for the
trial), else a pilot run now on the trial's last checkpoint with weights, as the pool would.
Nothing is written unless ``write=True``: then the rows and diagnostics go where the pool
puts them (replacing the checkpoint's earlier result) and a new calibration is saved.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emergence_core.config import TrainConfig
from emergence_core.folder_records import read_run_record
from emergence_core.registry import did_you_mean
from emergence_core.run_folder import ProbeJob, RunFolder
from orchestrator.common.errors import UsageError

__all__ = ["probe_checkpoint"]


def trial_configs(folder: RunFolder, load_spec: Callable[[Path], Any]
            ) -> tuple[str, dict[str, TrainConfig], dict[str, Any]]:
    """(sweep name, trial configs, the sweep's probes.measures) of a run folder."""
    if folder.is_sweep():
        spec = load_spec(folder.spec_path)
        return (spec.name, {t.name: t.config for t in spec.trials()},
                dict(spec.probes.measures))
    record = read_run_record(folder)
    if record is None or "config" not in record:
        raise UsageError(f"{folder.path} is not an emerge run folder (no sweep.json and no "
                         "run.json); give a folder made by emerge sweep or emerge train")
    cfg = TrainConfig.model_validate(record["config"])
    return "local", {cfg.trial_name(): cfg}, {}


def _pick_trial(trials: dict[str, TrainConfig], trial: str | None) -> str:
    if trial is None:
        if len(trials) == 1:
            return next(iter(trials))
        raise UsageError(f"the run has {len(trials)} trials; choose one with --trial "
                         f"({', '.join(list(trials)[:6])}{', ...' if len(trials) > 6 else ''})")
    if trial not in trials:
        hint = (did_you_mean(trial, list(trials), cutoff=0.6, quote=False, prefix="; ")
                or f"; trials: {', '.join(list(trials)[:6])}")
        raise UsageError(f"unknown trial {trial!r}{hint}")
    return trial


def probe_checkpoint(run_dir: str | Path, measure: str, step: int, *,
                     load_spec: Callable[[Path], Any], trial: str | None = None,
                     sets: dict[str, Any] | None = None, calibrate: bool = True,
                     recalibrate: bool = False, write: bool = False,
                     threads: int | None = None) -> dict[str, Any]:
    """Compute ``measure`` at ``step`` of a trial; its value, rows and diagnostics.
    ``load_spec``: the reader of a sweep's frozen spec (``orchestrator.sweep.spec``)."""
    from emergence_core.expensive import (
        calibrated_settings,
        check_calibration,
        get_measure,
        make_settings,
        trial_model,
        trial_probe_batch,
    )

    folder = RunFolder(run_dir)
    if not folder.path.is_dir():
        raise UsageError(f"{folder.path}: no such run folder")
    try:
        m = get_measure(measure)
    except ValueError as e:
        raise UsageError(str(e)) from None
    sweep, trials, specs = trial_configs(folder, load_spec)
    name = _pick_trial(trials, trial)
    cfg = trials[name]
    have = folder.weight_steps(name)
    if step not in have:
        near = min(have, key=lambda s: abs(s - step)) if have else None
        raise UsageError(f"trial {name} has no saved weights at step {step}"
                         + (f" (nearest: {near}; {len(have)} steps have weights)" if have
                            else " (no checkpoint has weights)"))
    spec = specs.get(measure)
    sets = dict(sets or {})
    fields = {**(dict(spec.calibration) if spec else {}), **sets.pop("calibration", {})}
    size = sets.pop("batch_size", None)  # the probe batch, as the sweep file's batch_size
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 2):
        raise UsageError(f"--set batch_size must be an integer >= 2, got {size!r}")
    try:
        base = make_settings(measure, {**(spec.settings if spec else {}), **sets})
    except (ValueError, TypeError) as e:
        raise UsageError(f"--set: {e}") from None
    if calibrate and m.calibrate is not None:
        try:
            check_calibration(measure, fields)
        except ValueError as e:
            raise UsageError(f"--set calibration: {e}") from None

    import torch

    from orchestrator.probe_pool.job import calibration_for, measure_checkpoint, write_result

    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data, model = trial_model(cfg, device)
    batch = trial_probe_batch(data, size or (spec.batch_size if spec and spec.batch_size
                                             else None) or m.batch_size, cfg.seed, device)
    t0 = time.perf_counter()
    record, calibration_source = None, None
    settings = base
    if calibrate and m.calibrate is not None:
        record, calibration_source = calibration_for(
            folder, name, measure, cfg, model, batch, base, have[-1], fields, device,
            saved=not recalibrate, save=write)
        chosen = calibrated_settings(base, record)
        # explicit --set fields win over the calibration's choice
        settings = None if chosen is None else dataclasses.replace(
            chosen, **{k: getattr(base, k) for k in sets})
    job = ProbeJob(name, step, measure)
    result = measure_checkpoint(folder, job, model, batch, settings, record)
    rows = dict(result.rows)
    if "init_loss" not in result.diagnostics:  # e.g. not converged: no estimate ran
        with torch.no_grad():
            result.diagnostics["init_loss"] = float(batch.loss(model.eval()))
    out: dict[str, Any] = {"run": str(folder.path), "trial": name, "step": step,
                           "measure": measure, "value": rows.get(m.rows[0]),
                           "rows": rows, **result.diagnostics,
                           "wall_s": time.perf_counter() - t0}
    if record is not None:
        out["calibration"] = {"source": calibration_source, "step": record.get("step"),
                              "chosen": record.get("chosen"), "kind": record.get("kind"),
                              "grid": record.get("grid"),
                              "lambda_max": record.get("lambda_max"),
                              "n_beta_lambda_max": record.get("n_beta_lambda_max"),
                              "lambda_basin": record.get("lambda_basin"),
                              "localised_stiffness": record.get("localised_stiffness"),
                              "criteria": record.get("criteria"),
                              "reason": record.get("reason"),
                              "untrained_loss": record.get("untrained_loss")}
    if write:  # where the pool writes it, replacing an earlier result
        write_result(folder, sweep, cfg, job, result, 0, source="emerge probe")
        out["written"] = True
    return _finite(out)


def _finite(v: Any) -> Any:
    """nan and inf as None, so that the JSON printed is valid JSON."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v

