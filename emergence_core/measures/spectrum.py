"""The Hessian's spectral density by stochastic Lanczos quadrature, on the Hessian-vector
products of :class:`~emergence_core.measures.hessian.HessianOperator`.

The LLC pilot's spectral budget (docs/methods.md §3.4) reads chain lengths off it: the
closed form of SGLD chains on the quadratic model of that spectrum (``predicted_llc``) and
the lengths that bring them within a stated shortfall of stationarity (``spectral_length``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from emergence_core.measures.batch import ScoredBatch
from emergence_core.measures.hessian import HessianOperator, orthogonalised

__all__ = ["hessian_spectrum", "predicted_llc", "spectral_density", "spectral_length"]


def spectral_density(op: HessianOperator, generator: torch.Generator, *, n_probes: int = 4,
                     n_steps: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """The Hessian's spectral density by stochastic Lanczos quadrature (Golub and Meurant,
    "Matrices, Moments and Quadrature", 2010; Ubaru, Chen and Saad, SIAM J. Matrix Anal.
    Appl. 38, 2017; Ghorbani, Krishnan and Xiao, "An investigation into neural net
    optimization via Hessian eigenvalue density", 2019).

    Per Rademacher probe z, ``n_steps`` Lanczos steps from z / |z| (full
    reorthogonalisation, twice) give a tridiagonal T = S diag(theta) S^T; the Gauss
    quadrature z^T f(H) z / |z|^2 ~ sum_k S_0k^2 f(theta_k) is exact for polynomials of degree
    below 2 n_steps. Returns float64 (nodes, weights) on the CPU, the weights scaled so that
    sum_k w_k f(theta_k) estimates tr f(H) (they sum to the parameter count P). A probe
    whose Krylov space is invariant stops early, with exact nodes.
    """
    if n_probes < 1 or n_steps < 1:
        raise ValueError(f"need n_probes >= 1 and n_steps >= 1, got {n_probes}, {n_steps}")
    n = op.n_params
    m = min(n_steps, n)
    tiny = torch.finfo(op.dtype).eps
    nodes, weights = [], []
    for _ in range(n_probes):
        z = torch.randint(0, 2, (n,), generator=generator, dtype=torch.float64) * 2 - 1
        basis = torch.empty(m, n, dtype=op.dtype, device=op.device)
        basis[0] = (z / z.norm()).to(op.device, op.dtype)
        alpha, beta = [], []
        for j in range(m):
            w, h = orthogonalised(op.matvec(basis[j]), basis[: j + 1])
            alpha.append(float(h[j]))
            b = float(w.norm())
            if not math.isfinite(b):
                raise ValueError("the Hessian-vector product is not finite at this checkpoint")
            if j + 1 == m or b <= 10 * tiny * max(abs(a) for a in alpha):
                break
            beta.append(b)
            basis[j + 1] = w / b
        k = len(alpha)
        t = torch.diag(torch.tensor(alpha, dtype=torch.float64))
        if k > 1:
            off = torch.tensor(beta[: k - 1], dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        theta, vecs = torch.linalg.eigh(t)
        nodes.append(theta)
        weights.append(vecs[0] ** 2 * (n / n_probes))
    return torch.cat(nodes), torch.cat(weights)


def hessian_spectrum(model: nn.Module, batch: ScoredBatch, *, n_probes: int = 4,
                     n_steps: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(nodes, weights) of :func:`spectral_density` for the Hessian of ``batch.loss`` at the
    model (all trainable parameters); the model is left as it was."""
    with HessianOperator(model, batch.loss) as op:
        return spectral_density(op, torch.Generator().manual_seed(seed), n_probes=n_probes,
                                n_steps=n_steps)


def predicted_llc(nodes: torch.Tensor, weights: torch.Tensor, n_beta: float, eps: float,
                  gamma: float, n_draws: int, n_burnin: int) -> tuple[float, float]:
    """(expected estimate, stationary value) of plain SGLD chains of ``n_draws`` draws
    (``n_burnin`` excluded) from w*, on the quadratic model of the loss whose Hessian has the
    spectral density (nodes, weights) (:func:`~emergence_core.measures.spectrum.spectral_density`).

    A direction of curvature h is an Ornstein-Uhlenbeck chain: w_{t+1} = a w_t + sqrt(eps) xi
    with a = 1 - eps (n_beta h + gamma) / 2, so Var w_t = v (1 - a^(2t)), v = eps / (1 - a^2),
    and its share of the estimate is n_beta h / 2 times the mean of Var w_t over the kept
    draws. Negative curvature (no minimum) is counted as flat; an unstable direction
    (|a| >= 1) makes both values infinite.
    """
    h = nodes.double().clamp(min=0)
    w = weights.double()
    r = (1 - eps * (n_beta * h + gamma) / 2) ** 2
    if bool((r >= 1).any()):
        return math.inf, math.inf
    v = eps / (1 - r)
    kept = n_draws - n_burnin
    mean_rt = r**n_burnin * (1 - r**kept) / ((1 - r) * kept)  # mean of r^t over kept t
    share = w * h / 2 * v
    return n_beta * float((share * (1 - mean_rt)).sum()), n_beta * float(share.sum())


def spectral_length(spectrum: tuple[torch.Tensor, torch.Tensor], n_beta: float, eps: float,
                    gamma: float, n_draws: int, n_burnin: int, max_shortfall: float,
                    max_draws: int) -> tuple[int, int, float]:
    """(n_draws, n_burnin, predicted shortfall): the given lengths doubled until
    :func:`predicted_llc` is at most ``max_shortfall`` short of its stationary value, or
    until they pass ``max_draws`` (then the first length past it)."""
    while True:
        expected, stationary = predicted_llc(*spectrum, n_beta, eps, gamma, n_draws, n_burnin)
        short = 1 - expected / stationary if math.isfinite(stationary) and stationary > 0 \
            else (0.0 if stationary == 0 else math.nan)
        if not math.isfinite(short) or short <= max_shortfall or n_draws > max_draws:
            return n_draws, n_burnin, short
        n_draws, n_burnin = 2 * n_draws, 2 * n_burnin
