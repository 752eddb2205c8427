"""Hessian of the training loss: top eigenvalue (Lanczos) and trace (Hutchinson).

The operator and the algorithms are apart (as in hessian-eigenthings): a
:class:`HessianOperator` computes H v for the Hessian H of a ScoredBatch's mean loss at the
model's current weights; :func:`lanczos_lambda_max` and :func:`hutchinson_trace` only ever
call ``matvec``; :func:`estimate_hessian` is the measure that runs both.

Hessian-vector product (Pearlmutter 1994, "Fast exact multiplication by the Hessian"):

    H v = d/dw <grad L(w), v>,

one extra backward through the graph of the first gradient (double backward), never the
P x P matrix. Pitfall: the default CPU kernel of ``F.scaled_dot_product_attention`` has no
double backward, so every HVP runs under ``sdpa_kernel(SDPBackend.MATH)``.

Cost: on a CPU the products dominate (99% of the time for s0). On a GPU, ARPACK's work on
P-long vectors runs on the CPU and dominated for large models: s4 (85M parameters) on an
H200 spent ~1.2 s in 16 products and ~22 s in ARPACK for lambda_max (the trace, whose
probes stay on the device, costs 77 ms per probe). Hence the default Lanczos is written in
torch and keeps its basis on the operator's device (``lanczos="torch"``); ARPACK stays
selectable (``lanczos="arpack"``) as the reference it is checked against.

Reference: Yao et al., "PyHessian: Neural networks through the lens of the Hessian" (2020),
which uses power iteration and Hutchinson; Golub & Van Loan, "Matrix Computations", ch. 10
for Lanczos.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from emergence_core.measure_settings import HessianSettings, LanczosMethod
from emergence_core.measures.batch import ScoredBatch, eval_mode, trainable_parameters

__all__ = [
    "HessianOperator",
    "HessianResult",
    "HessianSettings",
    "estimate_hessian",
    "hutchinson_trace",
    "lanczos_lambda_max",
    "orthogonalised",
]



@dataclass(frozen=True)
class HessianResult:
    lambda_max: float  # largest (algebraic) eigenvalue of H
    lambda_max_residual: float  # ||H v - lambda v|| of the returned pair: a bound on its error
    trace: float  # Hutchinson mean; nan when trace_probes = 0
    trace_stderr: float  # standard error of that mean (std over probes / sqrt(probes))
    n_params: int
    n_hvps: int
    converged: bool  # Lanczos met lanczos_tol within max_hvps
    wall_s: float


class HessianOperator:
    """v -> H v for the Hessian of ``loss(model)`` w.r.t. the chosen parameters (flat vectors).

    ``loss`` is any closure returning a scalar at the model's current weights; the measure
    passes ``ScoredBatch.loss`` (the mean training loss over the probe batch).

    Use as a context manager: inside, the model is in eval mode; on exit every module's
    training flag is restored and the cached graph is freed. Parameters, their ``.grad``
    and ``requires_grad`` are never touched (products come from ``torch.autograd.grad``).

    ``cache_graph=True`` builds the first gradient once with ``create_graph=True`` and
    reuses it, so each HVP costs one backward pass; ``False`` recomputes the forward and the
    first backward for each product (a forward and a backward more per product) but holds
    no graph between products.
    """

    def __init__(self, model: nn.Module, loss: Callable[[nn.Module], torch.Tensor],
                 params: Sequence[str] | None = None, *, cache_graph: bool = True) -> None:
        self.model = model
        self.loss = loss
        self.cache_graph = cache_graph
        named = trainable_parameters(model, params)
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.n_params = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.n_hvps = 0
        self._grads: tuple[torch.Tensor, ...] | None = None
        self._stack: ExitStack | None = None

    def __enter__(self) -> HessianOperator:
        self._stack = ExitStack()
        self._stack.enter_context(eval_mode(self.model))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._grads = None
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def _first_grads(self) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(self.loss(self.model), self.params, create_graph=True,
                                   allow_unused=True, materialize_grads=True)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector v of length n_params, returned on v's device in v's dtype."""
        if self._stack is None:
            raise RuntimeError("use HessianOperator inside a `with` block")
        if v.shape != (self.n_params,):
            raise ValueError(f"v must have shape ({self.n_params},), got {tuple(v.shape)}")
        with sdpa_kernel(SDPBackend.MATH), torch.enable_grad():
            if self._grads is None or not self.cache_graph:
                grads = self._first_grads()
                self._grads = grads if self.cache_graph else None
            else:
                grads = self._grads
            chunks = v.to(self.device, self.dtype).split([p.numel() for p in self.params])
            vs = [c.view_as(p) for c, p in zip(chunks, self.params, strict=True)]
            hv = torch.autograd.grad(grads, self.params, grad_outputs=vs,
                                     retain_graph=self.cache_graph, allow_unused=True,
                                     materialize_grads=True)
        self.n_hvps += 1
        return torch.cat([h.reshape(-1) for h in hv]).to(device=v.device, dtype=v.dtype)

    @property
    def numpy_dtype(self) -> type[np.floating]:
        return np.float64 if self.dtype == torch.float64 else np.float32

    def as_linear_operator(self) -> LinearOperator:
        """A scipy LinearOperator over ``matvec`` in the parameters' precision.

        float32 for a float32 (or lower-precision) model: the products are only that exact,
        so a float64 Krylov basis buys nothing, and ARPACK's own work on P-long vectors (on
        the CPU) halves: for s4 on an H200, 23 s instead of 56 s for the same 16 products.
        """
        dtype = self.numpy_dtype

        def mv(x: np.ndarray) -> np.ndarray:
            v = torch.from_numpy(np.ascontiguousarray(x, dtype=dtype).reshape(-1))
            return self.matvec(v).detach().cpu().numpy()

        n = self.n_params
        return LinearOperator((n, n), matvec=mv, dtype=dtype)


