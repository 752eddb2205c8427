"""Local learning coefficient (LLC) by localised SGLD: the estimator, a reduction over the
draws of the sampler in :mod:`emergence_core.measures.sgld`.

Lau, Furman, Wang, Murfet and Wei, "Quantifying degeneracy in singular models via the
learning coefficient" (2023); devinterp's ``SGLD`` is the reference implementation. The
procedure that chooses the step size and localisation per checkpoint, and the checks every
estimate is judged by, are in :mod:`emergence_core.measures.llc_calibration`; the methods
page (``docs/methods.md``, "Local learning coefficient") states both.

With L_n the mean loss over the n samples and w* the checkpoint, the estimator is

    LLC = n_beta * (E_w[L_n(w)] - L_n(w*)),   n_beta = m / log m,

the expectation over the localised tempered posterior exp(-n_beta L_n(w) - gamma/2 |w - w*|^2),
sampled by SGLD from w_0 = w* (``sample_sgld``: the update, its preconditioner and the
choices of n_beta are stated there).

Reduction order (float64), in :func:`llc_from_trace`: per chain, the mean of its post-burn-in
draws; per-chain LLC = n_beta * (that mean - L_n(w*)); the value is the mean of the per-chain
LLCs over the chains that stayed finite, and ``std`` their sample std (ddof = 1; devinterp
reports ddof = 0). With all chains finite this equals n_beta * (grand mean - L_n(w*)).

Diagnostics carried by every result: split-R-hat over the post-burn-in draws (Gelman et al.,
"Bayesian Data Analysis", 3rd ed., 11.4: each chain cut into halves, the variance between the
2C half-chains against the variance within them, so it sees both chains that disagree and a
drift within one); the rise of the sampled loss above L_n(w*); the share of kept draws below
L_n(w*) (a chain that descends says w* is not a local minimum); the ratio of the drift step
|eps/2 G grad U| to the noise step |sqrt(eps G) xi| (devinterp's gradient-against-noise
check: well above 1 the chain is optimising, not sampling); and, with full batches and a
constant G, the mean Metropolis-adjusted Langevin acceptance probability of the steps taken
(devinterp's MALA callback; near 1 the discretisation is faithful, low it is not). With
minibatches the MALA ratio would compare U across different minibatches, whose noise
(n_beta times the minibatch spread) swamps it: it is reported as nan there, by design.

A chain whose loss turns non-finite is stopped, its remaining draws are nan, and it is left
out of the value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
from torch import nn

from emergence_core.measures.sgld import (
    SAMPLERS,
    LLCSettings,
    SGLDChains,
    SGLDTrace,
    default_n_beta,
    sample_sgld,
)

__all__ = [
    "SAMPLERS",
    "LLCResult",
    "LLCSettings",
    "LossBatch",
    "SGLDChains",
    "SGLDTrace",
    "curvature_at_rise",
    "default_n_beta",
    "estimate_llc",
    "estimate_llc_chains",
    "integrated_time",
    "llc_from_trace",
    "relative_settings",
    "sample_sgld",
    "split_rhat",
]


class LossBatch(Protocol):
    """What the LLC needs of a batch: ``ScoredBatch`` and ``RegressionBatch`` are two."""

    @property
    def n_samples(self) -> int: ...

    @property
    def n_population(self) -> int | None: ...

    def loss(self, model: nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class LLCResult:
    value: float  # mean over finite chains of the per-chain LLC
    std: float  # sample std of the per-chain LLCs (nan with fewer than 2 finite chains)
    per_chain: tuple[float, ...]
    loss_trace: tuple[tuple[float, ...], ...]  # [chains][draws], burn-in included
    init_loss: float
    n_beta: float
    n_burnin: int
    rhat: float  # split-R-hat of the post-burn-in draws
    converged: bool  # all chains finite, rhat <= rhat_max, and a rise in (0, max_rise]
    wall_s: float = math.nan
    mean_loss: float = math.nan  # mean post-burn-in sampled loss over the finite chains
    below_share: float = math.nan  # share of kept draws below L_n(w*)
    drift_noise: float = math.nan  # median over kept draws of |drift step| / |noise step|
    mala_acceptance: float = math.nan  # mean MALA acceptance of kept steps; nan: minibatches
    precond_change: float = math.nan  # RMSProp only: how far G still moved before freezing
    checks: dict[str, bool] = field(default_factory=dict)  # stationary, in_basin
    eps: float = math.nan  # the step size and localisation the chains ran at
    gamma: float = math.nan

    @property
    def loss_rise(self) -> float:
        """How far the chains climbed: mean sampled loss - L_n(w*) (= value / n_beta)."""
        return self.mean_loss - self.init_loss

    @property
    def mcse(self) -> float:
        """Monte Carlo standard error of ``value``: n_beta x that of the mean over the finite
        chains of their post-burn-in means, each chain's variance of the mean being
        s_c^2 tau_c / N_c with tau_c its integrated autocorrelation time
        (:func:`integrated_time`). Disagreement between chains is R-hat's to judge; nan with
        no finite chain or fewer than 4 kept draws."""
        if not self.loss_trace:
            return math.nan
        kept = torch.tensor(self.loss_trace, dtype=torch.float64)[:, self.n_burnin:]
        kept = kept[torch.isfinite(kept).all(dim=1)]
        if kept.shape[0] == 0 or kept.shape[1] < 4:
            return math.nan
        var_mean = sum(float(x.var()) * integrated_time(x) / x.numel() for x in kept)
        return self.n_beta * math.sqrt(var_mean) / kept.shape[0]


def split_rhat(draws: torch.Tensor) -> float:
    """Split-R-hat of [chains, m] draws (m >= 4); nan when it cannot be computed."""
    d = torch.as_tensor(draws, dtype=torch.float64)
    if d.ndim != 2 or d.shape[0] < 1 or d.shape[1] < 4:
        return math.nan
    h = d.shape[1] // 2
    halves = torch.cat([d[:, :h], d[:, -h:]], dim=0)  # [2C, h]; the middle draw of odd m dropped
    within = float(halves.var(dim=1).mean())
    between = h * float(halves.mean(dim=1).var())
    if within == 0:
        return 1.0 if between == 0 else math.inf
    return math.sqrt(((h - 1) / h * within + between / h) / within)


def integrated_time(x: torch.Tensor) -> float:
    """Integrated autocorrelation time tau = 1 + 2 sum_t rho_t of one chain, by Geyer's
    initial monotone sequence (Geyer, "Practical Markov chain Monte Carlo", Statistical
    Science 1992, 3.3): the sums of adjacent pairs of autocorrelations, kept while positive
    and made non-increasing. Its effective sample size is N / tau; an AR(1) chain with
    coefficient phi has tau = (1 + phi) / (1 - phi). At least 1 (anticorrelated draws are
    not credited with more than their number); 1 for a constant chain."""
    x = torch.as_tensor(x, dtype=torch.float64).flatten()
    n = x.numel()
    x = x - x.mean()
    var = float((x * x).mean())
    if n < 4 or var == 0:
        return 1.0
    f = torch.fft.rfft(x, n=2 * n)
    acov = torch.fft.irfft(f * f.conj(), n=2 * n)[:n] / n
    rho = (acov / acov[0]).tolist()
    tau, prev = -1.0, math.inf
    for k in range(0, n - 1, 2):
        pair = rho[k] + rho[k + 1]
        if pair <= 0:
            break
        prev = min(prev, pair)
        tau += 2 * prev
    return max(tau, 1.0)


def llc_from_trace(losses: torch.Tensor, init_loss: float, n_beta: float, n_burnin: int,
                   rhat_max: float = 1.1, max_rise: float | None = None) -> LLCResult:
    """The LLC of a [chains, draws] SGLD loss trace: a pure reduction, in the module's order.

    ``converged`` is the stationarity check (every chain finite, split-R-hat <= rhat_max)
    and the basin check: 0 < mean sampled loss - L_n(w*), and <= ``max_rise`` when given.
    """
    d = torch.as_tensor(losses, dtype=torch.float64)
    if d.ndim != 2 or not 0 <= n_burnin < d.shape[1]:
        raise ValueError(f"need a [chains, draws] trace with 0 <= n_burnin < draws, got shape "
                         f"{tuple(d.shape)} and n_burnin={n_burnin}")
    kept = d[:, n_burnin:]
    finite = torch.isfinite(kept).all(dim=1)
    per_chain = n_beta * (kept.mean(dim=1) - init_loss)  # nan for a failed chain
    good = per_chain[finite]
    value = float(good.mean()) if good.numel() else math.nan
    std = float(good.std()) if good.numel() > 1 else math.nan
    rhat = split_rhat(kept[finite]) if good.numel() else math.nan
    stationary = bool(finite.all()) and math.isfinite(rhat) and rhat <= rhat_max
    mean_loss = float(kept[finite].mean()) if good.numel() else math.nan
    below = float((kept[finite] < init_loss).double().mean()) if good.numel() else math.nan
    rise = mean_loss - init_loss
    # a rise <= 0 says the chains found lower loss: w* is no local minimum and the LLC is not
    # defined there, whatever the bound (a negative "LLC" is never a converged estimate)
    checks = {"stationary": stationary,
              "in_basin": math.isfinite(rise) and rise > 0
              and (max_rise is None or rise <= max_rise)}
    converged = all(checks.values())
    return LLCResult(value=value, std=std, per_chain=tuple(float(v) for v in per_chain),
                     loss_trace=tuple(tuple(float(x) for x in row) for row in d),
                     init_loss=float(init_loss), n_beta=float(n_beta), n_burnin=n_burnin,
                     rhat=rhat, converged=converged, mean_loss=mean_loss, below_share=below,
                     checks=checks)


def _kept_stats(trace: SGLDTrace, n_burnin: int) -> dict[str, float]:
    """Median drift/noise ratio and mean MALA acceptance over the finite kept steps."""
    out = {"drift_noise": math.nan, "mala_acceptance": math.nan}
    if trace.drift_noise is not None:
        dn = trace.drift_noise[:, n_burnin:]
        dn = dn[torch.isfinite(dn)]
        if dn.numel():
            out["drift_noise"] = float(dn.median())
    if trace.mala_logp is not None:
        lp = trace.mala_logp[:, n_burnin:]
        lp = lp[torch.isfinite(lp)]
        if lp.numel():
            out["mala_acceptance"] = float(lp.clamp(max=0).exp().mean())
    return out


def estimate_llc(model: nn.Module, batch: LossBatch,
                 settings: LLCSettings | None = None) -> LLCResult:
    """LLC of ``model`` at its current weights, the loss being ``batch.loss`` over its samples.

    n is ``batch.n_samples``; the default n_beta is n / log n (``n_beta_of``: "batch"; see
    :mod:`emergence_core.measures.sgld` for "train" and "minibatch").
    """
    return estimate_llc_chains(model, batch, settings)[0]


def estimate_llc_chains(model: nn.Module, batch: LossBatch, settings: LLCSettings | None = None,
                        carry_on: SGLDChains | None = None) -> tuple[LLCResult, SGLDChains]:
    """``estimate_llc``, and its chains as they stopped; ``carry_on``: such chains (same model
    and settings but for more draws) advanced from where they stopped, giving the estimate a
    run of the longer length from w* gives at the cost of the extra draws only."""
    s = settings if settings is not None else LLCSettings()
    if s.eps is None or s.gamma is None:
        s = relative_settings(model, batch, s)
    trace = sample_sgld(model, batch.loss, batch.n_samples, s, batch.n_population, carry_on)
    result = llc_from_trace(trace.losses, trace.init_loss, trace.n_beta, s.n_burnin, s.rhat_max,
                            s.max_rise)
    assert trace.chains is not None
    return replace(result, wall_s=trace.wall_s, precond_change=trace.precond_change,
                   eps=float(s.eps), gamma=float(s.gamma),
                   **_kept_stats(trace, s.n_burnin)), trace.chains


RELATIVE_STEP = 0.05  # eps * n_beta * lambda_max when eps is not given
RELATIVE_LOCALISATION = 1e-3  # gamma / (n_beta * lambda_max) when gamma is not given


def n_beta_for(batch: LossBatch, s: LLCSettings) -> float:
    """The inverse temperature ``s`` gives on ``batch`` (see ``n_beta_of``)."""
    n = batch.n_samples
    size = n if s.minibatch_size is None else min(s.minibatch_size, n)
    m = {"minibatch": size, "batch": n, "train": batch.n_population or n}[s.n_beta_of]
    return s.n_beta if s.n_beta is not None else default_n_beta(m)


def stiffness(model: nn.Module, batch: LossBatch, s: LLCSettings,
              samples: int | None = None) -> tuple[float, float]:
    """(n_beta, lambda_max): the inverse temperature and the top Hessian eigenvalue at w*,
    the latter on at most ``samples`` of the batch, evenly spaced (None: all)."""
    return n_beta_for(batch, s), _lambda_max(model, _spaced(batch, samples), s.seed)


def _spaced(batch: LossBatch, samples: int | None) -> LossBatch:
    """At most ``samples`` of the batch, evenly spaced (None: all of it)."""
    n = batch.n_samples
    if samples is not None and n > samples and hasattr(batch, "subset"):
        return batch.subset(torch.linspace(0, n - 1, samples).round().long())
    return batch


def _lambda_max(model: nn.Module, batch: LossBatch, seed: int) -> float:
    """The Hessian's top eigenvalue at the model's weights: the pilot's cheap Lanczos."""
    from emergence_core.measures.hessian import HessianSettings, estimate_hessian

    return float(estimate_hessian(model, batch, HessianSettings(
        lanczos_tol=1e-2, max_hvps=80, trace_probes=0, seed=seed)).lambda_max)


