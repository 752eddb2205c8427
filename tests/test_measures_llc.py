"""LLC: the estimator on hand-made traces, a known learning coefficient, then devinterp."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from emergence_core.measures.batch import ScoredBatch
from emergence_core.measures.llc import (
    LLCSettings,
    default_n_beta,
    estimate_llc,
    llc_from_trace,
    sample_sgld,
    split_rhat,
)


def test_estimator_excludes_burnin_and_reduces_per_chain_first():
    # chain 0: post-burn-in mean 2, chain 1: 4; burn-in draws are huge and must not count
    trace = torch.tensor([[100.0, 100.0, 1.0, 3.0, 2.0, 2.0],
                          [100.0, 100.0, 4.0, 4.0, 5.0, 3.0]])
    r = llc_from_trace(trace, init_loss=1.0, n_beta=10.0, n_burnin=2)
    assert r.per_chain == pytest.approx((10.0, 30.0))
    assert r.value == pytest.approx(20.0)
    assert r.std == pytest.approx(math.sqrt(200.0))  # ddof = 1
    assert r.loss_trace[1][0] == 100.0 and r.n_burnin == 2
    with_burnin = llc_from_trace(trace, init_loss=1.0, n_beta=10.0, n_burnin=0)
    assert with_burnin.value == pytest.approx(10.0 * (trace.mean() - 1.0))


def test_failed_chain_is_left_out_and_flags_non_convergence():
    gen = torch.Generator().manual_seed(0)
    trace = 1.0 + 0.01 * torch.randn(3, 40, generator=gen, dtype=torch.float64)
    ok = llc_from_trace(trace, init_loss=0.5, n_beta=2.0, n_burnin=10)
    assert ok.converged and ok.rhat < 1.1
    trace[2, 30:] = math.nan
    r = llc_from_trace(trace, init_loss=0.5, n_beta=2.0, n_burnin=10)
    assert math.isnan(r.per_chain[2]) and not r.converged
    assert r.value == pytest.approx((r.per_chain[0] + r.per_chain[1]) / 2)


def test_split_rhat_sees_disagreeing_chains_and_drift():
    gen = torch.Generator().manual_seed(0)
    iid = torch.randn(4, 200, generator=gen, dtype=torch.float64)
    assert split_rhat(iid) < 1.05
    shifted = iid + torch.tensor([[0.0], [0.0], [0.0], [3.0]], dtype=torch.float64)
    assert split_rhat(shifted) > 1.1
    drifting = iid + torch.linspace(0, 4, 200, dtype=torch.float64)
    assert split_rhat(drifting[:1]) > 1.1  # a single chain: its two halves disagree
    assert math.isnan(split_rhat(iid[:, :3]))


class Monomial(nn.Module):
    """K(w) = sum_i w_i^(2 k_i): its learning coefficient at w* = 0 is sum_i 1/(2 k_i)."""

    def __init__(self, ks: list[int]) -> None:
        super().__init__()
        self.register_buffer("k", torch.tensor(ks, dtype=torch.float64))
        self.w = nn.Parameter(torch.zeros(len(ks), dtype=torch.float64))

    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.w ** (2 * self.k)).sum()


def test_known_learning_coefficient_within_15_percent():
    ks = [1] * 6 + [2] * 4
    expected = sum(1 / (2 * k) for k in ks)  # 3 + 1 = 4
    # E[n_beta K] under exp(-n_beta K) is exactly sum 1/(2k); gamma small against the
    # curvature, eps * n_beta = 0.05 keeps the discretisation bias near 2.5%, and the
    # quartic directions need ~20 sqrt(n_beta) steps to mix: hence the long chains
    settings = LLCSettings(eps=5e-4, gamma=1.0, n_chains=4, n_draws=2000, n_burnin=500,
                           n_beta=100.0, minibatch_size=None, seed=0)
    trace = sample_sgld(Monomial(ks), lambda m, ids: m.loss(ids), n=10, settings=settings)
    assert trace.init_loss == 0.0 and trace.losses.shape == (4, 2000)
    r = llc_from_trace(trace.losses, trace.init_loss, trace.n_beta, settings.n_burnin)
    assert abs(r.value - expected) / expected <= 0.15
    assert r.converged


def _trained_mlp(n: int = 64) -> tuple[nn.Module, ScoredBatch]:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x = torch.randn(n, 6, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    batch = ScoredBatch.from_classification(x, y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):  # random labels: a minimum with loss well above 0
        opt.zero_grad()
        batch.loss(model).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model, batch


def test_model_and_global_rng_left_alone_and_reproducible():
    model, batch = _trained_mlp()
    model.train()
    model[2].eval()
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    settings = LLCSettings(n_chains=2, n_draws=30, n_burnin=10, minibatch_size=16, seed=4)
    a = estimate_llc(model, batch, settings)
    b = estimate_llc(model, batch, settings)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model.modules()] == [True, True, True, False]
    assert a.loss_trace == b.loss_trace and a.value == b.value
    assert a.n_beta == pytest.approx(default_n_beta(64)) == pytest.approx(64 / math.log(64))
    assert len(a.per_chain) == 2 and len(a.loss_trace[0]) == 30
    assert a.init_loss == pytest.approx(batch.loss(model).item())


def test_same_update_as_devinterp_llc(tmp_path):
    """devinterp 2.0.1's sampler, same model, settings and noise seeds: same trace, same LLC.

    With full batches the only randomness is the noise, and chain c of both samplers draws
    it from seed + c in parameter order, so the traces agree to float rounding. devinterp's
    ``llc_mean`` averages over every step (burn-in included): our estimator reproduces it
    with n_burnin = 0, and the like-for-like comparison applies n_burnin to both traces.
    """
    pytest.importorskip("devinterp")
    datasets = pytest.importorskip("datasets")
    from devinterp.slt.llc import llc as devinterp_llc

    model, batch = _trained_mlp()
    n = batch.n_samples
    settings = LLCSettings(eps=1e-3, gamma=100.0, n_chains=4, n_draws=200, n_burnin=100,
                           minibatch_size=None, seed=7)
    ours = estimate_llc(model, batch, settings)

    # devinterp wants token sequences: row i is [i, 0], and its loss_fn scores sample i
    dataset = datasets.Dataset.from_dict({"input_ids": [[i, 0] for i in range(n)]})

    def loss_fn(m: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids[:, 0]
        logits = batch.logits(m, ids)  # [b, 1, V]
        return nn.functional.cross_entropy(logits.transpose(1, 2), batch.targets[ids],
                                           reduction="none")  # [b, 1] per "token"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = devinterp_llc(model, dataset.with_format("torch"), {}, lr=settings.eps,
                            n_beta=default_n_beta(n), loss_fn=loss_fn, num_chains=4,
                            num_draws=200, batch_size=n, localization=settings.gamma,
                            init_seed=settings.seed, output_path=tmp_path / "s.zarr",
                            device="cpu")
    ref_trace = torch.tensor(ref.loss_trace.values, dtype=torch.float64)
    ref_init = float(ref.init_loss)
    assert ref_init == pytest.approx(ours.init_loss, rel=1e-6)
    our_trace = torch.tensor(ours.loss_trace, dtype=torch.float64)
    torch.testing.assert_close(our_trace, ref_trace, rtol=1e-5, atol=1e-6)

    as_devinterp = llc_from_trace(ref_trace, ref_init, default_n_beta(n), n_burnin=0)
    assert as_devinterp.value == pytest.approx(float(ref.llc_mean), rel=1e-5)
    like_for_like = llc_from_trace(ref_trace, ref_init, default_n_beta(n), settings.n_burnin)
    assert abs(ours.value - like_for_like.value) / abs(like_for_like.value) <= 0.05
    assert abs(ours.value - like_for_like.value) / abs(like_for_like.value) <= 1e-3  # in fact
    assert ours.value > 0


def test_settings_are_validated():
    with pytest.raises(ValueError, match="n_burnin"):
        LLCSettings(n_draws=100, n_burnin=100)
    with pytest.raises(ValueError, match="eps"):
        LLCSettings(eps=0.0)
    with pytest.raises(ValueError, match="n >= 2"):
        default_n_beta(1)
