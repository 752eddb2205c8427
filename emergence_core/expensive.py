"""The expensive measures of a trial, on one weight checkpoint (docs/methods.md §3, 2-5).

The registry of the measures (names, settings, rows) is ``emergence_core.measure_registry``,
which needs no torch; this module holds their computations and re-exports it.
``run_expensive(name, model, batch, settings)`` computes one of ``MEASURES`` on a model at
a checkpoint and returns its metric rows (value and spread) and its diagnostics (the LLC's
loss trace, Lanczos' residual, ...). The loss is the trial's training loss on a *fixed*
probe batch (``trial_probe_batch``): the same samples at every checkpoint, so values are
comparable across steps. The Fisher uses the same inputs with labels drawn from the model.

Pure science: the probe pool (orchestrator) decides where and when these run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from emergence_core.measure_registry import (
    MEASURES,
    Calibrate,
    Compute,
    ExpensiveMeasure,
    MeasureError,
    check_calibration,
    get_measure,
    make_settings,
    register_measure,
)
from emergence_core.measures.batch import IGNORE_INDEX, ScoredBatch
from emergence_core.measures.compute import ExpensiveResult
from emergence_core.model import answer_logits
from emergence_core.tasks import TrialData
from emergence_core.tasks.base import PAD
from emergence_core.tasks.data import seed_key

__all__ = [
    "MEASURES",
    "Calibrate",
    "Compute",
    "ExpensiveMeasure",
    "ExpensiveResult",
    "MeasureError",
    "calibrated_settings",
    "check_calibration",
    "get_measure",
    "llc_curvature",
    "make_settings",
    "not_converged",
    "register_measure",
    "run_calibration",
    "run_expensive",
    "trial_model",
    "trial_probe_batch",
    "untrained_loss",
]


def trial_model(cfg: Any, device: torch.device | str = "cpu") -> tuple[TrialData, nn.Module]:
    """A trial's data and its model at initialisation (= its step-0 weights, same seed)."""
    from emergence_core.model import build_model, scale_shape

    data = TrialData(cfg.task, cfg.levels, cfg.effective_data_seed, train_size=cfg.train_size,
                     train_fraction=cfg.train_fraction, diag_size=cfg.diag_size,
                     level_params=cfg.level_params)
    model = build_model(scale_shape(cfg.scale), data.vocab.size, data.seq_len, seed=cfg.seed,
                        init_std=cfg.init_std).to(device)
    return data, model


def untrained_loss(cfg: Any, batch: ScoredBatch, device: torch.device | str = "cpu") -> float:
    """The loss of the trial's untrained model on ``batch``: the calibration's yardstick."""
    _, model = trial_model(cfg, device)
    with torch.no_grad():
        return float(batch.loss(model.eval()))


