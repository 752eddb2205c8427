"""The built-in expensive measures' computations: model and probe batch in, rows out.

The registry (:mod:`emergence_core.measure_registry`, torch-free) points at these by name
and imports this module on the first call, so nothing here may import the registry.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from emergence_core.measure_settings import (
    CalibrationSettings,
    GradRankSettings,
    HessianSettings,
    LLCSettings,
    numbers,
)
from emergence_core.measures.batch import ScoredBatch
from emergence_core.measures.gradrank import fisher_effective_rank, gradcov_effective_rank
from emergence_core.measures.hessian import estimate_hessian
from emergence_core.measures.llc import estimate_llc
from emergence_core.measures.llc_calibration import calibrate_llc
from emergence_core.measures.llc_runs import RunStore
from emergence_core.metrics import Measure

__all__ = ["ExpensiveResult"]


@dataclasses.dataclass(frozen=True)
class ExpensiveResult:
    rows: list[tuple[str, float]]  # (measure name, value): the metrics-table rows
    diagnostics: dict[str, Any]  # JSON-safe: convergence, spread, traces


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _hessian(model: nn.Module, batch: ScoredBatch, s: HessianSettings) -> ExpensiveResult:
    r = estimate_hessian(model, batch, s)
    rows = [(Measure.HESSIAN_LAMBDA_MAX, r.lambda_max)]
    if s.trace_probes:
        rows += [(Measure.HESSIAN_TRACE, r.trace), (Measure.HESSIAN_TRACE_STDERR, r.trace_stderr)]
    return ExpensiveResult(rows, {
        "lambda_max_residual": r.lambda_max_residual, "n_hvps": r.n_hvps,
        "converged": r.converged, "n_params": r.n_params, "wall_s": r.wall_s})


def _llc(model: nn.Module, batch: ScoredBatch, s: LLCSettings) -> ExpensiveResult:
    r = estimate_llc(model, batch, s)
    rows = [(Measure.LLC, r.value), (Measure.LLC_STD, r.std),
            (Measure.LLC_CONVERGED, 1.0 if r.converged else 0.0)]
    return ExpensiveResult(rows, {
        "value": _finite(r.value), "std": _finite(r.std), "per_chain": list(r.per_chain),
        "init_loss": r.init_loss, "mean_loss": _finite(r.mean_loss),
        "loss_rise": _finite(r.loss_rise), "max_rise": s.max_rise, "n_beta": r.n_beta,
        "eps": r.eps, "gamma": r.gamma, "sampler": s.sampler, "n_burnin": r.n_burnin,
        "rhat": _finite(r.rhat), "converged": r.converged, "checks": dict(r.checks),
        "below_share": _finite(r.below_share), "drift_noise": _finite(r.drift_noise),
        "mala_acceptance": _finite(r.mala_acceptance),
        "precond_change": _finite(r.precond_change),
        "loss_trace": [[_finite(v) for v in chain] for chain in r.loss_trace],
        "wall_s": r.wall_s})


def _llc_calibrate(model: nn.Module, batch: ScoredBatch, s: LLCSettings,
                   untrained_loss: float, fields: Mapping[str, Any],
                   store: RunStore | None = None) -> dict[str, Any]:
    """The LLC's pilot (``llc_calibration``): its grid is set by n_beta * lambda_max, so the
    Hessian's top eigenvalue at the pilot checkpoint is always computed."""
    c = CalibrationSettings(**numbers(CalibrationSettings, dict(fields)))  # checked at spec load
    return calibrate_llc(model, batch, s, untrained_loss, c, store=store).to_json()


def _grad_rank(fn: Callable[..., Any], value: str, stderr: str
               ) -> Callable[[nn.Module, ScoredBatch, Any], ExpensiveResult]:
    def compute(model: nn.Module, batch: ScoredBatch, s: GradRankSettings) -> ExpensiveResult:
        r = fn(model, batch, s)
        return ExpensiveResult([(value, r.value), (stderr, r.stderr)], {
            "eigenvalues": list(r.eigenvalues), "n_samples": r.n_samples,
            "n_params": r.n_params, "n_chunks": r.n_chunks, "method": r.method,
            "wall_s": r.wall_s})
    return compute


_fisher = _grad_rank(fisher_effective_rank, Measure.FISHER_ERANK, Measure.FISHER_ERANK_STDERR)
_gradcov = _grad_rank(gradcov_effective_rank, Measure.GRADCOV_ERANK,
                      Measure.GRADCOV_ERANK_STDERR)
