"""Fisher and gradient-covariance effective ranks through the Gram matrix of per-sample gradients.

With J the N x P matrix whose row i is the gradient g_i of sample i's loss (the sum of
cross-entropy over its scored positions, :meth:`ScoredBatch.per_sample_loss`):

- Fisher (empirical-context, sampled labels): F = (1/N) sum_i g_i g_i^T = (1/N) J^T J, with
  each g_i taken at labels drawn from the model's own predictive distribution (uncentred
  second moment: E[g] = 0 in expectation over the model's labels, so centring would only
  remove sampling noise and one degree of freedom).
- Gradient covariance (true labels): C = (1/N) sum_i (g_i - g_bar)(g_i - g_bar)^T.

The Gram trick: the non-zero eigenvalues of (1/N) J^T J (P x P) equal those of the N x N
Gram (1/N) J J^T, since J^T J and J J^T share non-zero spectra (SVD of J). Centring is done
in Gram space: with M = I - 11^T/N, C's non-zero eigenvalues are those of (1/N) M G M.
The effective rank is ``effective_rank`` (RankMe's entropy formula) of the N Gram
eigenvalues. Pitfall: that formula adds eps = 1e-7 to every normalised eigenvalue, so the
P - N structural zeros of the P x P matrix would each add ~1.6e-6 to the entropy (136 nats
for 85M parameters); they are not passed, by construction of the Gram route.

Memory: J is N x P (s4: 64 x 85M float32 = 22 GB). J is held whole only when it fits half
of ``memory_budget_bytes``; otherwise the flattened parameter vector is cut into column
chunks J_c of at most budget / (2 N bytes-per-entry) columns and G = sum_c J_c J_c^T is
accumulated chunk by chunk. The other half holds the per-sample gradients of the parameter
tensors a chunk touches, computed for a group of samples at a time and copied into J_c
(a single sample's gradient of a tensor larger than that half is the one excess). The
trade: every chunk recomputes all N per-sample gradients (forward and backward passes,
keeping only that chunk's columns), so time grows with the number of chunks while memory
stays within the budget plus the model's activations. Measured on an H200 for s4 (85M
parameters, N = 64, vmap): 0.16 s and 43 GiB whole (64 GiB budget); 1.8 s and 3.7 GiB in 21
chunks (the default 2 GiB budget).

Per-sample gradients come from ``torch.func`` (``functional_call`` + ``vmap(grad(...))``)
when the model allows it, else from a loop of N backward passes (``method="auto"`` tries
vmap and falls back). The spread is a jackknife over samples, computed from G alone.

References: Martens, "New insights and perspectives on the natural gradient method" (JMLR
2020) on the empirical vs true Fisher; Kunstner et al., "Limitations of the empirical
Fisher approximation" (NeurIPS 2019).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from emergence_core.measure_settings import GradRankSettings, Method
from emergence_core.measures.batch import ScoredBatch, eval_mode, trainable_parameters
from emergence_core.measures.rankme import effective_rank

__all__ = [
    "GradRankResult",
    "GradRankSettings",
    "fisher_effective_rank",
    "gradcov_effective_rank",
    "gradient_gram",
]



@dataclass(frozen=True)
class GradRankResult:
    value: float  # effective rank of the N eigenvalues below
    stderr: float  # jackknife standard error over samples (nan when not computed)
    eigenvalues: tuple[float, ...]  # of (1/N) G (centred for gradcov), descending
    n_samples: int
    n_params: int
    n_chunks: int
    method: str  # "vmap" or "loop": how per-sample gradients were computed
    wall_s: float


@dataclass(frozen=True)
class _Cols:
    """Columns [start, stop) of the flattened parameter number ``index``."""

    index: int
    start: int
    stop: int


class _Bound(nn.Module):
    """model + batch as one module, so functional_call can swap the model's parameters."""

    def __init__(self, model: nn.Module, batch: ScoredBatch) -> None:
        super().__init__()
        self.model = model
        self.batch = batch

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.batch.per_sample_loss(self.model, ids, targets)


