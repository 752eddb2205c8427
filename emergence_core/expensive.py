"""The expensive measures of a trial, on one weight checkpoint (docs/methods.md §3, 2-5).

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
from emergence_core.measures.llc_calibration import CalibrationSettings, calibrate_llc
from emergence_core.metrics import Measure
from emergence_core.model import answer_logits
from emergence_core.registry import Registry, RegistryError
from emergence_core.tasks import TrialData
from emergence_core.tasks.base import PAD
from emergence_core.tasks.data import seed_key

__all__ = [
    "MEASURES",
    "ExpensiveMeasure",
    "ExpensiveResult",
    "MeasureError",
    "calibrated_settings",
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


@dataclasses.dataclass(frozen=True)
class ExpensiveResult:
    rows: list[tuple[str, float]]  # (measure name, value): the metrics-table rows
    diagnostics: dict[str, Any]  # JSON-safe: convergence, spread, traces


Compute = Callable[[nn.Module, ScoredBatch, Any], ExpensiveResult]
Calibrate = Callable[[nn.Module, ScoredBatch, Any, float, Mapping[str, Any]], dict[str, Any]]
"""(model at the pilot checkpoint, batch, settings, the untrained model's loss on the batch,
calibration fields) -> a JSON-safe record whose ``chosen`` is the settings fields to fix for
the whole trial, or None when no setting met the criteria."""


@dataclasses.dataclass(frozen=True)
class ExpensiveMeasure:
    """An expensive measure: all emerge needs to know of one, in one registry entry.

    ``settings``: a frozen dataclass of its settings (sweep files set its fields);
    ``batch_size``: samples in its fixed probe batch, all levels equally; ``compute(model,
    batch, settings)``: its rows and diagnostics, leaving the model exactly as it was;
    ``rows``: the measure names of the rows it writes (the first is its headline value);
    ``companions``: those of its rows that qualify another (a spread, a convergence flag);
    ``calibrate``: a per-trial pilot that fixes some settings (see ``Calibrate``), or None;
    ``flag``: the row saying converged (1) or not (0), the only non-nan row of a
    "not converged" result.
    """

    name: str
    settings: type
    batch_size: int
    compute: Compute
    rows: tuple[str, ...]
    companions: tuple[str, ...] = ()
    description: str = ""
    calibrate: Calibrate | None = None
    flag: str | None = None
    calibration: type | None = None  # the pilot's own settings (its fields), with calibrate


class MeasureError(RegistryError):
    """An unknown expensive measure, or a second one under a taken name; one line."""


MEASURES: Registry[ExpensiveMeasure] = Registry("expensive measure", error=MeasureError)


def register_measure(measure: ExpensiveMeasure) -> ExpensiveMeasure:
    """Add an expensive measure (a plugin module's); the same one again is a no-op."""
    held = MEASURES.get(measure.name)
    if held is not None and held != measure:
        MEASURES.register(measure.name, measure)  # raises: the name is taken
    if not dataclasses.is_dataclass(measure.settings) or measure.batch_size < 2 \
            or not measure.rows:
        raise ValueError(f"expensive measure {measure.name!r}: settings must be a dataclass, "
                         "batch_size at least 2, and rows name at least one row")
    return MEASURES.register(measure.name, measure)


def get_measure(name: str) -> ExpensiveMeasure:
    """The expensive measure called ``name``, or a MeasureError with a suggestion."""
    return MEASURES.lookup(name)


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
    return cls(**_numbers(cls, fields))


def _numbers(cls: type, fields: dict[str, Any]) -> dict[str, Any]:
    """YAML 1.1 reads ``1e-6`` (no dot) as a string: numbers for the fields whose default is
    a float, or a tuple of floats; ValueError names a field that is not a number."""
    out = dict(fields)
    for f in dataclasses.fields(cls):
        v, d = out.get(f.name), f.default
        try:  # a float field, or an optional one ("float | None"), read from YAML
            if isinstance(v, str) and (isinstance(d, float) or str(f.type).startswith("float")):
                out[f.name] = float(v)
            elif isinstance(d, tuple) and d and isinstance(d[0], float) \
                    and isinstance(v, list | tuple):
                out[f.name] = tuple(float(x) for x in v)
        except ValueError:
            raise ValueError(f"{f.name} must be a number, got {v!r}") from None
    return out


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


def check_calibration(name: str, fields: Mapping[str, Any]) -> Any:
    """The measure's pilot settings from ``fields``; a bad or unknown field is a ValueError
    of one line naming the known ones."""
    m = get_measure(name)
    if m.calibration is None:
        if fields:
            raise ValueError(f"expensive measure {name!r} has no calibration fields")
        return None
    try:
        return m.calibration(**_numbers(m.calibration, dict(fields)))
    except (TypeError, ValueError) as err:
        known = ", ".join(f.name for f in dataclasses.fields(m.calibration))
        raise ValueError(f"bad {name} calibration field ({err}); known: {known}") from None


def run_calibration(name: str, model: nn.Module, batch: ScoredBatch, settings: Any,
                    untrained_loss: float, fields: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
    """The measure's per-trial pilot on ``model`` (one checkpoint); its JSON record."""
    m = get_measure(name)
    if m.calibrate is None:
        raise ValueError(f"expensive measure {name!r} has no calibration; only "
                         f"{', '.join(k for k, v in MEASURES.items() if v.calibrate)} have one")
    return {"measure": name, "settings": _jsonable(settings),
            **m.calibrate(model, batch, settings, untrained_loss, dict(fields or {}))}


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
                   untrained_loss: float, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The LLC's pilot (``llc_calibration``): its grid is set by n_beta * lambda_max, so the
    Hessian's top eigenvalue at the pilot checkpoint is always computed."""
    c = check_calibration("llc", fields)
    return calibrate_llc(model, batch, s, untrained_loss, c).to_json()


def _grad_rank(fn: Callable[..., Any], value: str, stderr: str) -> Compute:
    def compute(model: nn.Module, batch: ScoredBatch, s: GradRankSettings) -> ExpensiveResult:
        r = fn(model, batch, s)
        return ExpensiveResult([(value, r.value), (stderr, r.stderr)], {
            "eigenvalues": list(r.eigenvalues), "n_samples": r.n_samples,
            "n_params": r.n_params, "n_chunks": r.n_chunks, "method": r.method,
            "wall_s": r.wall_s})
    return compute


# The built-in measures (docs/methods.md §3). The LLC's n is its batch size, so n_beta = n / log n
# over these samples (docs/methods.md §3.4).
for _m in (
    ExpensiveMeasure("hessian", HessianSettings, 128, _hessian,
                     (Measure.HESSIAN_LAMBDA_MAX, Measure.HESSIAN_TRACE,
                      Measure.HESSIAN_TRACE_STDERR), (Measure.HESSIAN_TRACE_STDERR,),
                     "top Hessian eigenvalue (Lanczos) and trace (Hutchinson)"),
    ExpensiveMeasure("llc", LLCSettings, 1024, _llc,
                     (Measure.LLC, Measure.LLC_STD, Measure.LLC_CONVERGED),
                     (Measure.LLC_STD, Measure.LLC_CONVERGED),
                     "local learning coefficient (SGLD)", calibrate=_llc_calibrate,
                     calibration=CalibrationSettings,
                     flag=Measure.LLC_CONVERGED),
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
