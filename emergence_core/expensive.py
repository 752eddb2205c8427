"""The expensive measures of a trial, on one weight checkpoint (SPEC section 3, 2-5).

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
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from emergence_core.measures import (
    GradRankSettings,
    HessianSettings,
    LLCSettings,
    ScoredBatch,
    estimate_hessian,
    estimate_llc,
    fisher_effective_rank,
    gradcov_effective_rank,
)
from emergence_core.measures.batch import IGNORE_INDEX
from emergence_core.metrics import Measure
from emergence_core.model import answer_logits
from emergence_core.tasks import TrialData
from emergence_core.tasks.base import PAD
from emergence_core.tasks.data import seed_key

__all__ = ["MEASURES", "ExpensiveMeasure", "ExpensiveResult", "get_measure", "make_settings",
           "register_measure", "run_expensive", "trial_probe_batch"]


@dataclasses.dataclass(frozen=True)
class ExpensiveResult:
    rows: list[tuple[str, float]]  # (measure name, value): the metrics-table rows
    diagnostics: dict[str, Any]  # JSON-safe: convergence, spread, traces


Compute = Callable[[nn.Module, ScoredBatch, Any], ExpensiveResult]


@dataclasses.dataclass(frozen=True)
class ExpensiveMeasure:
    """An expensive measure: all emerge needs to know of one, in one registry entry.

    ``settings``: a frozen dataclass of its settings (sweep files set its fields);
    ``batch_size``: samples in its fixed probe batch, all levels equally; ``compute(model,
    batch, settings)``: its rows and diagnostics, leaving the model exactly as it was;
    ``rows``: the measure names of the rows it writes (the first is its headline value);
    ``companions``: those of its rows that qualify another (a spread, a convergence flag).
    """

    name: str
    settings: type
    batch_size: int
    compute: Compute
    rows: tuple[str, ...]
    companions: tuple[str, ...] = ()
    description: str = ""


MEASURES: dict[str, ExpensiveMeasure] = {}


def register_measure(measure: ExpensiveMeasure) -> ExpensiveMeasure:
    """Add an expensive measure (a plugin module's); the same one again is a no-op."""
    held = MEASURES.get(measure.name)
    if held is not None and held != measure:
        raise ValueError(f"expensive measure {measure.name!r} is already registered; choose "
                         "another name")
    if not dataclasses.is_dataclass(measure.settings) or measure.batch_size < 2 \
            or not measure.rows:
        raise ValueError(f"expensive measure {measure.name!r}: settings must be a dataclass, "
                         "batch_size at least 2, and rows name at least one row")
    MEASURES[measure.name] = measure
    return measure


def get_measure(name: str) -> ExpensiveMeasure:
    m = MEASURES.get(name)
    if m is None:
        raise ValueError(f"unknown expensive measure {name!r}; choose from "
                         f"{', '.join(MEASURES)}")
    return m


def make_settings(name: str, fields: Mapping[str, Any] | None = None) -> Any:
    """The measure's settings dataclass from plain fields; ValueError names a bad one."""
    cls = get_measure(name).settings
    fields = dict(fields or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r} of {name}; "
                         f"known: {', '.join(sorted(known))}")
    for key in ("params",):  # lists in YAML, tuples in the frozen dataclasses
        if isinstance(fields.get(key), list):
            fields[key] = tuple(fields[key])
    return cls(**fields)


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

    return ScoredBatch(targets=targets, forward=forward)


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def run_expensive(name: str, model: nn.Module, batch: ScoredBatch, settings: Any = None
                  ) -> ExpensiveResult:
    """Measure ``name`` of ``model`` on ``batch``; the model is left exactly as it was."""
    m = get_measure(name)
    s = settings if settings is not None else make_settings(name)
    r = m.compute(model, batch, s)
    return ExpensiveResult(rows=[(k, float(v)) for k, v in r.rows],
                           diagnostics={"measure": name, "settings": _jsonable(s),
                                        **r.diagnostics})


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
        "per_chain": list(r.per_chain), "init_loss": r.init_loss, "n_beta": r.n_beta,
        "n_burnin": r.n_burnin, "rhat": _finite(r.rhat), "converged": r.converged,
        "loss_trace": [[_finite(v) for v in chain] for chain in r.loss_trace],
        "wall_s": r.wall_s})


def _grad_rank(fn: Callable[..., Any], value: str, stderr: str) -> Compute:
    def compute(model: nn.Module, batch: ScoredBatch, s: GradRankSettings) -> ExpensiveResult:
        r = fn(model, batch, s)
        return ExpensiveResult([(value, r.value), (stderr, r.stderr)], {
            "eigenvalues": list(r.eigenvalues), "n_samples": r.n_samples,
            "n_params": r.n_params, "n_chunks": r.n_chunks, "method": r.method,
            "wall_s": r.wall_s})
    return compute


# The built-in measures (SPEC section 3). The LLC's n is its batch size, so n_beta = n / log n
# over these samples (SPEC 3.4).
for _m in (
    ExpensiveMeasure("hessian", HessianSettings, 128, _hessian,
                     (Measure.HESSIAN_LAMBDA_MAX, Measure.HESSIAN_TRACE,
                      Measure.HESSIAN_TRACE_STDERR), (Measure.HESSIAN_TRACE_STDERR,),
                     "top Hessian eigenvalue (Lanczos) and trace (Hutchinson)"),
    ExpensiveMeasure("llc", LLCSettings, 1024, _llc,
                     (Measure.LLC, Measure.LLC_STD, Measure.LLC_CONVERGED),
                     (Measure.LLC_STD, Measure.LLC_CONVERGED),
                     "local learning coefficient (SGLD)"),
    ExpensiveMeasure("fisher", GradRankSettings, 64,
                     _grad_rank(fisher_effective_rank, Measure.FISHER_ERANK,
                                Measure.FISHER_ERANK_STDERR),
                     (Measure.FISHER_ERANK, Measure.FISHER_ERANK_STDERR),
                     (Measure.FISHER_ERANK_STDERR,), "effective rank of the empirical Fisher"),
    ExpensiveMeasure("gradcov", GradRankSettings, 64,
                     _grad_rank(gradcov_effective_rank, Measure.GRADCOV_ERANK,
                                Measure.GRADCOV_ERANK_STDERR),
                     (Measure.GRADCOV_ERANK, Measure.GRADCOV_ERANK_STDERR),
                     (Measure.GRADCOV_ERANK_STDERR,),
                     "effective rank of the per-sample gradient covariance"),
):
    register_measure(_m)


def _jsonable(settings: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(settings).items()}