def lanczos_lambda_max(op: HessianOperator, generator: torch.Generator, *, tol: float = 1e-3,
                       ncv: int = 10, max_hvps: int = 400, method: LanczosMethod = "torch",
                       ) -> tuple[float, torch.Tensor, bool]:
    """Largest algebraic eigenvalue of H and its eigenvector, by restarted Lanczos.

    Why not power iteration: power iteration's error shrinks like (lambda_2/lambda_1)^k, so
    a small relative gap g costs ~1/g products; Lanczos builds the optimal polynomial in the
    same Krylov space (Chebyshev bounds, Kaniel-Paige theory), shrinking like
    exp(-2k sqrt(g)), so ~1/sqrt(g) products. Power iteration also finds the eigenvalue
    largest in *magnitude*: a non-convex loss with a large negative eigenvalue (early in
    training) makes it return that one; Lanczos asks for the largest algebraic eigenvalue.

    ``method="torch"`` (:func:`_torch_lanczos`) keeps the basis on the operator's device;
    ``"arpack"`` (:func:`_arpack_lanczos`) runs scipy's ARPACK on the CPU. Both stop at
    ||H v - theta v|| <= tol * |theta|. The start vector comes from ``generator`` (a CPU
    generator, float64 draws), the same for both methods and on every device.

    ``ncv`` is the basis size: 10 reached 1e-6 relative error in 10 to 16 products on the
    benchmark GPT-2 and test MLPs (``benchmarks/bench_hessian.py``).

    Returns (lambda_max, eigenvector, converged); on no convergence, the best Ritz pair
    found so far (nan if none). The vector is unnormalised float64 on the CPU for ARPACK,
    unit-norm on the operator's device in its dtype for torch.
    """
    if ncv < 2:  # a one-vector basis cannot restart (keep one Ritz vector and extend it)
        raise ValueError(f"ncv must be >= 2, got {ncv}")
    v0 = torch.randn(op.n_params, generator=generator, dtype=torch.float64)
    if method == "torch":
        return _torch_lanczos(op, v0, tol=tol, ncv=ncv, max_hvps=max_hvps)
    if method == "arpack":
        return _arpack_lanczos(op, v0, tol=tol, ncv=ncv, max_hvps=max_hvps)
    raise ValueError(f"lanczos method must be 'torch' or 'arpack', got {method!r}")


