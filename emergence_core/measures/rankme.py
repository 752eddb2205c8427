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

__all__ = ["RANKME_EPS", "effective_rank", "effective_ranks", "rankme", "rankme_batched"]

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


def effective_ranks(spectra: torch.Tensor, eps: float = RANKME_EPS) -> torch.Tensor:
    """:func:`effective_rank` of each row of ``spectra`` [batch, k]: float64, on its device.

    The batched twin of :func:`effective_rank`, which stays the reference. No host
    synchronisation: an all-zero (or non-finite) spectrum gives 0 through a mask.
    """
    s = spectra.detach().to(torch.float64).clamp_min(0)
    total = s.sum(dim=-1, keepdim=True)
    ok = (total > 0) & torch.isfinite(total)
    p = s / torch.where(ok, total, 1.0) + eps
    return torch.where(ok[:, 0], torch.exp(-(p * p.log()).sum(dim=-1)), 0.0)


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


def rankme_batched(z: torch.Tensor, *, centre: bool = True,
                   eps: float = RANKME_EPS) -> torch.Tensor:
    """RankMe of each matrix of ``z`` [batch, n_samples, d]: float64, on ``z``'s device.

    The arithmetic of :func:`rankme` (which stays the per-matrix reference), as one batched
    SVD and without a host synchronisation per matrix: on a GPU, one RankMe at a time is a
    few small kernels and a sync each, hundreds per probe step. Matrices without variance
    are replaced by zeros before the SVD (it rejects non-finite input) and give 0.
    """
    if z.ndim != 3:
        raise ValueError(f"rankme_batched expects [batch, samples, features], got shape "
                         f"{tuple(z.shape)}")
    x = z.detach().to(torch.float64)
    magnitude = x.abs().amax(dim=(1, 2))
    if centre:
        x = x - x.mean(dim=1, keepdim=True)
    spread = x.abs().amax(dim=(1, 2))
    ok = torch.isfinite(spread) & (spread > _ZERO_VARIANCE * magnitude) & (spread != 0)
    scale = torch.where(ok, spread, 1.0)[:, None, None]
    x = torch.where(ok[:, None, None], x / scale, 0.0)
    return torch.where(ok, effective_ranks(torch.linalg.svdvals(x), eps), 0.0)
