"""Localised SGLD: the sampler whose draws the LLC reduces (docs/methods.md §3.4).

Lau, Furman, Wang, Murfet and Wei, "Quantifying degeneracy in singular models via the
learning coefficient" (2023); devinterp's ``SGLD`` is the reference implementation. The
estimator that reduces the draws to a number is :mod:`emergence_core.measures.llc`.

With L_n the mean loss over the n samples and w* the checkpoint, the chains sample the
localised tempered posterior exp(-n_beta L_n(w) - gamma/2 |w - w*|^2) from w_0 = w*, with
U(w) = n_beta L_B(w) + gamma/2 |w - w*|^2:

    w_{t+1} = w_t - eps/2 * G * grad U(w_t) + sqrt(eps G) * N(0, I),

G = 1 for ``sampler="sgld"``; for ``sampler="rmsprop"`` (Li, Chen, Carlson and Carin,
"Preconditioned stochastic gradient Langevin dynamics", AAAI 2016; devinterp's
``rmsprop_sgld``) G = 1 / (sqrt(V_hat_t) + rms_eps) per coordinate, V_t = alpha V_{t-1} +
(1 - alpha) g_t^2 the running mean of the squared minibatch gradient of L_B (V_0 = 0) and
V_hat_t = V_t / (1 - alpha^t) its bias-corrected value (Kingma and Ba, "Adam", 2015, sec. 3).
Steep directions get smaller steps, flat ones up to 1 / rms_eps times larger.

The preconditioner's step is the stated one. Two pitfalls, both measured: (1) without the
bias correction V_t after t steps is (1 - alpha^t) of its settled value (39% at t = 50 with
alpha = 0.99), so G frozen there is 1.6x too large and every step with it too long (on a
deep linear network: LLC 35.4 against 33.1); (2) a G that keeps tracking the chain
(devinterp's way) makes the chain linger where gradients are large, high on the walls
(+12% on a quadratic, +45% on a quartic potential), since the divergence term of Li et al.
is dropped, which is exact for a constant G only. So by default G adapts, bias-corrected,
during the first half of the burn-in and is then frozen: the kept draws are exact SGLD with
a constant diagonal preconditioner (as Stan adapts its mass matrix in warm-up), and how far G
still moved over the last quarter of its window is reported (``precond_change``).
``rms_freeze=False, rms_bias_correction=False`` is devinterp's ``rmsprop_sgld`` step for step.

n_beta choices (``n_beta=None``, then m / log m with m set by ``n_beta_of``): "batch"
(default), m = the n samples the loss L_n is scored on, Watanabe's WBIC temperature for the
posterior the chains sample; "train", m = the size of the training set the batch was drawn
from (``ScoredBatch.n_population``; a batch without one falls back to n); "minibatch",
m = the SGLD minibatch (devinterp's default convention). "train" is right only when the
batch is the training set: on a probe batch of n << m samples, L_n's own slope and curvature
at w* (the batch's minimiser lies O(1/sqrt n) away) are multiplied by n_beta, and the chains
descend below L_n(w*) (a regular model's "LLC" is d / 2 - (m / log m) d / n, negative; on
cpu-s0's checkpoints, probe batches of 128 from training sets of up to 45,000, 70% of draws
fell below L(w*) at every setting). ``tests/test_llc_temperature.py`` holds both.

L_B the mean loss on a minibatch B of ``minibatch_size`` samples (an epoch-wise reshuffle
with the chain's own generator, last partial batch dropped; the full batch when None).
Draw t is L_B(w_t), the loss at which step t's gradient is taken (so draw 0 is L_B(w*)), as
in devinterp; the first ``n_burnin`` draws of each chain are excluded from the mean.

Chains at the cost of one: with ``batch_chains=True`` the chains advance as one computation,
their parameters stacked along a leading chain axis and the gradient taken by
``torch.func.vmap(grad(functional_call(...)))``; every chain keeps its own noise and
minibatch generators, so the draws equal those of one chain at a time (``batch_chains=False``)
to float rounding. The default (None) batches on an accelerator only: on one CPU thread a
small transformer is compute-bound and the vmapped step measured 1.2x slower than the loop
(BENCHMARKS.md). A model whose forward pass vmap rejects (data-dependent Python) falls back
to the loop with a warning.

A chain whose loss turns non-finite is stopped and its remaining draws are nan (the
estimator leaves it out of the value).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from emergence_core.measure_settings import N_BETA_OF, SAMPLERS, LLCSettings

__all__ = [
    "N_BETA_OF",
    "SAMPLERS",
    "LLCSettings",
    "LossFn",
    "SGLDTrace",
    "default_n_beta",
    "sample_sgld",
]

_BATCH_STREAM = 2**40  # offset that keeps minibatch seeds apart from noise seeds


LossFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
"""(model, sample_ids[int64, m]) -> the scalar mean loss of those samples."""


@dataclass(frozen=True, eq=False)
class SGLDTrace:
    """What the sampler produces: the raw draws and per-step diagnostics, before reduction."""

    losses: torch.Tensor  # [chains, draws] float64 minibatch loss at w_t; nan after a failure
    init_loss: float  # L_n(w*) over all n samples
    n_beta: float
    n: int
    wall_s: float
    drift_noise: torch.Tensor | None = None  # [chains, draws] |eps/2 G grad U| / |noise step|
    mala_logp: torch.Tensor | None = None  # [chains, draws] log MALA acceptance of step t
    precond_change: float = math.nan  # relative change of G over its last quarter window
    batched: bool = False  # whether the chains ran as one vmapped computation
    chains: SGLDChains | None = None  # the chains as they stopped, to carry on (in memory)


@dataclass
class SGLDChains:
    """Chains as they stopped (``SGLDTrace.chains``), for ``sample_sgld(carry_on=...)`` to
    run more draws of: held in memory only, with the model copy they sample."""

    runs: list[_Run]
    batched: bool
    init_loss: float
    n_beta: float
    settings: LLCSettings  # as run; only n_draws may grow when carried on
    wall_s: float  # the whole run's time so far


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


class _Bound(nn.Module):
    """model + loss as one module, so functional_call can swap the model's parameters."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model, ids)