def _torch_lanczos(op: HessianOperator, v0: torch.Tensor, *, tol: float, ncv: int,
                   max_hvps: int) -> tuple[float, torch.Tensor, bool]:
    """Thick-restart Lanczos (Wu & Simon 2000) with full reorthogonalisation, in torch.

    The basis V (at most ``ncv`` + 1 vectors of length P, in the operator's dtype) stays on
    its device: on a GPU no P-long vector crosses to the host, only the ~ncv projections of
    each new product (one small transfer per HVP, which the stopping test needs anyway).
    Memory: (ncv + 1) P values, 3.7 GB for s4 (85M parameters) in float32.

    Each product w = H v_j is orthogonalised against the whole basis by classical
    Gram-Schmidt applied twice ("twice is enough", Giraud et al. 2005), so the projected
    matrix T = V^T H V (float64, on the host) stays exact to round-off and
    H V = V T + beta v_next e_j^T holds: the residual of a Ritz pair (theta, V s) is
    beta |s_j|, known without another product, and tested after every product (ARPACK only
    tests at restarts). When the basis is full, the top ncv/2 Ritz vectors are kept and the
    next basis vector is the residual direction; the coupling of the two is what the next
    Gram-Schmidt step finds, so T needs no special arrowhead bookkeeping.

    The search ends as converged also when the Krylov space is invariant (beta at round-off
    level) or spans all P dimensions: then the Ritz values are exact.
    """
    n = op.n_params
    size = min(ncv, n)
    keep = max(1, size // 2)
    eps = torch.finfo(op.dtype).eps
    basis = torch.empty(size + 1, n, dtype=op.dtype, device=op.device)
    basis[0] = v0.to(op.device, op.dtype)
    basis[0] /= basis[0].norm()
    t = torch.zeros(size, size, dtype=torch.float64)
    j = 0  # the basis vector to multiply next; basis[:j] spans the Krylov space so far
    for _ in range(max_hvps):
        done = basis[: j + 1]
        w, h = orthogonalised(op.matvec(basis[j]), done)
        col = torch.cat([h, w.norm().reshape(1)]).to("cpu", torch.float64)
        if not bool(torch.isfinite(col).all()):  # a non-finite loss or Hessian: no estimate
            return math.nan, torch.full((n,), math.nan, dtype=op.dtype, device=op.device), False
        beta = float(col[-1])
        t[: j + 1, j] = col[:-1]
        t[j, : j + 1] = col[:-1]
        theta, s = torch.linalg.eigh(t[: j + 1, : j + 1])
        lam = float(theta[-1])
        invariant = beta <= 10 * eps * float(theta.abs().max()) or j + 1 == n
        if invariant or beta * abs(float(s[-1, -1])) <= tol * abs(lam):
            return lam, _ritz_vector(done, s[:, -1]), True
        basis[j + 1] = w / beta
        j += 1
        if j == size:  # full: restart from the top Ritz vectors and the residual direction
            basis[:keep] = s[:, -keep:].T.to(op.device, op.dtype) @ basis[:size]
            basis[keep] = basis[size]
            t.zero_()
            t[:keep, :keep] = torch.diag(theta[-keep:])
            j = keep
    theta, s = torch.linalg.eigh(t[:j, :j])
    return float(theta[-1]), _ritz_vector(basis[:j], s[:, -1]), False


def orthogonalised(w: torch.Tensor, done: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` less its projection on the orthonormal rows of ``done``, by classical
    Gram-Schmidt applied twice ("twice is enough"), and the projections removed (done @ w)."""
    h = done @ w
    w = torch.addmv(w, done.T, h, alpha=-1)
    again = done @ w
    return torch.addmv(w, done.T, again, alpha=-1), h + again


def _ritz_vector(basis: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """V s, renormalised (the basis is orthonormal only to round-off)."""
    vec = basis.T @ coefficients.to(basis.device, basis.dtype)
    return vec / vec.norm()


def _arpack_lanczos(op: HessianOperator, v0: torch.Tensor, *, tol: float, ncv: int,
                    max_hvps: int) -> tuple[float, torch.Tensor, bool]:
    """``scipy.sparse.linalg.eigsh(which="LA")`` (implicitly restarted Lanczos) on the operator.

    ARPACK fills the basis before its first convergence test and then restarts keeping it,
    so scipy's default ncv of 20 costs at least 21 products even when the top eigenvalue is
    isolated. Every product crosses to the host and ARPACK's work on P-long vectors runs on
    the CPU: on a GPU that dominates for large models (see the module docstring).
    """
    n = op.n_params
    if n <= 2:  # ARPACK needs ncv < n; a 1x1 or 2x2 Hessian is cheaper dense
        eye = torch.eye(n, dtype=torch.float64)
        dense = torch.stack([op.matvec(eye[i]) for i in range(n)], dim=1)
        vals, vecs = torch.linalg.eigh((dense + dense.T) / 2)
        return float(vals[-1]), vecs[:, -1], True
    ncv_eff = min(ncv, n - 1)
    maxiter = max(1, math.ceil(max_hvps / ncv_eff))
    try:
        vals, vecs = eigsh(op.as_linear_operator(), k=1, which="LA", tol=tol, ncv=ncv_eff,
                           maxiter=maxiter, v0=v0.numpy().astype(op.numpy_dtype))
        return float(vals[0]), torch.from_numpy(vecs[:, 0].astype(np.float64)), True
    except ArpackNoConvergence as err:
        if len(err.eigenvalues) == 0:
            return math.nan, torch.full((n,), math.nan, dtype=torch.float64), False
        i = int(np.argmax(err.eigenvalues))
        return (float(err.eigenvalues[i]),
                torch.from_numpy(err.eigenvectors[:, i].astype(np.float64)), False)


def hutchinson_trace(op: HessianOperator, generator: torch.Generator, n_probes: int,
                     ) -> tuple[float, float]:
    """tr(H) = E[z^T H z] for Rademacher z (Hutchinson 1989); returns (mean, standard error).

    Rademacher probes give the lowest variance among i.i.d. probes with unit second moment:
    Var[z^T H z] = 2 (||H||_F^2 - sum_i H_ii^2). The standard error is the sample std
    (ddof = 1) over probes divided by sqrt(n_probes); nan for fewer than 2 probes. Probes
    are drawn on the operator's device (``generator`` must live there), in its dtype; each
    z^T H z is accumulated in float64.
    """
    if n_probes < 1:
        return math.nan, math.nan
    values = []
    for _ in range(n_probes):
        z = torch.randint(0, 2, (op.n_params,), generator=generator, device=op.device)
        z = z.to(op.dtype) * 2 - 1
        values.append(float(torch.dot(z.double(), op.matvec(z).double())))
    samples = torch.tensor(values, dtype=torch.float64)
    stderr = float(samples.std() / math.sqrt(n_probes)) if n_probes > 1 else math.nan
    return float(samples.mean()), stderr


def estimate_hessian(model: nn.Module, batch: ScoredBatch,
                     settings: HessianSettings | None = None) -> HessianResult:
    """lambda_max (Lanczos) and trace (Hutchinson) of the Hessian of ``batch.loss`` at the model.

    The Hessian is of the mean cross-entropy over the batch's scored positions, in eval mode,
    w.r.t. all trainable parameters (or those under ``settings.params``). One extra HVP
    computes the residual ||H v - lambda v|| of the returned pair, which bounds its error.
    The model is left exactly as it was (weights, grads, modes).
    """
    s = settings if settings is not None else HessianSettings()
    start = time.perf_counter()
    with HessianOperator(model, batch.loss, s.params, cache_graph=s.cache_graph) as op:
        lam, vec, converged = lanczos_lambda_max(op, torch.Generator().manual_seed(s.seed),
                                                 tol=s.lanczos_tol, ncv=s.lanczos_ncv,
                                                 max_hvps=s.max_hvps, method=s.lanczos)
        residual = math.nan
        if math.isfinite(lam):
            vec = vec / vec.norm()
            residual = float((op.matvec(vec) - lam * vec).norm())
        probes = torch.Generator(device=op.device).manual_seed(s.seed + 1)
        trace, trace_stderr = hutchinson_trace(op, probes, s.trace_probes)
        n_hvps = op.n_hvps
    return HessianResult(lambda_max=lam, lambda_max_residual=residual, trace=trace,
                         trace_stderr=trace_stderr, n_params=op.n_params, n_hvps=n_hvps,
                         converged=converged, wall_s=time.perf_counter() - start)
