"""LLC: the estimator on hand-made traces, a known learning coefficient, then devinterp."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
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


def test_a_descending_stationary_run_fails_the_basin_not_stationarity():
    """Chains settled below L(w*) (no local minimum there): check 1 passes, check 2 fails,
    and the pilot's record keeps the two apart."""
    from emergence_core.measures.llc_checks import sound

    gen = torch.Generator().manual_seed(0)
    trace = 0.4 + 0.01 * torch.randn(3, 40, generator=gen, dtype=torch.float64)
    r = llc_from_trace(trace, init_loss=0.5, n_beta=2.0, n_burnin=10)
    assert r.checks == {"stationary": True, "in_basin": False} and not r.converged
    assert sound(r, max_rise=1.0) == (True, False)


def test_split_rhat_sees_disagreeing_chains_and_drift():
    gen = torch.Generator().manual_seed(0)
    iid = torch.randn(4, 200, generator=gen, dtype=torch.float64)
    assert split_rhat(iid) < 1.05
    shifted = iid + torch.tensor([[0.0], [0.0], [0.0], [3.0]], dtype=torch.float64)
    assert split_rhat(shifted) > 1.1
    drifting = iid + torch.linspace(0, 4, 200, dtype=torch.float64)
    assert split_rhat(drifting[:1]) > 1.1  # a single chain: its two halves disagree
    assert math.isnan(split_rhat(iid[:, :3]))


class Potential(nn.Module):
    """A loss with a known learning coefficient at w* = ``at``, whatever the samples.

    ``kind="sum"``: K(w) = sum_i w_i^(2 k_i), lambda = sum_i 1/(2 k_i); ``"prod"``, the
    normal crossing K(w) = prod_i w_i^(2 k_i), lambda = min_i 1/(2 k_i) (Watanabe, "Algebraic
    Geometry and Statistical Learning Theory", 2009, ch. 2); ``"quadratic"``: K(w) =
    w^T A w / 2 with A positive definite, regular, lambda = d/2.
    """

    def __init__(self, kind: str, ks: list[int] | None = None, a: torch.Tensor | None = None,
                 at: list[float] | None = None) -> None:
        super().__init__()
        d = len(ks) if ks is not None else a.shape[0]
        self.kind = kind
        self.register_buffer("k", torch.tensor(ks or [1] * d, dtype=torch.float64))
        self.register_buffer("a", a if a is not None else torch.eye(d, dtype=torch.float64))
        self.register_buffer("at", torch.tensor(at or [0.0] * d, dtype=torch.float64))
        self.w = nn.Parameter(self.at.clone())

    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        if self.kind == "quadratic":
            v = self.w - self.at
            return v @ self.a @ v / 2
        t = (self.w - self.at) ** (2 * self.k)
        return t.sum() if self.kind == "sum" else t.prod()


def _estimate(model: Potential, **kw: object) -> tuple[float, bool]:
    s = LLCSettings(minibatch_size=None, **kw)
    trace = sample_sgld(model, lambda m, ids: m.loss(ids), n=10, settings=s)
    assert trace.init_loss == 0.0 and trace.losses.shape == (s.n_chains, s.n_draws)
    r = llc_from_trace(trace.losses, trace.init_loss, trace.n_beta, s.n_burnin)
    return r.value, r.converged


@pytest.mark.parametrize("sampler", ["sgld", "rmsprop"])
def test_known_learning_coefficient_regular_model(sampler):
    # curvatures 1 to 3.2 along a random rotation: lambda = d/2 = 16 whatever A is, and
    # n_beta * eig / gamma >= 100 keeps the localisation's share under 1%. eps * n_beta * max
    # curvature = 0.1 (sgld): the steepest direction's variance 2.5% high; the flattest
    # relaxes in 1 / (eps * n_beta) = 33 steps. d = 32 makes n_beta K's spread small.
    d = 32
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1),
                                       dtype=torch.float64))
    a = q @ torch.diag(torch.logspace(0, 0.5, d, dtype=torch.float64)) @ q.T
    eps = 3e-4 if sampler == "sgld" else 1e-4
    value, converged = _estimate(Potential("quadratic", a=a, at=[0.5] * d), eps=eps,
                                 gamma=1.0, n_beta=100.0, n_chains=4, n_draws=1000,
                                 n_burnin=200, seed=0, sampler=sampler)
    assert abs(value - d / 2) / (d / 2) <= 0.10 and converged


