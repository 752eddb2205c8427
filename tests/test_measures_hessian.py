"""Hessian measure: answers known by construction, then a dense Hessian, then GPT-2."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from emergence_core.measures.batch import ScoredBatch
from emergence_core.measures.hessian import (
    HessianOperator,
    HessianSettings,
    estimate_hessian,
    hutchinson_trace,
    lanczos_lambda_max,
)


class Quadratic(nn.Module):
    """loss(w) = 1/2 w^T A w + b^T w: its Hessian is A, whatever w is."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a)
        self.w = nn.Parameter(torch.randn(a.shape[0], dtype=a.dtype,
                                          generator=torch.Generator().manual_seed(1)))

    def loss(self) -> torch.Tensor:
        return 0.5 * self.w @ self.a @ self.w + self.w.sum()


def _with_spectrum(eigs: list[float], seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(seed)))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


def test_operator_is_the_matrix_of_a_quadratic():
    a = _with_spectrum([float(k) for k in range(1, 31)])
    model = Quadratic(a)
    with HessianOperator(model, Quadratic.loss) as op:
        v = torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(op.matvec(v), a @ v, rtol=1e-12, atol=1e-12)
        assert op.n_hvps == 1


@pytest.mark.parametrize("method", ["torch", "arpack"])
def test_lanczos_finds_largest_algebraic_not_largest_magnitude(method):
    # a power iteration would return -50 here; lambda_max is the largest eigenvalue, 7
    eigs = [-50.0, *torch.linspace(0.0, 6.9, 58).tolist(), 7.0]
    model = Quadratic(_with_spectrum(eigs))
    with HessianOperator(model, Quadratic.loss) as op:
        lam, vec, converged = lanczos_lambda_max(op, torch.Generator().manual_seed(0), tol=1e-3,
                                                 method=method)
        assert converged
        assert abs(lam - 7.0) / 7.0 <= 1e-3
        residual = (op.matvec(vec / vec.norm()) - lam * vec / vec.norm()).norm()
        assert residual <= 1e-3 * 7.0


@pytest.mark.parametrize(("eigs", "tol"), [
    ([float(k) for k in range(1, 31)], 1e-3),  # relative gap 1/30: needs restarts at ncv 10
    (torch.linspace(0.0, 1.0, 200).tolist(), 1e-4),  # 200 close eigenvalues, tighter tol
    ([-3.0, -1.0, -0.5], 1e-6),  # all negative: lambda_max is the one nearest zero
    ([2.0, 2.0, 2.0, 1.0], 1e-6),  # a repeated top eigenvalue
    ([5.0], 1e-3),  # P = 1
    ([0.0] * 6, 1e-3),  # H = 0: an invariant start vector, ARPACK's error -9
])
def test_torch_lanczos_matches_the_dense_top_eigenvalue(eigs, tol):
    a = _with_spectrum(eigs, seed=4)
    top = float(torch.linalg.eigvalsh(a)[-1])
    with HessianOperator(Quadratic(a), Quadratic.loss) as op:
        lam, vec, converged = lanczos_lambda_max(op, torch.Generator().manual_seed(0), tol=tol)
        assert converged
        assert op.n_hvps <= 400
        residual = float((op.matvec(vec) - lam * vec).norm())
    assert vec.norm() == pytest.approx(1.0, rel=1e-12)
    assert abs(lam - top) <= tol * max(abs(top), 1e-12) + 1e-12
    assert abs(lam - top) <= residual + 1e-12  # the symmetric residual bound holds


def test_torch_lanczos_out_of_budget_returns_a_ritz_value_below_the_top():
    eigs = torch.linspace(0.0, 1.0, 200).tolist()
    with HessianOperator(Quadratic(_with_spectrum(eigs)), Quadratic.loss) as op:
        lam, vec, converged = lanczos_lambda_max(op, torch.Generator().manual_seed(0),
                                                 tol=1e-8, max_hvps=15)
        assert op.n_hvps == 15  # the budget counts products exactly
    assert not converged
    assert 0.9 < lam <= 1.0 + 1e-12  # Ritz values never exceed lambda_max (Cauchy interlacing)
    assert vec.shape == (200,) and torch.isfinite(vec).all()


