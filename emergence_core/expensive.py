"""The expensive measures of a trial, on one weight checkpoint (SPEC section 3, 2-5).

``run_expensive(name, model, batch, settings)`` computes one of ``EXPENSIVE`` on a model at
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

__all__ = ["BATCH_SIZES", "EXPENSIVE", "ExpensiveResult", "make_settings", "run_expensive",
           "trial_probe_batch"]

EXPENSIVE: dict[str, type] = {
    "hessian": HessianSettings,
    "llc": LLCSettings,
    "fisher": GradRankSettings,
    "gradcov": GradRankSettings,
}

# Samples in each measure's fixed batch (all levels equally). The LLC's n is its batch size,
# so n_beta = n / log n over these samples (SPEC 3.4).
BATCH_SIZES = {"hessian": 128, "llc": 1024, "fisher": 64, "gradcov": 64}


@dataclasses.dataclass(frozen=True)
class ExpensiveResult:
    rows: list[tuple[str, float]]  # (measure name, value): the metrics-table rows
    diagnostics: dict[str, Any]  # JSON-safe: convergence, spread, traces


def make_settings(name: str, fields: Mapping[str, Any] | None = None) -> Any:
    """The measure's settings dataclass from plain fields; ValueError names a bad one."""
    if name not in EXPENSIVE:
        raise ValueError(f"unknown expensive measure {name!r}; choose from "
                         f"{', '.join(EXPENSIVE)}")
    cls = EXPENSIVE[name]
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
    s = settings if settings is not None else make_settings(name)
    if name == "hessian":
        r = estimate_hessian(model, batch, s)
        rows = [(Measure.HESSIAN_LAMBDA_MAX, r.lambda_max)]
        if s.trace_probes:
            rows += [(Measure.HESSIAN_TRACE, r.trace),
                     (Measure.HESSIAN_TRACE_STDERR, r.trace_stderr)]
        diag = {"lambda_max_residual": r.lambda_max_residual, "n_hvps": r.n_hvps,
                "converged": r.converged, "n_params": r.n_params, "wall_s": r.wall_s}
    elif name == "llc":
        r = estimate_llc(model, batch, s)
        rows = [(Measure.LLC, r.value), (Measure.LLC_STD, r.std),
                (Measure.LLC_CONVERGED, 1.0 if r.converged else 0.0)]
        diag = {"per_chain": list(r.per_chain), "init_loss": r.init_loss, "n_beta": r.n_beta,
                "n_burnin": r.n_burnin, "rhat": _finite(r.rhat), "converged": r.converged,
                "loss_trace": [[_finite(v) for v in chain] for chain in r.loss_trace],
                "wall_s": r.wall_s}
    elif name in ("fisher", "gradcov"):
        fn = fisher_effective_rank if name == "fisher" else gradcov_effective_rank
        r = fn(model, batch, s)
        m = (Measure.FISHER_ERANK, Measure.FISHER_ERANK_STDERR) if name == "fisher" else \
            (Measure.GRADCOV_ERANK, Measure.GRADCOV_ERANK_STDERR)
        rows = [(m[0], r.value), (m[1], r.stderr)]
        diag = {"eigenvalues": list(r.eigenvalues), "n_samples": r.n_samples,
                "n_params": r.n_params, "n_chunks": r.n_chunks, "method": r.method,
                "wall_s": r.wall_s}
    else:
        raise ValueError(f"unknown expensive measure {name!r}")
    return ExpensiveResult(rows=[(k, float(v)) for k, v in rows],
                           diagnostics={"measure": name, "settings": _jsonable(s), **diag})


def _jsonable(settings: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(settings).items()}