@pytest.mark.parametrize("sampler", ["sgld", "rmsprop"])
def test_known_learning_coefficient_singular_polynomial(sampler):
    ks = [1] * 6 + [2] * 4
    expected = sum(1 / (2 * k) for k in ks)  # 3 + 1 = 4
    # E[n_beta K] under exp(-n_beta K) is exactly sum 1/(2k); gamma small against the
    # curvature, eps * n_beta = 0.05 keeps the discretisation bias near 2.5%, and the
    # quartic directions need ~20 sqrt(n_beta) steps to mix: hence the long chains
    eps = 5e-4 if sampler == "sgld" else 5e-5  # rmsprop: 4.35 (+9%); at 3e-5 under-mixed
    value, converged = _estimate(Potential("sum", ks), eps=eps, gamma=1.0, n_chains=4,
                                 n_draws=2000, n_burnin=500, n_beta=100.0, seed=0,
                                 sampler=sampler)
    assert abs(value - expected) / expected <= 0.10 and converged


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["sgld", "rmsprop"])
def test_known_learning_coefficient_normal_crossing(sampler):
    """K = w1^2 w2^4 at 0: lambda = min(1/2, 1/4) = 1/4, approached only as n_beta / gamma^3
    grows (the finite-temperature value depends on that ratio alone). The sampler's truth at
    n_beta = 1e3, gamma = 10 is E[n_beta K] under exp(-n_beta K - gamma |w|^2 / 2): 0.124
    by 2-D quadrature, checked here by importance sampling from the Gaussian prior."""
    gen = np.random.default_rng(0)
    w = gen.normal(0, 1 / math.sqrt(10.0), size=(2, 1_000_000))
    k = 1e3 * w[0] ** 2 * w[1] ** 4
    truth = float((k * np.exp(-k)).sum() / np.exp(-k).sum())
    assert truth == pytest.approx(0.1239, rel=0.01) and truth < 0.25
    # eps large enough that w1 (pulled by gamma only near w2 = 0) relaxes in 1 / (eps * gamma)
    # = 100 steps (sgld): with a small eps every chain starts at 0 and stays near it alike,
    # R-hat passes and the value is half the truth (measured: 0.056 at eps 1e-4)
    eps = 1e-3 if sampler == "sgld" else 2e-4
    value, converged = _estimate(Potential("prod", [1, 2]), eps=eps, gamma=10.0, n_beta=1e3,
                                 n_chains=4, n_draws=4000, n_burnin=1000, seed=0,
                                 sampler=sampler)
    assert abs(value - truth) / truth <= 0.10 and converged


def test_rmsprop_preconditions_steep_directions():
    # eps = 5e-5 with n_beta * curvature = 1e5: plain SGLD is unstable (eps * 1e5 = 5 > 4)
    # while RMSProp's G ~ 1 / |g| (about 0.3 here) shrinks the steep step: lambda = d/2 = 1
    model = Potential("quadratic", a=torch.diag(torch.tensor([1e3, 1.0], dtype=torch.float64)))
    kw = dict(eps=5e-5, gamma=1.0, n_beta=100.0, n_chains=2, n_draws=400, n_burnin=100)
    plain, _ = _estimate(model, sampler="sgld", **kw)
    pre, _ = _estimate(model, sampler="rmsprop", **kw)
    assert math.isnan(plain) or plain > 100
    assert 0.7 <= pre <= 1.4  # lambda = 1 within the noise of 2 x 300 draws


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
                           minibatch_size=None, seed=7, sampler="sgld")
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


