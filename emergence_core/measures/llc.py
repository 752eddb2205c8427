"""Local learning coefficient (LLC) by localised SGLD.

Lau, Furman, Wang, Murfet and Wei, "Quantifying degeneracy in singular models via the
learning coefficient" (2023); devinterp's ``SGLD`` is the reference implementation.

With L_n the mean loss over the n samples and w* the checkpoint, the estimator is

    LLC = n_beta * (E_w[L_n(w)] - L_n(w*)),   n_beta = n / log n by default,

the expectation over the localised tempered posterior exp(-n_beta L_n(w) - gamma/2 |w - w*|^2),
sampled by SGLD from w_0 = w*:

    w_{t+1} = w_t - eps/2 * (n_beta * grad L_B(w_t) + gamma * (w_t - w*)) + N(0, eps I),

or, with ``sampler="rmsprop"`` (Li, Chen, Carlson and Carin, "Preconditioned stochastic
gradient Langevin dynamics", AAAI 2016; devinterp's ``rmsprop_sgld``), the same step
preconditioned per coordinate by G = 1 / (sqrt(V_t) + rms_eps), V_t the running mean of
the squared minibatch gradient (V_0 = 0, V_t = alpha V_{t-1} + (1 - alpha) g_t^2):

    w_{t+1} = w_t - eps/2 * G * (n_beta * g_t + gamma * (w_t - w*)) + sqrt(eps G) * N(0, I).

Steep directions (large gradients) get smaller steps, flat ones up to 1 / rms_eps times
larger: one eps no longer has to suit both, which is what lets a chain on a transformer
equilibrate without leaving its basin. Like devinterp, the correction term of Li et al.
(the divergence of G) is dropped, which is exact for a constant G only. Pitfall, measured
on the known-truth potentials of the tests: with G tracking the chain (devinterp's way) the
chain lingers where gradients are large, i.e. high on the walls, and the estimate ran 12%
(quadratic) to 45% (quartic) high. So by default (``rms_freeze=True``) G adapts during the
first half of the burn-in only and is then frozen, the second half letting the chains settle
under the fixed G: the kept draws are exact SGLD with a constant diagonal preconditioner (as
Stan adapts its mass matrix in warm-up), and within 10% of the truth in the tests.
``rms_freeze=False`` is devinterp's ``rmsprop_sgld`` step for step.

n_beta choices (``n_beta=None``, then m / log m with m set by ``n_beta_of``): "train"
(default), m = the size of the training set the batch was drawn from
(``ScoredBatch.n_population``; about 45,000 samples and n_beta 4,200 for COPY's three levels),
the temperature of the posterior the model was trained on, as in Lau et al. and devinterp's
examples; "batch", m = the n samples the loss is scored on (the probe batch: 1,024 samples,
147.7; a hand-made batch with no ``n_population`` falls back to this); "minibatch", m = the
SGLD minibatch (devinterp's older default: 9.2 for 32). The posterior's expected rise in loss
is about LLC / n_beta, so at 147.7 a model with an LLC of a few hundred *must* leave its
basin (measured: mean sampled loss 2.3 at an LLC near 340 on COPY s0); a larger n_beta keeps
the chains near w* but makes the drift stiffer, so it needs a smaller eps (calibration).

L_B the mean loss on a minibatch B of ``minibatch_size`` samples (an epoch-wise reshuffle
with the chain's own generator, last partial batch dropped; the full batch when None).
Draw t is L_B(w_t), the loss at which step t's gradient is taken (so draw 0 is L_B(w*)), as
in devinterp; the first ``n_burnin`` draws of each chain are excluded from the mean.

Reduction order (float64), in :func:`llc_from_trace`: per chain, the mean of its post-burn-in
draws; per-chain LLC = n_beta * (that mean - L_n(w*)); the value is the mean of the per-chain
LLCs over the chains that stayed finite, and ``std`` their sample std (ddof = 1; devinterp
reports ddof = 0). With all chains finite this equals n_beta * (grand mean - L_n(w*)).

Convergence flag: split-R-hat (Gelman et al., "Bayesian Data Analysis", 3rd ed., 11.4) over
the post-burn-in draws: each chain is cut into halves, and R-hat compares the variance
between the 2C half-chains with the variance within them. It detects both chains that
disagree and a drift within a chain (the halves differ). ``converged`` is True when every
chain stayed finite and R-hat <= ``rhat_max`` (1.1 by default).

Pitfalls: devinterp's ``llc()`` averages over *all* steps, burn-in included (its
``num_burnin_steps`` are simply extra steps), so compare like with like; eps too large
makes chains diverge or inflates the estimate (discretisation bias grows like
eps * curvature * n_beta); in directions the loss hardly curves only the localisation pulls,
with relaxation time 2 / (eps * gamma) steps, 200 at the defaults, longer than the 100
burn-in draws, so an under-trained or very flat checkpoint can report converged = False at
the defaults (raise eps or n_draws); a chain whose loss turns non-finite is stopped, its
remaining draws are nan, and it is left out of the value.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn

from emergence_core.measures.batch import ScoredBatch

__all__ = [
    "SAMPLERS",
    "LLCResult",
    "LLCSettings",
    "SGLDTrace",
    "default_n_beta",
    "estimate_llc",
    "llc_from_trace",
    "sample_sgld",
    "split_rhat",
]

_BATCH_STREAM = 2**40  # offset that keeps minibatch seeds apart from noise seeds

SAMPLERS = ("sgld", "rmsprop")
N_BETA_OF = ("train", "batch", "minibatch")

LossFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
"""(model, sample_ids[int64, m]) -> the scalar mean loss of those samples."""


@dataclass(frozen=True)
class LLCSettings:
    # eps and gamma: what calibration chose on COPY s0 (trained, n_beta 4,200, RMSProp);
    # the first defaults (1e-4, 100, plain SGLD, n_beta 147.7) left the basin
    eps: float = 4e-6  # SGLD step size
    gamma: float = 1000.0  # localisation strength
    n_chains: int = 4
    n_draws: int = 200  # per chain, burn-in included
    n_burnin: int = 100  # first draws of each chain excluded from the mean
    n_beta: float | None = None  # inverse temperature; None: see n_beta_of
    n_beta_of: str = "train"  # n_beta = m / log m, m: "train", "batch" or "minibatch"
    minibatch_size: int | None = 32  # None (or >= n): full batch
    rhat_max: float = 1.1
    seed: int = 0
    sampler: str = "rmsprop"  # "rmsprop" (preconditioned, see the module docstring) or "sgld"
    rms_alpha: float = 0.99  # RMSProp's running-average decay (devinterp's default)
    rms_eps: float = 0.1  # RMSProp's floor under sqrt(V) (devinterp's default)
    rms_freeze: bool = True  # freeze G after the burn-in (exact); False: devinterp's step

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        if self.n_beta_of not in N_BETA_OF:
            raise ValueError(f"n_beta_of must be one of {', '.join(N_BETA_OF)}, got "
                             f"{self.n_beta_of!r}")
        if not 0 <= self.rms_alpha < 1 or not self.rms_eps > 0:
            raise ValueError(f"need 0 <= rms_alpha < 1 and rms_eps > 0, got "
                             f"{self.rms_alpha}, {self.rms_eps}")
        if not self.eps > 0 or self.gamma < 0:
            raise ValueError(f"need eps > 0 and gamma >= 0, got eps={self.eps}, gamma={self.gamma}")
        if self.n_chains < 1 or not 0 <= self.n_burnin < self.n_draws:
            raise ValueError(f"need n_chains >= 1 and 0 <= n_burnin < n_draws, got "
                             f"{self.n_chains}, {self.n_burnin}, {self.n_draws}")
        if self.n_beta is not None and not self.n_beta > 0:
            raise ValueError(f"n_beta must be positive or None, got {self.n_beta}")
        if self.minibatch_size is not None and self.minibatch_size < 1:
            raise ValueError(f"minibatch_size must be >= 1 or None, got {self.minibatch_size}")


@dataclass(frozen=True, eq=False)
class SGLDTrace:
    """What the sampler produces: the raw draws, before any reduction."""

    losses: torch.Tensor  # [chains, draws] float64 minibatch loss at w_t; nan after a failure
    init_loss: float  # L_n(w*) over all n samples
    n_beta: float
    n: int
    wall_s: float


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
    converged: bool  # all chains finite and rhat <= rhat_max
    wall_s: float = math.nan
    mean_loss: float = math.nan  # mean post-burn-in sampled loss over the finite chains

    @property
    def loss_rise(self) -> float:
        """How far the chains climbed: mean sampled loss - L_n(w*) (= value / n_beta)."""
        return self.mean_loss - self.init_loss


def default_n_beta(n: int) -> float:
    """n / log n, the inverse temperature of Watanabe's WBIC, used by Lau et al."""
    if n < 2:
        raise ValueError(f"n_beta = n / log n needs n >= 2, got n = {n}")
    return n / math.log(n)


