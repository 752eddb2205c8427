"""The Hessian's spectral density by stochastic Lanczos quadrature, on the Hessian-vector
products of :class:`~emergence_core.measures.hessian.HessianOperator`.

The LLC pilot's spectral budget (docs/methods.md §3.4) reads chain lengths off it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from emergence_core.measures.batch import ScoredBatch
from emergence_core.measures.hessian import HessianOperator, orthogonalised

__all__ = ["hessian_spectrum", "spectral_density"]


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