def test_same_update_as_devinterp_rmsprop_sgld(tmp_path):
    """devinterp's ``rmsprop_sgld``, same preconditioner constants: the same trace."""
    pytest.importorskip("devinterp")
    datasets = pytest.importorskip("datasets")
    from devinterp.slt.llc import llc as devinterp_llc

    model, batch = _trained_mlp()
    n = batch.n_samples
    settings = LLCSettings(eps=1e-4, gamma=100.0, n_chains=2, n_draws=60, n_burnin=20,
                           minibatch_size=None, seed=3, sampler="rmsprop", rms_alpha=0.9,
                           rms_eps=0.05, rms_freeze=False, rms_bias_correction=False)
    ours = estimate_llc(model, batch, settings)
    dataset = datasets.Dataset.from_dict({"input_ids": [[i, 0] for i in range(n)]})

    def loss_fn(m: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids[:, 0]
        return nn.functional.cross_entropy(batch.logits(m, ids).transpose(1, 2),
                                           batch.targets[ids], reduction="none")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = devinterp_llc(model, dataset.with_format("torch"), {}, lr=settings.eps,
                            n_beta=default_n_beta(n), loss_fn=loss_fn, num_chains=2,
                            num_draws=60, batch_size=n, localization=settings.gamma,
                            init_seed=settings.seed, output_path=tmp_path / "s.zarr",
                            sampling_method="rmsprop_sgld", rmsprop_eps=0.05,
                            rmsprop_alpha=0.9, device="cpu")
    torch.testing.assert_close(torch.tensor(ours.loss_trace, dtype=torch.float64),
                               torch.tensor(ref.loss_trace.values, dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)


def test_diagnostics_mean_loss_and_rise():
    trace = torch.tensor([[9.0, 1.0, 3.0], [9.0, 2.0, 2.0]], dtype=torch.float64)
    r = llc_from_trace(trace, init_loss=0.5, n_beta=4.0, n_burnin=1)
    assert r.mean_loss == pytest.approx(2.0) and r.loss_rise == pytest.approx(1.5)
    assert r.value == pytest.approx(4.0 * r.loss_rise)


def test_n_beta_over_the_minibatch():
    model, batch = _trained_mlp()
    s = LLCSettings(n_chains=1, n_draws=3, n_burnin=1, minibatch_size=16, n_beta_of="minibatch")
    assert estimate_llc(model, batch, s).n_beta == pytest.approx(16 / math.log(16))


def test_settings_are_validated():
    with pytest.raises(ValueError, match="n_burnin"):
        LLCSettings(n_draws=100, n_burnin=100)
    with pytest.raises(ValueError, match="eps"):
        LLCSettings(eps=0.0)
    with pytest.raises(ValueError, match="n >= 2"):
        default_n_beta(1)
    with pytest.raises(ValueError, match="sampler"):
        LLCSettings(sampler="adam")


def test_calibration_verdicts_follow_from_their_numbers_and_none_passing_says_so():
    from emergence_core.measures.llc_calibration import CalibrationSettings, calibrate_llc
    from emergence_core.measures.llc_checks import basin_scale

    model, batch = _trained_mlp()
    base = LLCSettings(n_chains=2, n_draws=200, n_burnin=100, minibatch_size=None, seed=1)
    grid = CalibrationSettings(steps=(0.2, 0.1, 0.05), localisations=(1e-1, 1e-2),
                               relaxation_burnin=2.0, relaxation_kept=2.0)
    c = calibrate_llc(model, batch, base, untrained_loss=10.0, calibration=grid,
                      lambda_max=2.0)
    stiff = c.n_beta * 2.0
    bound = 0.25 * basin_scale(c.init_loss, 10.0)
    assert c.criteria["max_rise"] == pytest.approx(bound)
    for p in c.points:  # every verdict follows from its numbers
        assert p.eps == pytest.approx(p.step / stiff) and p.gamma == pytest.approx(
            p.localisation * stiff)
        assert p.stationary == (p.rhat <= 1.1)
        assert p.in_basin == (0 < p.rise <= bound)
        assert p.value == pytest.approx(c.n_beta * p.rise, rel=1e-6)
    assert not any(p.step == 0.05 and p.halving_change is not None for p in c.points)
    passed = [p for p in c.points if p.passed]
    assert len(passed) <= 1
    if passed:  # the choice is the first point judged by both checks, with its bound
        p = passed[0]
        assert p.stationary and p.in_basin and p.halving_change <= 0.1
        assert p.localisation_change <= 0.05
        assert c.chosen == {"eps": p.eps, "gamma": p.gamma, "n_draws": p.n_draws,
                            "n_burnin": p.n_burnin, "max_rise": bound}
        applied = c.apply(base)
        assert (applied.eps, applied.gamma, applied.max_rise, applied.n_draws) == (
            p.eps, p.gamma, bound, p.n_draws)
    for p in c.points:  # the relaxation budget: 2 + 2 relaxation times 1 / (c k) per chain
        assert (p.n_draws, p.n_burnin) == grid.chain_length(p.step, p.localisation, base)
        assert p.n_burnin == max(100, math.ceil(2 / (p.step * p.localisation)))
    # a point whose budget passes max_draws is not run, and the reason says so
    short = calibrate_llc(model, batch, base, untrained_loss=10.0, lambda_max=2.0,
                          calibration=replace(grid, max_draws=300))
    # (c = 0.1 needs 400 draws at k = 0.1: no halving to judge c = 0.2 by, nothing chosen)
    assert short.chosen is None and "more than max_draws = 300" in short.reason
    skipped = [p for p in short.points if not p.affordable]
    assert skipped and all(p.n_draws > 300 and math.isnan(p.value) and not p.passed
                           for p in skipped)
    assert all(p.n_draws <= 300 for p in short.points if p.affordable)
    none = calibrate_llc(model, batch, base, untrained_loss=10.0, lambda_max=2.0,
                         calibration=replace(grid, max_rise_fraction=1e-9))
    assert none.chosen is None and not none.converged and "see the grid" in none.reason
    assert "not a minimum" not in none.reason  # its chains rise: a minimum, bound too tight
    assert none.points and not any(p.in_basin for p in none.points)
    with pytest.raises(ValueError, match="no setting"):
        none.apply(base)
    flat = calibrate_llc(model, batch, base, untrained_loss=10.0, lambda_max=0.0)
    assert flat.chosen is None and "no positive curvature" in flat.reason and not flat.points
    with pytest.raises(ValueError, match="largest first"):
        CalibrationSettings(steps=(1e-3, 2e-3))
    with pytest.raises(ValueError, match="halve"):
        CalibrationSettings(steps=(0.2, 0.05))


def test_missing_eps_and_gamma_follow_the_checkpoints_stiffness():
    from emergence_core.measures.llc import relative_settings, stiffness

    model, batch = _trained_mlp()
    s = LLCSettings(n_chains=2, n_draws=20, n_burnin=10, minibatch_size=None)
    n_beta, lam = stiffness(model, batch, s)
    derived = relative_settings(model, batch, s)
    assert derived.eps == pytest.approx(0.05 / (n_beta * lam))
    assert derived.gamma == pytest.approx(1e-3 * n_beta * lam)
    r = estimate_llc(model, batch, s)
    assert (r.eps, r.gamma) == (derived.eps, derived.gamma)
    fixed = relative_settings(model, batch, replace(s, eps=1e-5))
    assert fixed.eps == 1e-5 and fixed.gamma == derived.gamma
    with pytest.raises(ValueError, match="needs eps and gamma"):
        sample_sgld(model, lambda m, ids: batch.loss(m, ids), n=64, settings=s)


@pytest.mark.parametrize("minibatch", [None, 16])
def test_batched_chains_draw_what_one_chain_at_a_time_draws(minibatch):
    """The chains advanced as one vmapped computation give the draws of the loop, on the MLP
    and on an s0 transformer (the production path: a trial's probe batch)."""
    from emergence_core.config import resolve_config
    from emergence_core.expensive import trial_model, trial_probe_batch

    model, batch = _trained_mlp()
    cfg = resolve_config("COPY", "s0", 0, train_size=64, diag_size=10)
    data, gpt = trial_model(cfg)
    probe = trial_probe_batch(data, 24, 0)
    for m, b, eps, gamma in ((model, batch, 1e-3, 100.0), (gpt, probe, 1e-5, 100.0)):
        for sampler in ("sgld", "rmsprop"):
            s = LLCSettings(eps=eps, gamma=gamma, n_chains=3, n_draws=12, n_burnin=4,
                            minibatch_size=minibatch, sampler=sampler, seed=2)
            loop = estimate_llc(m, b, replace(s, batch_chains=False))
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)  # no fallback to the loop
                vm = estimate_llc(m, b, replace(s, batch_chains=True))
            torch.testing.assert_close(torch.tensor(vm.loss_trace), torch.tensor(loop.loss_trace),
                                       rtol=1e-4, atol=1e-5)
            assert vm.value == pytest.approx(loop.value, rel=1e-3, abs=1e-3)
            assert vm.drift_noise == pytest.approx(loop.drift_noise, rel=1e-3)


def test_diagnostics_see_a_step_too_large():
    """MALA acceptance and the drift/noise ratio: faithful at a small step, not at a large one
    (full batches on the regular quadratic, eps * n_beta * curvature 0.02 against 1.5)."""
    model = Potential("quadratic", a=torch.eye(8, dtype=torch.float64))
    kw = dict(gamma=1.0, n_beta=100.0, n_chains=2, n_draws=300, n_burnin=100,
              minibatch_size=None, sampler="sgld")
    small = estimate_llc(model, _PotentialBatch(model), LLCSettings(eps=2e-4, **kw))
    large = estimate_llc(model, _PotentialBatch(model), LLCSettings(eps=1.5e-2, **kw))
    assert small.mala_acceptance > 0.95 > 0.8 > large.mala_acceptance
    assert large.drift_noise > small.drift_noise
    minibatched = estimate_llc(model, _PotentialBatch(model),
                               LLCSettings(eps=2e-4, **{**kw, "minibatch_size": 4}))
    assert math.isnan(minibatched.mala_acceptance)  # by design: U across minibatches


class _PotentialBatch:
    n_population = None

    def __init__(self, model: Potential) -> None:
        self.n_samples = 10

    def loss(self, model: nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
        return model.loss(ids)


def test_yaml_strings_for_the_optional_step_and_localisation_become_numbers():
    # YAML 1.1 reads 1e-6 (no dot) as a string; eps and gamma default to None now
    from emergence_core.expensive import make_settings

    s = make_settings("llc", {"eps": "1e-6", "gamma": "10"})
    assert (s.eps, s.gamma) == (1e-6, 10.0)
    with pytest.raises(ValueError, match="eps must be a number"):
        make_settings("llc", {"eps": "fast"})


def test_a_checkpoint_off_its_minimum_is_named_not_a_minimum():
    """A planted non-minimum: a quadratic whose w* sits 3 units from its minimum (L(w*) = 4.5,
    gradient 3). Every chain descends, whatever the step or localisation, so nothing is
    chosen and the reason says why, with the rises it measured."""
    from emergence_core.measures.llc_calibration import CalibrationSettings, calibrate_llc

    model = Potential("quadratic", a=torch.eye(2, dtype=torch.float64), at=[0.0, 0.0])
    with torch.no_grad():
        model.w.copy_(torch.tensor([3.0, 0.0], dtype=torch.float64))
    base = LLCSettings(n_chains=2, n_draws=200, n_burnin=100, minibatch_size=None, seed=0)
    c = calibrate_llc(model, _PotentialBatch(model), base, untrained_loss=10.0,
                      lambda_max=1.0, calibration=CalibrationSettings(
                          steps=(0.2, 0.1, 0.05), localisations=(1e-2, 1e-3)))
    assert c.init_loss == pytest.approx(4.5)
    assert c.chosen is None and c.reason.startswith("not a minimum:"), c.reason
    run = [p for p in c.points if p.affordable]
    assert run and all(p.rise < 0 and not p.in_basin for p in run)
    assert f"at {len(run)} of {len(run)} points" in c.reason


def test_a_stopped_pilot_resumes_at_its_first_unfinished_run_and_chooses_the_same(tmp_path):
    """A pilot killed midway (a stopped sweep) keeps its finished runs in the run folder; run
    again on the same checkpoint it reads them back, runs only the rest, and its record is the
    uninterrupted pilot's. Another checkpoint's runs are never reused."""
    from emergence_core.calibrations import PilotRuns
    from emergence_core.measures.llc_calibration import CalibrationSettings, calibrate_llc
    from emergence_core.run_folder import RunFolder

    model, batch = _trained_mlp()
    base = LLCSettings(n_chains=2, n_draws=200, n_burnin=100, minibatch_size=None, seed=1)
    grid = CalibrationSettings(steps=(0.2, 0.1, 0.05), localisations=(1e-1, 1e-2),
                               relaxation_burnin=2.0, relaxation_kept=2.0)

    def pilot(store=None):
        return calibrate_llc(model, batch, base, untrained_loss=10.0, calibration=grid,
                             lambda_max=2.0, store=store)

    whole = pilot()
    assert sum(p.affordable for p in whole.points) >= 3 and whole.reused == 0
    # the localised tier's k = 0.1 repeats runs of the grid's k = 0.1 column: read back once
    repeats = pilot(PilotRuns(RunFolder(tmp_path / "once"), "T-s0-0", "llc", 300)).reused
    runs = PilotRuns(RunFolder(tmp_path), "T-s0-0", "llc", 300)

    class Killed(Exception):
        pass

    class StopsAfter:  # the process dies as its third run finishes, after writing it
        def __init__(self, n):
            self.n = n

        def get(self, key):
            return runs.get(key)

        def put(self, key, value):
            runs.put(key, value)
            self.n -= 1
            if self.n == 0:
                raise Killed

    with pytest.raises(Killed):
        pilot(StopsAfter(2))
    assert len(runs) == 2
    resumed = pilot(runs)
    assert resumed.reused == repeats + 2
    assert resumed.chosen == whole.chosen and resumed.reason == whole.reason
    assert [p.value for p in resumed.points] == [p.value for p in whole.points]
    assert resumed.to_json()["reused_runs"] == repeats + 2
    # another checkpoint (a different L(w*)) reads back nothing
    with torch.no_grad():
        model[0].bias.add_(0.05)
    other = pilot(runs)
    assert other.reused == repeats
    runs.clear()
    assert len(runs) == 0 and not runs.dir.parent.exists()
    # the Lanczos of lambda_max (minutes on a real checkpoint) is kept too: killed as it is
    # written, the pilot started again reads it back
    small = replace(grid, steps=(0.2, 0.1), localised=None)
    first = calibrate_llc(model, batch, base, untrained_loss=10.0, calibration=small)
    with pytest.raises(Killed):
        calibrate_llc(model, batch, base, untrained_loss=10.0, calibration=small,
                      store=StopsAfter(1))
    again = calibrate_llc(model, batch, base, untrained_loss=10.0, calibration=small,
                          store=runs)
    assert again.reused == 1 and again.lambda_max == first.lambda_max
    assert [p.value for p in again.points] == [p.value for p in first.points]


@pytest.mark.parametrize("sampler,minibatch,batched", [
    ("sgld", None, False), ("sgld", 16, False), ("rmsprop", 16, False), ("sgld", 16, True),
    ("rmsprop", None, True)])
def test_a_run_carried_on_draws_what_a_longer_run_draws(sampler, minibatch, batched):
    """The pilot lengthens check 3's runs by carrying their chains on: the draws, the
    diagnostics (MALA's included, full batch) and the estimate must be a fresh longer run's,
    bit for bit, for the plain and the preconditioned sampler, chains batched or not."""
    from emergence_core.measures.llc import estimate_llc_chains

    model, batch = _trained_mlp()
    s = LLCSettings(n_chains=2, n_draws=60, n_burnin=20, minibatch_size=minibatch, seed=3,
                    eps=1e-3, gamma=10.0, sampler=sampler, batch_chains=batched)
    short, chains = estimate_llc_chains(model, batch, s)
    runs = list(chains.runs)
    carried, on = estimate_llc_chains(model, batch, replace(s, n_draws=150), chains)
    # the same chains advanced by the 90 extra draws, not run again from w*
    assert on is chains and on.runs == runs and all(r.t == 150 for r in runs)
    fresh, _ = estimate_llc_chains(model, batch, replace(s, n_draws=150))
    assert carried.loss_trace == fresh.loss_trace and len(fresh.loss_trace[0]) == 150
    assert carried.loss_trace[0][:60] == short.loss_trace[0]
    for field in ("value", "rhat", "mean_loss", "drift_noise", "mala_acceptance",
                  "precond_change"):
        a, b = getattr(carried, field), getattr(fresh, field)
        assert a == b or (math.isnan(a) and math.isnan(b)), field
    again, _ = estimate_llc_chains(model, batch, replace(s, n_draws=300), chains)
    assert again.loss_trace == estimate_llc_chains(model, batch,
                                                   replace(s, n_draws=300))[0].loss_trace
    with pytest.raises(ValueError, match="more draws at the same settings"):
        estimate_llc_chains(model, batch, replace(s, n_draws=400, eps=2e-3), chains)