def _selection(sizes: Sequence[int], first_k: int | None) -> list[_Cols]:
    out, left = [], math.inf if first_k is None else first_k
    for i, size in enumerate(sizes):
        if left <= 0:
            break
        take = int(min(size, left))
        out.append(_Cols(i, 0, take))
        left -= take
    return out


def _chunks(selection: list[_Cols], max_cols: int) -> list[list[_Cols]]:
    chunks: list[list[_Cols]] = [[]]
    room = max_cols
    for cols in selection:
        start = cols.start
        while start < cols.stop:
            if room == 0:
                chunks.append([])
                room = max_cols
            stop = min(cols.stop, start + room)
            chunks[-1].append(_Cols(cols.index, start, stop))
            room -= stop - start
            start = stop
    return chunks


def _place(out: torch.Tensor, rows: slice, chunk: list[_Cols],
           grads: dict[int, torch.Tensor]) -> None:
    """Copy the chunk's columns of per-sample gradients {param index: [g, *shape]} into out."""
    col = 0
    for c in chunk:
        width = c.stop - c.start
        g = grads[c.index]
        out[rows, col:col + width] = g.reshape(g.shape[0], -1)[:, c.start:c.stop]
        col += width


def _fill_vmap(bound: _Bound, names: list[str], params: list[torch.Tensor],
               chunk: list[_Cols], ids: torch.Tensor, targets: torch.Tensor, group: int,
               out: torch.Tensor) -> None:
    touched = sorted({c.index for c in chunk})
    live = {f"model.{names[i]}": params[i].detach() for i in touched}
    live_set = set(touched)
    frozen = {f"model.{names[i]}": params[i].detach() for i in range(len(params))
              if i not in live_set}

    def loss_one(live_params: dict[str, torch.Tensor], sid: torch.Tensor,
                 tgt: torch.Tensor) -> torch.Tensor:
        # sid is a 0-d sample id inside vmap; forward wants a [1] id vector and [1, A] labels
        return functional_call(bound, (live_params, frozen),
                               (sid.unsqueeze(0), tgt.unsqueeze(0))).sum()

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
    for start in range(0, ids.shape[0], group):
        rows = slice(start, start + group)
        grads = per_sample(live, ids[rows], targets[rows])
        _place(out, rows, chunk, {i: grads[f"model.{names[i]}"] for i in touched})
        del grads


def _fill_loop(bound: _Bound, params: list[torch.Tensor], chunk: list[_Cols],
               ids: torch.Tensor, targets: torch.Tensor, out: torch.Tensor) -> None:
    touched = sorted({c.index for c in chunk})
    for s in range(ids.shape[0]):
        loss = bound(ids[s:s + 1], targets[s:s + 1]).sum()
        grads = torch.autograd.grad(loss, [params[i] for i in touched], allow_unused=True,
                                    materialize_grads=True)
        _place(out, slice(s, s + 1), chunk,
               {i: g.unsqueeze(0) for i, g in zip(touched, grads, strict=True)})