def test_torch_lanczos_agrees_with_arpack_on_real_models():
    model, batch, _ = _mlp_batch()
    gpt, gpt_batch = _tiny_gpt2()
    for m, b in ((model, batch), (gpt, gpt_batch)):
        r = {method: estimate_hessian(m, b, HessianSettings(trace_probes=0, lanczos=method))
             for method in ("torch", "arpack")}
        assert r["torch"].converged and r["arpack"].converged
        top = r["arpack"].lambda_max
        assert abs(r["torch"].lambda_max - top) <= 1e-3 * abs(top)
        assert r["torch"].n_hvps <= r["arpack"].n_hvps + 5
    with HessianOperator(model, batch.loss) as op:
        _, vec, _ = lanczos_lambda_max(op, torch.Generator().manual_seed(0))
    assert vec.dtype == torch.float32  # the basis is in the parameters' dtype


def test_lanczos_method_and_basis_size_are_checked():
    with pytest.raises(ValueError, match="lanczos"):
        HessianSettings(lanczos="eigsh")
    with HessianOperator(Quadratic(_with_spectrum([1.0, 2.0, 3.0])), Quadratic.loss) as op:
        with pytest.raises(ValueError, match="ncv"):
            lanczos_lambda_max(op, torch.Generator().manual_seed(0), ncv=1)
        lam, _, converged = lanczos_lambda_max(op, torch.Generator().manual_seed(0), ncv=2)
    assert converged and lam == pytest.approx(3.0, rel=1e-3)


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    # Rademacher z: z^T D z = sum_i D_ii z_i^2 = tr(D) for every probe, so stderr is 0
    d = torch.diag(torch.linspace(-1.0, 3.0, 40, dtype=torch.float64))
    with HessianOperator(Quadratic(d), Quadratic.loss) as op:
        mean, stderr = hutchinson_trace(op, torch.Generator().manual_seed(0), 8)
    assert mean == pytest.approx(float(d.trace()), abs=1e-10)
    assert stderr == pytest.approx(0.0, abs=1e-10)


def test_hutchinson_mean_within_its_error_bar():
    a = _with_spectrum(torch.linspace(-2.0, 5.0, 25).tolist(), seed=3)
    with HessianOperator(Quadratic(a), Quadratic.loss) as op:
        mean, stderr = hutchinson_trace(op, torch.Generator().manual_seed(0), 400)
    assert stderr > 0
    assert abs(mean - float(a.trace())) <= 4 * stderr