GradFn = Callable[[list[torch.Tensor], torch.Tensor], tuple[list[torch.Tensor], torch.Tensor]]
"""(stacked params [C, *shape] each, ids [C, m]) -> (grads [C, *shape] each, losses [C])."""


def _vmapped_grad(work: nn.Module, names: list[str], loss_fn: LossFn) -> GradFn:
    bound = _Bound(work, loss_fn)
    keys = [f"model.{n}" for n in names]

    def one(params: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
        return functional_call(bound, params, (ids,))

    batched = vmap(grad_and_value(one), in_dims=(0, 0))

    def fn(stacked: list[torch.Tensor], ids: torch.Tensor
           ) -> tuple[list[torch.Tensor], torch.Tensor]:
        grads, losses = batched(dict(zip(keys, stacked, strict=True)), ids)
        return [grads[k] for k in keys], losses

    return fn


def _looped_grad(params: list[nn.Parameter], loss_fn: LossFn, work: nn.Module) -> GradFn:
    def fn(stacked: list[torch.Tensor], ids: torch.Tensor
           ) -> tuple[list[torch.Tensor], torch.Tensor]:
        grads: list[list[torch.Tensor]] = [[] for _ in params]
        losses = []
        for c in range(ids.shape[0]):
            with torch.no_grad():
                for p, s in zip(params, stacked, strict=True):
                    p.copy_(s[c])
            with torch.enable_grad():
                loss = loss_fn(work, ids[c])
                g = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
            losses.append(loss.detach())
            for i, gi in enumerate(g):
                grads[i].append(gi)
        return [torch.stack(g) for g in grads], torch.stack(losses)

    return fn


def _sq(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-chain squared norm over a list of [C, *shape] tensors: [C] float64."""
    return sum(torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1).double() ** 2
               for t in tensors)


class _Run:
    """``chains`` (their indices) advancing together: the sampler's one loop, resumable.

    ``advance(n_draws)`` runs the draws up to ``n_draws``; called again with more, it carries
    on from where it stopped. Every chain's generators are its own and draw the same numbers
    whatever the length asked, so a run advanced to N draws is the run started with N
    (``test_a_run_carried_on_draws_what_a_longer_run_draws``): the LLC's pilot lengthens its
    chains this way instead of running them again from w*.
    """

    def __init__(self, grad_fn: GradFn, w_star: list[torch.Tensor], chains: list[int],
                 s: LLCSettings, n: int, size: int, n_beta: float, full_batch: bool) -> None:
        c_n, device = len(chains), w_star[0].device
        self.grad_fn, self.w_star, self.s, self.n_beta = grad_fn, w_star, s, n_beta
        self.full_batch, self.device, self.c_n = full_batch, device, c_n
        self.noise_gens = [torch.Generator(device=device).manual_seed(s.seed + c)
                           for c in chains]
        self.batches = [_minibatches(n, size, torch.Generator().manual_seed(
            _BATCH_STREAM + s.seed + c)) for c in chains]
        self.stacked = [w.unsqueeze(0).repeat(c_n, *([1] * w.ndim)) for w in w_star]
        self.losses = torch.full((c_n, 0), math.nan, dtype=torch.float64)
        self.drift_noise = self.losses.clone()
        self.mala = self.losses.clone()
        self.alive = torch.ones(c_n, dtype=torch.bool)
        self.rmsprop = s.sampler == "rmsprop"
        self.freeze_at = (s.n_burnin - 1) // 2 if s.rms_freeze and s.n_burnin >= 2 else None
        self.look_back = None if self.freeze_at is None \
            else max(0, self.freeze_at - max(1, (self.freeze_at + 1) // 4))
        self.square_avg = [torch.zeros_like(p) for p in self.stacked] if self.rmsprop else []
        self.precond: list[torch.Tensor] | None = None if self.rmsprop \
            else [torch.ones_like(p) for p in self.stacked]
        self.earlier: list[torch.Tensor] | None = None
        self.change = math.nan
        self.prev: tuple | None = None  # (U, grad U, noise) of the last step, for MALA
        self.t = 0  # draws run
        self.wall_s = 0.0

    def advance(self, n_draws: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """(losses, drift / noise, MALA log-acceptance, each [chains, n_draws]; the
        preconditioner's change) after running the draws up to ``n_draws``."""
        started = time.perf_counter()
        grow = n_draws - self.losses.shape[1]
        if grow > 0:
            pad = torch.full((self.c_n, grow), math.nan, dtype=torch.float64)
            self.losses, self.drift_noise, self.mala = (
                torch.cat([x, pad], dim=1) for x in (self.losses, self.drift_noise, self.mala))
        s, n_beta, device, c_n = self.s, self.n_beta, self.device, self.c_n
        stacked, w_star, alive = self.stacked, self.w_star, self.alive
        losses, drift_noise, mala = self.losses, self.drift_noise, self.mala
        rmsprop, freeze_at, square_avg = self.rmsprop, self.freeze_at, self.square_avg
        half_eps, root_eps = s.eps / 2, math.sqrt(s.eps)
        while self.t < n_draws and bool(alive.any()):
            t = self.t
            self.t += 1
            ids = torch.stack([next(b) for b in self.batches])
            grads, loss = self.grad_fn(stacked, ids)
            loss = loss.detach().double().cpu()
            bad = ~torch.isfinite(loss)
            if bool((bad & alive).any()):
                alive &= ~bad
                with torch.no_grad():  # a dead chain restarts at w* so it cannot poison the rest
                    for p, w in zip(stacked, w_star, strict=True):
                        p[~alive.to(device)] = w
            if not bool(alive.any()):
                break
            losses[alive, t] = loss[alive]
            adapting = rmsprop and (freeze_at is None or t <= freeze_at)
            with torch.no_grad():
                if adapting:
                    corr = 1 - s.rms_alpha ** (t + 1) if s.rms_bias_correction else 1.0
                    for v, g in zip(square_avg, grads, strict=True):
                        v.mul_(s.rms_alpha).addcmul_(g, g, value=1 - s.rms_alpha)
                    self.precond = [(v / corr).sqrt_().add_(s.rms_eps).reciprocal_()
                                    for v in square_avg]
                    if t == self.look_back:
                        self.earlier = [p.clone() for p in self.precond]
                    if t == freeze_at and self.earlier is not None:
                        self.change = float(
                            _sq([a - b for a, b in zip(self.precond, self.earlier, strict=True)])
                            .sum().sqrt() / _sq(self.precond).sum().sqrt())
                precond = self.precond
                assert precond is not None
                diff = [p - w for p, w in zip(stacked, w_star, strict=True)]
                grad_u = [g.mul_(n_beta).add_(d, alpha=s.gamma)  # grads are fresh: in place
                          for g, d in zip(grads, diff, strict=True)]
                roots = [G.sqrt() for G in precond] if rmsprop else []
                drift = [gu * G for gu, G in zip(grad_u, precond, strict=True)] if rmsprop \
                    else grad_u
                # chain c's noise from its own generator, one randn per parameter in order
                if c_n == 1:
                    noise = [torch.randn(p.shape[1:], generator=self.noise_gens[0],
                                         device=device, dtype=p.dtype).unsqueeze(0)
                             for p in stacked]
                else:
                    noise = [torch.stack([torch.randn(p.shape[1:], generator=gen, device=device,
                                                      dtype=p.dtype) for gen in self.noise_gens])
                             for p in stacked]
                scaled = [xi * r for xi, r in zip(noise, roots, strict=True)] if rmsprop \
                    else noise
                drift_noise[:, t] = (half_eps * _sq(drift).sqrt()
                                     / (root_eps * _sq(scaled).sqrt())).cpu()
                constant_g = not adapting
                if self.full_batch and constant_g:
                    u = n_beta * loss + s.gamma / 2 * _sq(diff).cpu()
                    if self.prev is not None:
                        u0, gu0, xi0 = self.prev
                        # w_t - w_{t-1} + eps/2 G grad U_{t-1} = sqrt(eps G) xi_{t-1}; the
                        # reverse proposal's residual is eps/2 G (grad U_{t-1} + grad U_t)
                        # - sqrt(eps G) xi
                        back = [half_eps * G * (a + b) - root_eps * G.sqrt() * x
                                for G, a, b, x in zip(precond, gu0, grad_u, xi0, strict=True)]
                        back_sq = sum((r.pow(2) / G).reshape(r.shape[0], -1).double().sum(dim=1)
                                      for r, G in zip(back, precond, strict=True)).cpu()
                        fwd_sq = s.eps * _sq(xi0).cpu()
                        mala[:, t - 1] = -(u - u0) - (back_sq - fwd_sq) / (2 * s.eps)
                    self.prev = (u, grad_u, noise)
                else:
                    self.prev = None
                for p, d, x in zip(stacked, drift, scaled, strict=True):
                    p.add_(d, alpha=-half_eps).add_(x, alpha=root_eps)
        self.wall_s += time.perf_counter() - started
        return (losses[:, :n_draws], drift_noise[:, :n_draws], mala[:, :n_draws],
                self.change)


def _carry_on(chains: SGLDChains, s: LLCSettings, n: int) -> SGLDTrace:
    if replace(chains.settings, n_draws=s.n_draws) != s or s.n_draws < chains.settings.n_draws:
        raise ValueError("carry_on: chains carry on with more draws at the same settings "
                         f"only; they ran {chains.settings}, asked {s}")
    start = time.perf_counter()
    if chains.batched:  # the kernel the chains ran under (sample_sgld)
        with sdpa_kernel(SDPBackend.MATH):
            parts = [r.advance(s.n_draws) for r in chains.runs]
    else:
        parts = [r.advance(s.n_draws) for r in chains.runs]
    chains.settings, chains.wall_s = s, chains.wall_s + time.perf_counter() - start
    return _trace(parts, chains, n)


def _trace(parts: list[tuple], chains: SGLDChains, n: int) -> SGLDTrace:
    """The trace of ``chains`` from their runs' ``advance`` outputs (``parts``, in order)."""
    change = max((p[3] for p in parts), key=lambda v: -1 if math.isnan(v) else v)
    return SGLDTrace(losses=torch.cat([p[0] for p in parts]), init_loss=chains.init_loss,
                     n_beta=chains.n_beta, n=n, wall_s=chains.wall_s,
                     drift_noise=torch.cat([p[1] for p in parts]),
                     mala_logp=torch.cat([p[2] for p in parts]), precond_change=change,
                     batched=chains.batched, chains=chains)


def sample_sgld(model: nn.Module, loss_fn: LossFn, n: int,
                settings: LLCSettings | None = None, n_population: int | None = None,
                carry_on: SGLDChains | None = None) -> SGLDTrace:
    """Run ``n_chains`` localised SGLD chains from w* on a copy of ``model`` (never the model).

    The copy is in eval mode; every parameter that requires grad is sampled. Chain c has
    its own generators: noise on the parameters' device seeded with ``seed + c`` (one
    ``randn`` per parameter tensor per step, in ``parameters()`` order: devinterp's
    order), minibatches on the CPU seeded with ``2**40 + seed + c``. The global RNG is
    not used. ``carry_on``: an earlier trace's ``chains`` (same model, same settings but for
    more draws), advanced from where they stopped instead of run again from w*: the draws are
    those a run of the longer length from w* draws.
    """
    s = settings if settings is not None else LLCSettings()
    if s.eps is None or s.gamma is None:
        raise ValueError("sample_sgld needs eps and gamma; estimate_llc derives missing ones "
                         "from the checkpoint (relative_settings)")
    if carry_on is not None:
        return _carry_on(carry_on, s, n)
    start = time.perf_counter()
    size = n if s.minibatch_size is None else min(s.minibatch_size, n)
    m = {"minibatch": size, "batch": n, "train": n_population or n}[s.n_beta_of]
    n_beta = s.n_beta if s.n_beta is not None else default_n_beta(m)
    work = copy.deepcopy(model).eval()
    named = [(k, p) for k, p in work.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("model has no parameter that requires grad")
    names, params = [k for k, _ in named], [p for _, p in named]
    w_star = [p.detach().clone() for p in params]
    with torch.no_grad():
        init_loss = float(loss_fn(work, torch.arange(n)))
    full = size >= n
    want = s.batch_chains if s.batch_chains is not None else w_star[0].device.type != "cpu"
    batched = want and s.n_chains > 1
    if batched:
        try:  # the math kernel: SDPA's fused CPU kernels have no batching rule under vmap
            with sdpa_kernel(SDPBackend.MATH):
                runs = [_Run(_vmapped_grad(work, names, loss_fn), w_star,
                             list(range(s.n_chains)), s, n, size, n_beta, full)]
                parts = [runs[0].advance(s.n_draws)]
        except Exception as err:  # vmap rejects data-dependent Python in some models
            warnings.warn(f"batched SGLD chains failed under vmap ({err!r}); running the "
                          "chains one at a time", RuntimeWarning, stacklevel=2)
            batched = False
    if not batched:
        runs = [_Run(_looped_grad(params, loss_fn, work), w_star, [c], s, n, size, n_beta,
                     full) for c in range(s.n_chains)]
        parts = [r.advance(s.n_draws) for r in runs]
    chains = SGLDChains(runs, batched, init_loss, n_beta, s, time.perf_counter() - start)
    return _trace(parts, chains, n)