def gradient_gram(model: nn.Module, batch: ScoredBatch, ids: torch.Tensor,
                  targets: torch.Tensor, *, params: Sequence[str] | None = None,
                  first_k: int | None = None, memory_budget_bytes: int = 2 * 1024**3,
                  method: Method = "auto") -> tuple[torch.Tensor, int, int, str]:
    """G = J J^T (float64, [n, n]) for the per-sample gradients of samples ``ids`` at ``targets``.

    Returns (G, number of parameters used, number of column chunks, method used). Runs in
    eval mode under the math SDPA kernel; the model is left exactly as it was.
    """
    named = trainable_parameters(model, params)
    names = [n for n, _ in named]
    tensors = [p for _, p in named]
    selection = _selection([p.numel() for p in tensors], first_k)
    n_params = sum(c.stop - c.start for c in selection)
    n = int(ids.shape[0])
    elem = tensors[0].element_size()
    half = max(1, memory_budget_bytes // 2)  # one half for J_c, one for a group's gradients
    chunks = _chunks(selection, max(1, half // (elem * n)))
    bound = _Bound(model, batch)
    gram = torch.zeros(n, n, dtype=torch.float64, device=tensors[0].device)
    used = method
    with eval_mode(model), sdpa_kernel(SDPBackend.MATH), torch.enable_grad():
        for chunk in chunks:
            jc = torch.empty(n, sum(c.stop - c.start for c in chunk), dtype=tensors[0].dtype,
                             device=tensors[0].device)
            touched = sum(tensors[i].numel() for i in {c.index for c in chunk})
            group = max(1, min(n, half // (elem * touched)))
            if used in ("auto", "vmap"):
                try:
                    _fill_vmap(bound, names, tensors, chunk, ids, targets, group, jc)
                    used = "vmap"
                except Exception as err:
                    # vmap rejects data-dependent Python (.item(), branching on values) that
                    # some models do; the loop computes the same gradients one sample at a time
                    if used == "vmap":
                        raise
                    warnings.warn(f"per-sample gradients by vmap failed ({err!r}); using a "
                                  "loop over samples", RuntimeWarning, stacklevel=2)
                    used = "loop"
                    _fill_loop(bound, tensors, chunk, ids, targets, jc)
            else:
                _fill_loop(bound, tensors, chunk, ids, targets, jc)
            # float32 product, float64 accumulation across chunks
            gram += (jc @ jc.T).to(torch.float64)
            del jc
    return gram, n_params, len(chunks), used


def _spectrum(gram: torch.Tensor, centred: bool) -> torch.Tensor:
    n = gram.shape[0]
    if centred:
        m = torch.eye(n, dtype=gram.dtype, device=gram.device) - 1.0 / n
        gram = m @ gram @ m
    vals = torch.linalg.eigvalsh((gram + gram.T) / (2 * n)).clamp_min(0)
    return vals.flip(0)


def _jackknife(gram: torch.Tensor, centred: bool) -> float:
    """sqrt((n-1)/n sum_i (theta_(i) - theta_bar)^2), theta_(i) the rank without sample i."""
    n = gram.shape[0]
    if n < 3:
        return math.nan
    thetas = []
    for i in range(n):
        keep = torch.cat([torch.arange(i), torch.arange(i + 1, n)]).to(gram.device)
        thetas.append(effective_rank(_spectrum(gram[keep][:, keep], centred)))
    t = torch.tensor(thetas, dtype=torch.float64)
    return float(math.sqrt((n - 1) / n * float(((t - t.mean()) ** 2).sum())))


def _subset(batch: ScoredBatch, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randperm(batch.n_samples, generator=gen)[:min(n, batch.n_samples)]
    return ids.sort().values.to(batch.targets.device)


def _rank(model: nn.Module, batch: ScoredBatch, s: GradRankSettings, centred: bool,
          sampled: bool) -> GradRankResult:
    start = time.perf_counter()
    ids = _subset(batch, s.n_samples, s.seed)
    if sampled:
        device = next(p.device for p in model.parameters())
        gen = torch.Generator(device=device).manual_seed(s.seed + 1)
        with eval_mode(model):
            targets = batch.sample_targets(model, gen, ids)
    else:
        targets = batch.targets[ids]
    gram, n_params, n_chunks, used = gradient_gram(
        model, batch, ids, targets, params=s.params, first_k=s.first_k,
        memory_budget_bytes=s.memory_budget_bytes, method=s.method)
    vals = _spectrum(gram, centred)
    stderr = _jackknife(gram, centred) if s.jackknife else math.nan
    return GradRankResult(value=effective_rank(vals), stderr=stderr,
                          eigenvalues=tuple(float(v) for v in vals), n_samples=int(ids.shape[0]),
                          n_params=n_params, n_chunks=n_chunks, method=used,
                          wall_s=time.perf_counter() - start)


def fisher_effective_rank(model: nn.Module, batch: ScoredBatch,
                          settings: GradRankSettings | None = None) -> GradRankResult:
    """Effective rank of the Fisher, labels drawn from the model (uncentred); see the module doc."""
    return _rank(model, batch, settings or GradRankSettings(), centred=False, sampled=True)


def gradcov_effective_rank(model: nn.Module, batch: ScoredBatch,
                           settings: GradRankSettings | None = None) -> GradRankResult:
    """Effective rank of the covariance of true-label per-sample gradients (centred)."""
    return _rank(model, batch, settings or GradRankSettings(), centred=True, sampled=False)
