"""The LLC's default procedure: a per-checkpoint pilot over step sizes and localisations
stated relative to the checkpoint's own curvature, and the checks every estimate is judged by.

Why relative: the SGLD step is stable only while eps * (n_beta * h + gamma) stays well below 2
in every direction of curvature h, and the localisation biases a direction of curvature h by
the factor n_beta h / (n_beta h + gamma) (its share of the LLC shrinks from 1/2 towards 0).
Both are set by the stiffness S = n_beta * lambda_max, lambda_max the top Hessian eigenvalue
of the loss at w* (Lanczos, :mod:`emergence_core.measures.hessian`). So the pilot's grid is

    eps = c / S   for c in ``steps``        (0.2, 0.1, 0.05, 0.025, 0.0125, 0.00625)
    gamma = k * S for k in ``localisations`` (1e-2, 1e-3, 1e-4)

and no constant tuned on one model is carried to another: n_beta = n / log n grows with the
probe batch's n (the samples L_n is scored on), S with n_beta and the checkpoint (gamma =
1000 gave about 0 on every small-n known case). The tests measure the procedure on models
whose lambda is known: deep linear networks, reduced-rank regressions (Aoyagi 2024; Aoyagi
and Watanabe 2005), a polynomial potential and a regular model (lambda = d / 2).

The checks (each with its failure mode; a reviewer's list, after Lau et al. 2023, appendix,
and devinterp's diagnostics):

1. **Stationarity**: split-R-hat of the post-burn-in draws <= ``rhat_max`` (1.1) and every
   chain finite. Fails when chains disagree or drift: too few draws for the step.
2. **Basin**: the rise of the mean sampled loss above L(w*) is positive and at most
   ``max_rise_fraction`` (0.25) of the scale max(L_untrained - L(w*), L(w*)): the chains may
   undo at most a quarter of what training achieved, or, at a checkpoint whose loss is
   mostly irreducible (a regression at its noise floor, a task at chance), raise the loss by
   at most a quarter of its own value. A rise <= 0 says the chains found lower loss, so w*
   is no local minimum (the LLC is then undefined); a larger rise says they left the basin.
3. **Discretisation**: the value moves by at most ``max_halving_change`` (10%) when eps
   halves (same gamma), decided once ``halving_z`` (2) x the change's Monte Carlo error
   (``LLCResult.mcse``) is within it: until then both runs' kept draws double, up to
   ``max_draws`` (undecidable: fails). Fails when the step is too large for the curvature.
4. **Localisation**: the value moves by at most ``max_localisation_change`` (5%) when gamma
   is ten times weaker (same eps). Fails when gamma, not the loss, sets the value: a stronger
   localisation lowers the LLC of a singular model (measured: -14% at gamma 1000 on a deep
   linear network, unseen by the halving check).

Selection: for each localisation, strongest first, the largest c whose run and whose halved
run are both stationary and in the basin and agree (check 3); then the same c at the next,
weaker, localisation (check 4). The first (c, k) that passes all four is chosen; if check 4
fails the pilot moves to the weaker localisation and searches c again from there. The weakest
localisation of the grid has no weaker neighbour and is never chosen, as the smallest c is
never chosen by check 3. With nothing passing, ``chosen is None`` and the trial's LLC rows are
"not converged" (nan values, flag 0), never a number that looks valid. When most points' chains
ran below L(w*), the reason opens with "not a minimum": no setting can pass there, since the
LLC is defined at a local minimum only (the cure is a checkpoint nearer one, not the sampler).

Chain length, two opt-in budgets (docs/methods.md §3.4 has the measurements). The
relaxation budget (``relaxation_burnin``, ``relaxation_kept``, in relaxation times
tau = 1 / (c k), the slowest direction's, which only gamma pulls back): at 2 and 2 a
direction still relaxing is at most (e^-2 - e^-4) / 2 = 5.8% short over the kept window; a
fixed length corrupts the halving check instead (35% change at 200 draws on a planted
quadratic whose true discretisation bias is 0.14%), but the worst case prices check 4 out on
a deep linear network, whose flat directions contribute nothing. The spectral budget
(``max_shortfall``) prices each direction by what it contributes: the Hessian's spectral
density at w* by stochastic Lanczos quadrature (:mod:`emergence_core.measures.spectrum`),
chains doubled until the closed form of Ornstein-Uhlenbeck chains on it predicts at most
``max_shortfall`` short of stationarity. A point needing more than ``max_draws`` per chain
is not run (``affordable`` False) and can neither be chosen nor judge a neighbour.

The localised tier (``localised``, k = 0.1; None turns it off), when no gamma-independent
setting passes: at a checkpoint mid-training, whose Hessian is a few outliers over a soft
bulk, weakening gamma lets the chains wander off rather than converge to a value (COPY s0 at
step 300: 137.5 at k = 0.1, 98.1 at k = 0.01, the chains descending). The pilot then
estimates the LLC at the stated gamma = k * S: for each c, largest first, a run whose
burn-in and kept draws are each at least ``localised_relaxation`` (2) relaxation times
1 / (c k), so that gamma and not the chain's length localises it, and its halved run (twice
as long: equal in time, so check 3 compares discretisation only). The first c passing
checks 1-3 is chosen; check 4 is the stated bound (the sharpest direction keeps 1 / (1 + k)
of its share, 91% at k = 0.1). A localised value compares across the checkpoints of its
trial (one gamma per trial), not with the learning coefficient of another model.

The localised tier's S is the curvature where its chains go (``stiffness_rise``): n_beta x
the larger of lambda_max at w* and at the point along a random direction (SGLD's noise is
isotropic) where the batch loss has risen by ``stiffness_rise`` x the basin bound
(:func:`~emergence_core.measures.llc.curvature_at_rise`). At near-zero cross-entropy the
curvature at w* vanishes with the softmax's saturation (REV s0: 0.23 at w*, 84 at the bound)
and steps set by it are unstable once the chains rise. The gamma-independent tier keeps w*'s.

The chosen setting carries ``max_rise``: every later estimate of the trial is judged by
checks 1 and 2 itself, checks 3 and 4 are the pilot's, recorded with it. Check 2's lower half
holds for every estimate: a mean sampled loss at or below L(w*) is never a converged LLC.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from emergence_core.measure_settings import CalibrationSettings
from emergence_core.measures.batch import eval_mode
from emergence_core.measures.llc import (
    LLCResult,
    LLCSettings,
    LossBatch,
    SGLDChains,
    curvature_at_rise,
    n_beta_for,
    stiffness,
)
from emergence_core.measures.llc_checks import (
    basin_scale,
    change,
    change_noise,
    not_a_minimum,
    sound,
)
from emergence_core.measures.llc_runs import PilotLedger, RunStore
from emergence_core.measures.spectrum import spectral_length

__all__ = ["CalibrationSettings", "LLCCalibration", "PilotPoint", "calibrate_llc"]


@dataclass(frozen=True)
class PilotPoint:
    step: float  # c = eps * n_beta * lambda_max
    localisation: float  # k = gamma / (n_beta * lambda_max)
    eps: float
    gamma: float
    n_draws: int  # per chain, burn-in included: the relaxation budget at (c, k)
    n_burnin: int
    shortfall: float  # predicted by the spectral budget at that length; nan when it is off
    value: float
    std: float
    mean_loss: float
    rise: float
    rhat: float
    stationary: bool  # check 1
    in_basin: bool  # check 2
    halving_change: float | None  # check 3's |v - v(c/2)| / |v(c/2)|; None: not judged
    localisation_change: float | None  # check 4's |v - v(k/10)| / |v(k/10)|
    passed: bool
    affordable: bool  # False: the budget exceeds max_draws, the point was not run
    drift_noise: float
    mala_acceptance: float
    below_share: float
    wall_s: float
    tier: str = "gamma-independent"  # or "localised": the fallback tier's points
    halving_noise: float | None = None  # halving_z x the change's Monte Carlo error, relative


@dataclass(frozen=True)
class LLCCalibration:
    points: tuple[PilotPoint, ...]
    chosen: dict[str, Any] | None  # LLCSettings fields to fix, or None: nothing passed
    init_loss: float  # loss at the pilot's checkpoint
    untrained_loss: float
    n_beta: float
    lambda_max: float
    criteria: dict[str, float]
    reason: str = ""  # why nothing was chosen
    kind: str = ""  # what was chosen: "gamma-independent", "localised", or "" (nothing)
    lambda_basin: float = math.nan  # lambda_max at the basin's edge; nan: not measured
    reused: int = 0  # runs (and curvatures) a stopped pilot had finished, read back
    carried: int = 0  # runs lengthened by check 3 from where their chains stopped

    @property
    def localised_stiffness(self) -> float:
        """The localised tier's S: n_beta * the larger of lambda_max at w* and at the basin's
        edge (``stiffness_rise``), the scale of that tier's c and k."""
        lams = [v for v in (self.lambda_max, self.lambda_basin) if math.isfinite(v)]
        return self.n_beta * max(lams) if lams else math.nan

    @property
    def converged(self) -> bool:
        return self.chosen is not None

    def apply(self, settings: LLCSettings) -> LLCSettings:
        """The trial's settings with the chosen step size, localisation and basin bound."""
        if self.chosen is None:
            raise ValueError(f"the LLC calibration found no setting that meets its criteria"
                             f"{': ' + self.reason if self.reason else ''}")
        return replace(settings, **self.chosen)

    def to_json(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return {"chosen": self.chosen, "converged": self.converged, "kind": self.kind,
                "reason": self.reason,
                "init_loss": self.init_loss, "untrained_loss": self.untrained_loss,
                "n_beta": self.n_beta, "lambda_max": clean(self.lambda_max),
                "lambda_basin": clean(self.lambda_basin),
                "n_beta_lambda_max": clean(self.n_beta * self.lambda_max),
                "localised_stiffness": clean(self.localised_stiffness),
                "criteria": self.criteria, "reused_runs": self.reused,
                "carried_runs": self.carried,
                "grid": [{k: clean(v) for k, v in asdict(p).items()} for p in self.points]}


def calibrate_llc(model: nn.Module, batch: LossBatch, settings: LLCSettings,
                  untrained_loss: float, calibration: CalibrationSettings | None = None,
                  lambda_max: float | None = None, store: RunStore | None = None
                  ) -> LLCCalibration:
    """Run the pilot on ``model`` (one checkpoint) and choose (eps, gamma); see the module.

    ``store``: each finished run and curvature is kept there and read back instead of
    computed again (:mod:`emergence_core.measures.llc_runs`).

    ``lambda_max`` (the top Hessian eigenvalue of ``batch.loss`` at the model) is computed by
    Lanczos when not given. When the localised tier is reached and ``stiffness_rise`` is set,
    so is the one at the basin's edge (:func:`~emergence_core.measures.llc.curvature_at_rise`),
    and that tier's grid is relative to the larger.
    """
    c = calibration if calibration is not None else CalibrationSettings()
    ledger = PilotLedger(store)
    with torch.no_grad(), eval_mode(model):
        init_loss = float(batch.loss(model))
    n_beta = n_beta_for(batch, settings)
    if lambda_max is None:  # Lanczos: minutes on a CPU, so kept with the runs
        (lambda_max,) = ledger.kept({
            "lambda_max": c.stiffness_samples, "settings": asdict(settings),
            "init_loss": init_loss},
            lambda: (stiffness(model, batch, settings, c.stiffness_samples)[1],))
    base = replace(settings, max_rise=None)
    max_rise = c.max_rise_fraction * basin_scale(init_loss, untrained_loss)
    criteria = {"rhat_max": settings.rhat_max, "max_rise_fraction": c.max_rise_fraction,
                "max_rise": max_rise, "max_halving_change": c.max_halving_change,
                "halving_z": c.halving_z,
                "max_localisation_change": c.max_localisation_change,
                "relaxation_burnin": c.relaxation_burnin, "relaxation_kept": c.relaxation_kept,
                "max_draws": c.max_draws, "max_shortfall": c.max_shortfall,
                "localised": c.localised, "localised_relaxation": c.localised_relaxation,
                "stiffness_samples": c.stiffness_samples, "stiffness_rise": c.stiffness_rise}
    if not (math.isfinite(lambda_max) and lambda_max > 0):
        return LLCCalibration((), None, init_loss, float(untrained_loss), n_beta,
                              float(lambda_max), criteria,
                              f"the Hessian's top eigenvalue is {lambda_max:.3g}: no positive "
                              "curvature to set the step by (not a minimum)")
    stiff = n_beta * lambda_max
    lambda_basin = math.nan
    tiers = [stiff, stiff]  # S of the gamma-independent tier's points, of the localised's

    def localise() -> None:
        """The localised tier's S from the curvature where its chains go (module docs)."""
        nonlocal lambda_basin
        if c.stiffness_rise is not None:
            (lambda_basin,) = ledger.kept({
                "lambda_basin": [c.stiffness_rise, max_rise, c.stiffness_samples],
                "settings": asdict(settings), "init_loss": init_loss},
                lambda: (curvature_at_rise(model, batch, c.stiffness_rise * max_rise,
                                           settings.seed, c.stiffness_samples)[0],))
            if math.isfinite(lambda_basin) and lambda_basin > lambda_max:
                tiers[1] = n_beta * lambda_basin
    spectrum = None
    if c.max_shortfall is not None:
        from emergence_core.measures.spectrum import hessian_spectrum

        spectrum = hessian_spectrum(model, batch, n_probes=c.spectrum_probes,
                                    n_steps=c.spectrum_steps, seed=settings.seed)
    lengths: dict[tuple[int, int], tuple[int, int, float]] = {}
    tier = len(c.localisations)  # the column of the localised tier's points

    def loc(j: int) -> float:
        return c.localisations[j] if j < tier else float(c.localised)

    def length(i: int, j: int) -> tuple[int, int, float]:
        if (i, j) not in lengths:
            if j == tier:  # long enough for gamma, not the chain's length, to localise
                r = c.localised_relaxation
                lengths[i, j] = (*c.chain_length(c.steps[i], loc(j), settings, (r, r)),
                                 math.nan)
                return lengths[i, j]
            n_draws, n_burnin = c.chain_length(c.steps[i], c.localisations[j], settings)
            short = math.nan
            if spectrum is not None:
                n_draws, n_burnin, short = spectral_length(
                    spectrum, n_beta, c.steps[i] / stiff, c.localisations[j] * stiff, n_draws,
                    n_burnin, c.max_shortfall, c.max_draws)
            lengths[i, j] = (n_draws, n_burnin, short)
        return lengths[i, j]

    runs: dict[tuple[int, int], LLCResult | None] = {}  # None: past max_draws, not run
    # each point's chains as they stopped: a run lengthened by check 3 carries on from them
    carried: dict[tuple[int, int], SGLDChains | None] = {}

    def run(i: int, j: int) -> LLCResult | None:
        if (i, j) not in runs:
            n_draws, n_burnin, _ = length(i, j)
            scale = tiers[j == tier]
            prior = carried.pop((i, j), None)
            if n_draws > c.max_draws:
                runs[i, j] = None
            else:
                runs[i, j], carried[i, j] = ledger.estimate(model, batch, replace(
                    base, eps=c.steps[i] / scale, gamma=loc(j) * scale, n_draws=n_draws,
                    n_burnin=n_burnin), init_loss, prior)
        return runs[i, j]

    halving: dict[tuple[int, int], float | None] = {}
    noise: dict[tuple[int, int], float | None] = {}
    localising: dict[tuple[int, int], float | None] = {}

    def kept_as(i: int, j: int, kept: int) -> tuple[int, int, float] | None:
        """(i, j)'s length with ``kept`` draws after its burn-in; None past max_draws."""
        n_draws, n_burnin, short = length(i, j)
        n = n_burnin + max(kept, n_draws - n_burnin)
        return None if n > c.max_draws else (n, n_burnin, short)

    def judge(i: int, j: int) -> bool | None:
        """Checks 1-3 on (i, j) and its halved step (i + 1, j): both sound, and the change
        within max_halving_change once its Monte Carlo error allows deciding (both runs'
        kept draws double until it does); None when a run is past max_draws."""
        while True:
            a, b = run(i, j), run(i + 1, j)
            if a is None or b is None:
                return None
            halving[i, j], noise[i, j] = change(a, b), change_noise(a, b, c.halving_z)
            if halving[i, j] is None or not (all(sound(a, max_rise))
                                             and all(sound(b, max_rise))):
                return False
            if noise[i, j] is None or noise[i, j] <= c.max_halving_change:
                return halving[i, j] <= c.max_halving_change
            longer = [kept_as(x, j, 2 * (length(x, j)[0] - length(x, j)[1])) for x in (i, i + 1)]
            if None in longer:
                return False  # not decidable within max_draws
            for x, new in zip((i, i + 1), longer, strict=True):
                lengths[x, j] = new
                runs.pop((x, j))

    def halves(i: int, j: int) -> bool | None:
        try:
            return judge(i, j)
        finally:  # (i, j) is not lengthened again (the halved point (i + 1, j) may be)
            carried.pop((i, j), None)

    chosen: tuple[int, int] | None = None
    start = 0  # the largest step still worth trying: a step too large at a stronger
    for j in range(len(c.localisations) - 1):  # localisation is too large at a weaker one
        i_ok = None
        for i in range(start, len(c.steps) - 1):
            ok = halves(i, j)
            if ok is None:  # smaller steps need longer chains still
                break
            if ok:
                i_ok = i
                break
        if i_ok is None:
            continue
        start = i_ok
        if (i_ok, j + 1) not in runs:  # check 4 at the length check 3 decided at
            n_draws, n_burnin, _ = length(i_ok, j)
            lengths[i_ok, j + 1] = kept_as(i_ok, j + 1, n_draws - n_burnin) \
                or length(i_ok, j + 1)
        weaker = run(i_ok, j + 1)
        if weaker is None:  # every weaker localisation is longer still
            break
        localising[i_ok, j] = change(run(i_ok, j), weaker)
        if all(sound(weaker, max_rise)) and localising[i_ok, j] is not None \
                and localising[i_ok, j] <= c.max_localisation_change:
            chosen = (i_ok, j)
            break
    kind = "gamma-independent" if chosen is not None else ""
    if chosen is None and c.localised is not None:
        localise()
        # the localised tier: the largest step whose run and halved run (each relaxed under
        # gamma, so equal in time) pass checks 1-3; check 4 is the stated bound gamma / S = k
        for i in range(len(c.steps) - 1):
            ok = halves(i, tier)
            if ok is None:
                break
            if ok:
                chosen, kind = (i, tier), "localised"
                break
    points = []
    nan = math.nan
    for (i, j), r in runs.items():
        scale = tiers[j == tier]
        head = (c.steps[i], loc(j), c.steps[i] / scale, loc(j) * scale, *length(i, j))
        where = "localised" if j == tier else "gamma-independent"
        if r is None:
            points.append(PilotPoint(*head, nan, nan, nan, nan, nan, False, False, None, None,
                                     False, False, nan, nan, nan, 0.0, where))
            continue
        stationary, in_basin = sound(r, max_rise)
        points.append(PilotPoint(
            *head, r.value, r.std, r.mean_loss, r.loss_rise, r.rhat, stationary, in_basin,
            halving.get((i, j)), localising.get((i, j)), (i, j) == chosen, True, r.drift_noise,
            r.mala_acceptance, r.below_share, r.wall_s, where, noise.get((i, j))))
    fields = None
    reason = ""
    if chosen is not None:
        n_draws, n_burnin, _ = length(*chosen)
        scale = tiers[chosen[1] == tier]
        fields = {"eps": c.steps[chosen[0]] / scale, "gamma": loc(chosen[1]) * scale,
                  "n_draws": n_draws, "n_burnin": n_burnin, "max_rise": max_rise}
    else:
        skipped = sum(r is None for r in runs.values())
        reason = not_a_minimum(runs.values(), init_loss) + (
                  "no step size and localisation passed stationarity, the basin, halving and "
                  "a weaker localisation together"
                  + (f", nor a step size at the localised tier (k = {c.localised})"
                     if c.localised is not None else "") + "; see the grid"
                  + (f" ({skipped} point(s) needed more than max_draws = {c.max_draws} draws "
                     "per chain and were not run)" if skipped else ""))
    return LLCCalibration(tuple(points), fields, init_loss, float(untrained_loss), n_beta,
                          float(lambda_max), criteria, reason, kind, float(lambda_basin),
                          ledger.reused, ledger.carried)