def curvature_at_rise(model: nn.Module, batch: LossBatch, rise: float, seed: int = 0,
                      samples: int | None = None) -> tuple[float, float]:
    """(lambda_max, r): the top Hessian eigenvalue of the batch loss at w* + r u, u a random
    unit direction (seeded by ``seed``) and r the distance along it at which the loss has
    risen by ``rise`` above L(w*); on at most ``samples`` of the batch, evenly spaced.

    What the LLC's chains meet, not what w* shows: plain SGLD's noise is isotropic, so
    directions the loss barely constrains carry the chains out until the loss stops them. At a
    checkpoint trained to near-zero cross-entropy the curvature at w* vanishes with the
    softmax's saturation and grows as the loss does: measured on REV s0 at step 300 (L(w*)
    0.003), lambda_max 0.23 at w* and 84 where the loss has risen 0.7 nats. ``r`` is found by
    doubling from 1 then 30 bisections on the loss along the ray (its first crossing); the
    model is left as it was. (nan, nan) when no r up to 2**14 reaches the rise.
    """
    batch = _spaced(batch, samples)
    params = [p for p in model.parameters() if p.requires_grad]
    w_star = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(seed)
    u = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
    norm = math.sqrt(sum(float((x.double() ** 2).sum()) for x in u))
    u = [x / norm for x in u]

    def place(r: float) -> None:
        with torch.no_grad():
            for p, w, d in zip(params, w_star, u, strict=True):
                p.copy_(w + r * d)

    def risen(r: float) -> bool:
        place(r)
        with torch.no_grad():
            return float(batch.loss(model)) - base >= rise

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            base = float(batch.loss(model))
        lo, hi = 0.0, 1.0
        while not risen(hi):
            lo, hi = hi, 2 * hi
            if hi > 2.0**14:
                return math.nan, math.nan
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if risen(mid) else (mid, hi)
        place(hi)
        return _lambda_max(model, batch, seed), hi
    finally:
        place(0.0)
        model.train(was_training)


def relative_settings(model: nn.Module, batch: LossBatch, s: LLCSettings) -> LLCSettings:
    """``s`` with a missing eps or gamma derived from S = n_beta * lambda_max at the model."""
    n_beta, lam = stiffness(model, batch, s)
    stiff = n_beta * lam
    if not (math.isfinite(stiff) and stiff > 0):
        raise ValueError(f"cannot derive the LLC's eps and gamma: the Hessian's top "
                         f"eigenvalue at the checkpoint is {lam:.3g}; set eps and gamma")
    return replace(s, eps=s.eps if s.eps is not None else RELATIVE_STEP / stiff,
                   gamma=s.gamma if s.gamma is not None else RELATIVE_LOCALISATION * stiff)