def _minibatches(n: int, size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless minibatches of sample ids: reshuffled each epoch, last partial batch dropped."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - size + 1, size):
            yield perm[i:i + size]


def sample_sgld(model: nn.Module, loss_fn: LossFn, n: int,
                settings: LLCSettings | None = None, n_population: int | None = None
                ) -> SGLDTrace:
    """Run ``n_chains`` localised SGLD chains from w* on a copy of ``model`` (never the model).

    The copy is in eval mode; every parameter that requires grad is sampled. Chain c has
    its own generators: noise on the parameters' device seeded with ``seed + c`` (one
    ``randn`` per parameter tensor per step, in ``parameters()`` order: devinterp's
    order), minibatches on the CPU seeded with ``2**40 + seed + c``. The global RNG is
    not used.
    """
    s = settings if settings is not None else LLCSettings()
    start = time.perf_counter()
    size = n if s.minibatch_size is None else min(s.minibatch_size, n)
    m = {"minibatch": size, "batch": n, "train": n_population or n}[s.n_beta_of]
    n_beta = s.n_beta if s.n_beta is not None else default_n_beta(m)
    work = copy.deepcopy(model).eval()
    params = [p for p in work.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no parameter that requires grad")
    w_star = [p.detach().clone() for p in params]
    device = params[0].device
    all_ids = torch.arange(n)
    with torch.no_grad():
        init_loss = float(loss_fn(work, all_ids))
    losses = torch.full((s.n_chains, s.n_draws), math.nan, dtype=torch.float64)
    half_eps, noise_scale = s.eps / 2, math.sqrt(s.eps)
    rmsprop = s.sampler == "rmsprop"
    freeze_at = (s.n_burnin - 1) // 2 if s.n_burnin >= 2 else s.n_draws  # last adapting step
    for c in range(s.n_chains):
        # chain c's noise is seeded with seed + c, as devinterp seeds chain c with
        # init_seed + c: with full batches both samplers then draw the same noise
        noise_gen = torch.Generator(device=device).manual_seed(s.seed + c)
        batch_gen = torch.Generator().manual_seed(_BATCH_STREAM + s.seed + c)
        batches = _minibatches(n, size, batch_gen)
        with torch.no_grad():
            for p, w0 in zip(params, w_star, strict=True):
                p.copy_(w0)
        square_avg = [torch.zeros_like(p) for p in params] if rmsprop else []
        frozen: list[torch.Tensor] = [torch.ones_like(p) for p in params] if rmsprop else []
        for t in range(s.n_draws):
            with torch.enable_grad():
                loss = loss_fn(work, next(batches))
                grads = torch.autograd.grad(loss, params, allow_unused=True,
                                            materialize_grads=True)
            value = float(loss.detach())
            if not math.isfinite(value):
                break
            losses[c, t] = value
            # with rms_freeze, G adapts during the first half of the burn-in, then stays
            adapting = not s.rms_freeze or t <= freeze_at
            with torch.no_grad():
                for i, (p, g, w0) in enumerate(zip(params, grads, w_star, strict=True)):
                    noise = torch.randn(p.shape, generator=noise_gen, device=device,
                                        dtype=p.dtype)
                    if rmsprop:  # G = 1 / (sqrt(V) + rms_eps), V updated before use
                        if adapting:
                            v = square_avg[i].mul_(s.rms_alpha).addcmul_(
                                g, g, value=1 - s.rms_alpha)
                            precond = v.sqrt().add_(s.rms_eps).reciprocal_()
                            if s.rms_freeze and t == freeze_at:
                                frozen[i] = precond.clone()
                        else:
                            precond = frozen[i].clone()
                        drift = g.mul(n_beta).add_(p - w0, alpha=s.gamma).mul_(precond)
                        noise.mul_(precond.sqrt_())
                    else:
                        drift = g.mul(n_beta).add_(p - w0, alpha=s.gamma)
                    p.add_(drift, alpha=-half_eps)
                    p.add_(noise, alpha=noise_scale)
    return SGLDTrace(losses=losses, init_loss=init_loss, n_beta=n_beta, n=n,
                     wall_s=time.perf_counter() - start)


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


def llc_from_trace(losses: torch.Tensor, init_loss: float, n_beta: float, n_burnin: int,
                   rhat_max: float = 1.1) -> LLCResult:
    """The LLC of a [chains, draws] SGLD loss trace: a pure reduction, in the module's order."""
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
    converged = bool(finite.all()) and math.isfinite(rhat) and rhat <= rhat_max
    mean_loss = float(kept[finite].mean()) if good.numel() else math.nan
    return LLCResult(value=value, std=std, per_chain=tuple(float(v) for v in per_chain),
                     loss_trace=tuple(tuple(float(x) for x in row) for row in d),
                     init_loss=float(init_loss), n_beta=float(n_beta), n_burnin=n_burnin,
                     rhat=rhat, converged=converged, mean_loss=mean_loss)


def estimate_llc(model: nn.Module, batch: ScoredBatch,
                 settings: LLCSettings | None = None) -> LLCResult:
    """LLC of ``model`` at its current weights, the loss being ``batch.loss`` over its samples.

    n is ``batch.n_samples``; the default n_beta is m / log m over ``batch.n_population``, the
    training set the batch was drawn from (n when the batch does not say).
    """
    s = settings if settings is not None else LLCSettings()
    trace = sample_sgld(model, batch.loss, batch.n_samples, s, batch.n_population)
    result = llc_from_trace(trace.losses, trace.init_loss, trace.n_beta, s.n_burnin, s.rhat_max)
    return replace(result, wall_s=trace.wall_s)