def trial_probe_batch(data: TrialData, n: int, seed: int,
                      device: torch.device | str = "cpu") -> ScoredBatch:
    """A fixed batch of ``n`` training samples of a trial, its levels in equal shares.

    Levels have different lengths; here they are right-padded to the longest, which the
    causal mask makes harmless (no scored position sees a later one). One forward pass with
    no data-dependent branches keeps ``forward`` usable under ``torch.func.vmap``.
    """
    rng = np.random.default_rng(seed_key("probe-batch", data.task, seed))
    per_level = [n // len(data.levels) + (i < n % len(data.levels))
                 for i in range(len(data.levels))]
    sets = [enc.select(np.sort(rng.choice(len(enc), size=min(k, len(enc)), replace=False)))
            for enc, k in zip(data.train, per_level, strict=True)]
    t_max = max(s.inputs.shape[1] for s in sets)
    a_max = max(s.targets.shape[1] for s in sets)

    def pad(x: torch.Tensor, width: int, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

    inputs = torch.cat([pad(s.inputs, t_max, PAD) for s in sets]).to(device)
    # extra answer slots of shorter answers point at the SEP position and are never scored
    positions = torch.cat([torch.cat([s.positions, s.positions[:, :1].expand(
        -1, a_max - s.positions.shape[1])], dim=1) for s in sets]).to(device)
    targets = torch.cat([pad(s.targets, a_max, IGNORE_INDEX) for s in sets]).to(device)

    def forward(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return answer_logits(model, inputs[ids], positions[ids])  # [n, A_max, V]

    return ScoredBatch(targets=targets, forward=forward,
                       n_population=sum(len(enc) for enc in data.train))


def run_expensive(name: str, model: nn.Module, batch: ScoredBatch, settings: Any = None
                  ) -> ExpensiveResult:
    """Measure ``name`` of ``model`` on ``batch``; the model is left exactly as it was."""
    m = get_measure(name)
    s = settings if settings is not None else make_settings(name)
    r = m.compute(model, batch, s)
    return ExpensiveResult(rows=[(k, float(v)) for k, v in r.rows],
                           diagnostics={"measure": name, "settings": _jsonable(s),
                                        **r.diagnostics})


def run_calibration(name: str, model: nn.Module, batch: ScoredBatch, settings: Any,
                    untrained_loss: float, fields: Mapping[str, Any] | None = None,
                    store: Any = None) -> dict[str, Any]:
    """The measure's per-trial pilot on ``model`` (one checkpoint); its JSON record.
    ``store``: where a stopped pilot's finished runs are kept (``Calibrate``)."""
    m = get_measure(name)
    if m.calibrate is None:
        raise ValueError(f"expensive measure {name!r} has no calibration; only "
                         f"{', '.join(k for k, v in MEASURES.items() if v.calibrate)} have one")
    return {"measure": name, "settings": _jsonable(settings),
            **m.calibrate(model, batch, settings, untrained_loss, dict(fields or {}),
                          store=store)}


def calibrated_settings(settings: Any, record: Mapping[str, Any]) -> Any | None:
    """``settings`` with a calibration's choice fixed; None when nothing met its criteria."""
    chosen = record.get("chosen")
    return None if chosen is None else dataclasses.replace(settings, **chosen)


def not_converged(name: str, record: Mapping[str, Any]) -> ExpensiveResult:
    """The rows of a measure whose calibration found no valid setting: nan values and the
    convergence flag 0, so no number that looks valid reaches the metrics table."""
    m = get_measure(name)
    rows = [(r, 0.0 if r == m.flag else math.nan) for r in m.rows]
    return ExpensiveResult(rows, {"measure": name, "value": None, "converged": False,
                                  "mean_loss": None, "loss_rise": None, "rhat": None,
                                  "n_beta": record.get("n_beta"),
                                  "status": "not converged: the calibration found no setting "
                                            "meeting its criteria"
                                            + (f" ({record['reason']})" if record.get("reason")
                                               else ""),
                                  "calibration": {"chosen": None,
                                                  "grid": record.get("grid", [])}})


def llc_curvature(diagnostics: Mapping[str, Any], lambda_max: float | None) -> dict[str, Any]:
    """n_beta * lambda_max against gamma (and eps times it) for an LLC estimate, where the
    Hessian's top eigenvalue at the same checkpoint is at hand; {} otherwise. gamma far above
    n_beta * lambda_max: the localisation, not the loss, shapes even the sharpest direction."""
    if lambda_max is None or not math.isfinite(lambda_max) or "n_beta" not in diagnostics \
            or diagnostics.get("gamma") is None:
        return {}
    stiff = float(diagnostics["n_beta"]) * lambda_max
    return {"lambda_max": lambda_max, "n_beta_lambda_max": stiff,
            "gamma_over_n_beta_lambda_max": diagnostics["gamma"] / stiff if stiff > 0 else None,
            "eps_n_beta_lambda_max": diagnostics["eps"] * stiff}


def _jsonable(settings: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(settings).items()}
