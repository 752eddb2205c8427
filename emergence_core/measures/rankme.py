"""RankMe: the effective rank of a representation matrix.

Garrido et al., "RankMe: Assessing the downstream performance of pretrained
self-supervised representations by their rank" (ICML 2023).

With singular values s_k of Z (n samples x d features) and p_k = s_k / sum(s) + eps,

    RankMe(Z) = exp(-sum_k p_k log p_k),   eps = 1e-7.

A matrix with k equal non-zero singular values has RankMe close to k; a rank-1 matrix
has RankMe close to 1. A matrix with no variance (all singular values 0) has RankMe 0
by convention, never NaN: at the SEP position the embedding output is the same for every
sample, so the centred embedding layer is exactly such a matrix.

Studies differ on centring: ``centre=True`` subtracts the column means first (the study's
default); the uncentred value is logged beside it.
"""

from __future__ import annotations

import torch

__all__ = ["RANKME_EPS", "effective_rank", "rankme"]

RANKME_EPS = 1e-7
_ZERO_VARIANCE = 1e-10


def effective_rank(spectrum: torch.Tensor, eps: float = RANKME_EPS) -> float:
    """exp(entropy) of a non-negative spectrum normalised to sum 1 (RankMe's formula).

    Used for singular values (RankMe) and for eigenvalues (Fisher and gradient-covariance
    effective ranks). Returns 0.0 for an all-zero spectrum.
    """
    s = spectrum.detach().to(torch.float64).clamp_min(0)
    total = s.sum()
    if total <= 0 or not torch.isfinite(total):
        return 0.0
    p = s / total + eps
    return float(torch.exp(-(p * p.log()).sum()))


def rankme(z: torch.Tensor, *, centre: bool = True, eps: float = RANKME_EPS) -> float:
    """RankMe of ``z`` with shape [n_samples, d]; see the module docstring."""
    if z.ndim != 2:
        raise ValueError(f"rankme expects a [samples, features] matrix, got shape {tuple(z.shape)}")
    x = z.detach().to(torch.float64)
    magnitude = x.abs().max()
    if centre:
        x = x - x.mean(dim=0, keepdim=True)
    spread = x.abs().max()
    # No variance: exactly zero, or round-off of the centring (identical float32 rows leave
    # ~1e-16 relative residue in float64). Real float32 data cannot vary below ~1e-7.
    if not torch.isfinite(spread) or spread <= _ZERO_VARIANCE * magnitude or spread == 0:
        return 0.0
    # Singular values are scale-equivariant and p_k scale-invariant: normalising first keeps
    # the SVD well-conditioned for activations of any magnitude.
    return effective_rank(torch.linalg.svdvals(x / spread), eps)