def _mlp_batch() -> tuple[nn.Module, ScoredBatch, ScoredBatch]:
    """A float32 MLP, its batch, and the same batch in float64 for the dense reference."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 4))
    x = torch.randn(48, 5, generator=gen)
    y = torch.randint(0, 4, (48,), generator=gen)
    return (model, ScoredBatch.from_classification(x, y),
            ScoredBatch.from_classification(x.double(), y))


def _dense_hessian(model: nn.Module, batch: ScoredBatch, names: list[str]) -> torch.Tensor:
    """The float64 Hessian of batch.loss w.r.t. the named parameters (others held fixed).

    ``batch`` must suit a float64 copy of the model.
    """
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in names]).double()
    model64 = _double_copy(model)

    def f(w: torch.Tensor) -> torch.Tensor:
        chunks = w.split([s.numel() for s in shapes])
        swap = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return batch.loss(_Swapped(model64, swap))

    with sdpa_kernel(SDPBackend.MATH):
        return torch.autograd.functional.hessian(f, flat)


def _double_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).double().eval()


class _Swapped(nn.Module):
    """Calls ``model`` with some parameters replaced (for the dense reference only)."""

    def __init__(self, model: nn.Module, swap: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.inner, self.swap = model, swap

    def forward(self, *args, **kwargs):
        return functional_call(self.inner, self.swap, args, kwargs)


def test_lambda_max_and_trace_match_dense_hessian():
    model, batch, batch64 = _mlp_batch()
    names = [n for n, _ in model.named_parameters()]
    dense = _dense_hessian(model, batch64, names)
    eigs = torch.linalg.eigvalsh(dense)
    result = estimate_hessian(model, batch, HessianSettings(trace_probes=300))
    assert result.converged
    assert result.n_params == dense.shape[0]
    assert abs(result.lambda_max - float(eigs[-1])) / float(eigs[-1]) <= 1e-3
    assert abs(result.lambda_max - float(eigs[-1])) <= result.lambda_max_residual + 1e-5
    assert abs(result.trace - float(dense.trace())) <= 4 * result.trace_stderr
    # Lanczos + residual + probes: the count is what was done
    assert result.n_hvps > 300


def test_model_grads_modes_and_global_rng_are_left_alone():
    model, batch, _ = _mlp_batch()
    model.train()
    model[1].eval()  # mixed modes must come back exactly
    model[0].weight.grad = torch.full_like(model[0].weight, 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    first = estimate_hessian(model, batch, HessianSettings(trace_probes=5, seed=3))
    assert torch.equal(torch.get_rng_state(), rng)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert torch.equal(model[0].weight.grad, torch.full_like(model[0].weight, 0.5))
    assert model[2].bias.grad is None
    assert [m.training for m in model.modules()] == [True, True, False, True]
    second = estimate_hessian(model, batch, HessianSettings(trace_probes=5, seed=3))
    assert (first.lambda_max, first.trace) == (second.lambda_max, second.trace)


def test_cached_and_recomputed_graphs_give_the_same_products():
    model, batch, _ = _mlp_batch()
    v = torch.randn(sum(p.numel() for p in model.parameters()),
                    generator=torch.Generator().manual_seed(0))
    with HessianOperator(model, batch.loss, cache_graph=True) as op:
        cached = [op.matvec(v), op.matvec(v)]
    with HessianOperator(model, batch.loss, cache_graph=False) as op:
        fresh = op.matvec(v)
    torch.testing.assert_close(cached[0], cached[1])
    torch.testing.assert_close(cached[0], fresh)


def test_matvec_outside_with_block_and_unknown_prefix_are_errors():
    model, batch, _ = _mlp_batch()
    op = HessianOperator(model, batch.loss)
    with pytest.raises(RuntimeError, match="with"):
        op.matvec(torch.zeros(op.n_params))
    with pytest.raises(ValueError, match="did you mean"):
        HessianOperator(model, batch.loss, params=("0.wieght",))


def _tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=11, n_positions=12,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 11, (16, 10), generator=torch.Generator().manual_seed(0))
    return model, ScoredBatch.from_causal_lm(ids, 4)


def test_gpt2_with_default_sdpa_attention_matches_dense_on_a_subset():
    model, batch = _tiny_gpt2()
    assert model.config._attn_implementation == "sdpa"  # the kernel without double backward
    prefixes = ("transformer.h.0.attn.c_attn.bias", "transformer.h.1.ln_1")
    names = [n for n, _ in model.named_parameters() if n.startswith(prefixes)]
    dense = _dense_hessian(model, batch, names)
    top = float(torch.linalg.eigvalsh(dense)[-1])
    result = estimate_hessian(model, batch, HessianSettings(params=prefixes, trace_probes=200))
    assert result.n_params == dense.shape[0] == 48 + 32
    assert abs(result.lambda_max - top) / abs(top) <= 1e-3
    assert abs(result.trace - float(dense.trace())) <= 4 * result.trace_stderr
    full = estimate_hessian(model, batch, HessianSettings(trace_probes=2))
    assert math.isfinite(full.lambda_max) and full.converged
