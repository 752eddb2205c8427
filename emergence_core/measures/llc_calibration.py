"""Calibrating the LLC's sampler on one checkpoint: a pilot over step sizes, stated criteria.

Why: at a step size too large the chains leave the basin and the "LLC" is the loss of a
heavily perturbed model; at one too small they never equilibrate within the draws and the
value depends on the step size (TRAPS.md, "LLC defaults leave the basin"). Published LLC
work on transformers calibrates the step size per model (Lau et al. 2023, appendix; devinterp's
calibration notebooks); this module makes that choice explicit, repeatable and recorded.

The pilot runs :func:`estimate_llc` with the trial's own settings at every step size of
``eps_grid`` (each the previous one halved), for each localisation of ``gammas`` in turn.
A setting (eps, gamma) *passes* when

1. the post-burn-in trace is stationary: split-R-hat <= the settings' ``rhat_max`` (1.1),
   and every chain stayed finite;
2. the chains stay in the basin: the mean sampled loss is at most ``max_loss_fraction``
   (0.25) times the loss of the *untrained* model on the same batch;
3. the estimate is stable: it moves by at most ``max_halving_change`` (20%) when the step
   size halves (the next grid point, at the same gamma).

The choice is the largest passing step size at the smallest gamma that has one: the
largest eps mixes fastest, and the smallest gamma leaves the value least set by the
localisation. The smallest eps of the grid has no halved neighbour and never passes. The
pilot stops at the first pass (grid points below it are not run: the record lists what ran).
With no passing setting the result says so (``chosen is None``): the caller must then
report "not converged" rather than a number that looks valid.

Diagnostic, where lambda_max of the Hessian is at hand: n_beta * lambda_max against gamma
(gamma far above it means the localisation, not the loss, shapes even the sharpest
direction) and, for plain SGLD, eps * n_beta * lambda_max (above 2 the sharpest direction
is unstable).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn

from emergence_core.measures.batch import ScoredBatch
from emergence_core.measures.llc import LLCSettings, estimate_llc

__all__ = ["CalibrationSettings", "LLCCalibration", "PilotPoint", "calibrate_llc"]


@dataclass(frozen=True)
class CalibrationSettings:
    # around what passed on COPY s0 (RMSProp, n_beta 4,200 over the training set, 4 x 200
    # draws). gamma 1000 first: at 100 the trained checkpoint (step 600) passes (LLC 140,
    # R-hat 1.04) but at step 99, mid-emergence and not a minimum, the chains descend below
    # w* (LLC -49, R-hat 1.11); at 1000 both converge (102 and 25); at 1e4 the localisation
    # sets the value (11 and 0.9). The pilot, on the last checkpoint only, cannot see that.
    eps_grid: tuple[float, ...] = (4e-6, 2e-6, 1e-6, 5e-7)  # each the previous halved
    gammas: tuple[float, ...] = (1000.0, 10000.0)
    max_loss_fraction: float = 0.25  # of the untrained model's loss
    max_halving_change: float = 0.2

    def __post_init__(self) -> None:
        grid = tuple(self.eps_grid)
        if len(grid) < 2 or any(not e > 0 for e in grid) \
                or any(b >= a for a, b in itertools.pairwise(grid)):
            raise ValueError(f"eps_grid needs at least two positive step sizes, largest first "
                             f"(each the previous halved), got {list(grid)}")
        if not self.gammas or any(g < 0 for g in self.gammas):
            raise ValueError(f"gammas must be non-negative and not empty, got {self.gammas}")
        if not 0 < self.max_loss_fraction <= 1 or not self.max_halving_change > 0:
            raise ValueError("need 0 < max_loss_fraction <= 1 and max_halving_change > 0")


@dataclass(frozen=True)
class PilotPoint:
    eps: float
    gamma: float
    value: float
    mean_loss: float
    rhat: float
    stationary: bool  # criterion 1
    in_basin: bool  # criterion 2
    halving_change: float | None  # |value - value(eps/2)| / |value(eps/2)|; None: not run
    passed: bool
    wall_s: float


@dataclass(frozen=True)
class LLCCalibration:
    points: tuple[PilotPoint, ...]
    chosen: dict[str, float] | None  # {"eps": ..., "gamma": ...}, or None: nothing passed
    init_loss: float  # loss at the pilot's checkpoint
    untrained_loss: float
    n_beta: float
    criteria: dict[str, float]
    lambda_max: float | None = None

    @property
    def converged(self) -> bool:
        return self.chosen is not None

    def apply(self, settings: LLCSettings) -> LLCSettings:
        """The trial's settings with the chosen step size and localisation."""
        if self.chosen is None:
            raise ValueError("the LLC calibration found no setting that meets its criteria")
        return replace(settings, **self.chosen)

    def to_json(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return {"chosen": self.chosen, "converged": self.converged,
                "init_loss": self.init_loss, "untrained_loss": self.untrained_loss,
                "n_beta": self.n_beta, "criteria": self.criteria,
                "lambda_max": clean(self.lambda_max), **self.curvature(),
                "grid": [{k: clean(v) for k, v in asdict(p).items()} for p in self.points]}

    def curvature(self) -> dict[str, float | None]:
        """n_beta * lambda_max against gamma, and eps * n_beta * lambda_max (see module)."""
        if self.lambda_max is None or self.chosen is None:
            return {}
        stiff = self.n_beta * self.lambda_max
        return {"n_beta_lambda_max": stiff, "gamma_over_n_beta_lambda_max":
                self.chosen["gamma"] / stiff if stiff > 0 else None,
                "eps_n_beta_lambda_max": self.chosen["eps"] * stiff}


def _passes(r, half, ceiling: float, c: CalibrationSettings) -> bool:
    if not (r.converged and math.isfinite(r.mean_loss) and r.mean_loss <= ceiling):
        return False
    if not (math.isfinite(r.value) and math.isfinite(half.value)):
        return False
    return abs(r.value - half.value) / max(abs(half.value), 1e-12) <= c.max_halving_change


def calibrate_llc(model: nn.Module, batch: ScoredBatch, settings: LLCSettings,
                  untrained_loss: float, calibration: CalibrationSettings | None = None,
                  lambda_max: float | None = None) -> LLCCalibration:
    """Run the pilot on ``model`` (one checkpoint) and choose (eps, gamma); see the module."""
    c = calibration if calibration is not None else CalibrationSettings()
    ceiling = c.max_loss_fraction * untrained_loss
    points: list[PilotPoint] = []
    chosen: dict[str, float] | None = None
    init_loss = n_beta = math.nan
    for gamma in c.gammas:
        results = []
        for eps in c.eps_grid:  # largest first; stop once a point and its half are judged
            r = estimate_llc(model, batch, replace(settings, eps=eps, gamma=gamma))
            init_loss, n_beta = r.init_loss, r.n_beta
            results.append(r)
            if len(results) >= 2 and _passes(results[-2], r, ceiling, c):
                break
        for i, (eps, r) in enumerate(zip(c.eps_grid, results, strict=False)):
            half = results[i + 1] if i + 1 < len(results) else None
            change = None
            if half is not None and math.isfinite(r.value) and math.isfinite(half.value):
                change = abs(r.value - half.value) / max(abs(half.value), 1e-12)
            stationary = r.converged
            in_basin = math.isfinite(r.mean_loss) and r.mean_loss <= ceiling
            passed = stationary and in_basin and change is not None \
                and change <= c.max_halving_change
            points.append(PilotPoint(eps, gamma, r.value, r.mean_loss, r.rhat, stationary,
                                     in_basin, change, passed, r.wall_s))
            if passed and chosen is None:
                chosen = {"eps": eps, "gamma": gamma}
        if chosen is not None:
            break  # a larger gamma would only localise more
    return LLCCalibration(tuple(points), chosen, init_loss, float(untrained_loss), n_beta,
                          {"rhat_max": settings.rhat_max,
                           "max_loss_fraction": c.max_loss_fraction,
                           "max_halving_change": c.max_halving_change,
                           "loss_ceiling": ceiling}, lambda_max)
