"""The LLC's default procedure (calibration, then the estimate at its choice) against models
whose learning coefficient is known analytically, from the literature, not chosen by us.

- Deep linear networks: lambda by Aoyagi's theorem (M. Aoyagi, "Consideration on the learning
  efficiency of multiple-layered neural networks with linear units", Neural Networks 172,
  106132, 2024, Theorem 1), the benchmark of Lau et al. (2023, appendix J) and of Furman and
  Lau ("Estimating the local learning coefficient at scale", 2024). The model sits at the
  teacher (w* = the true parameter) and the data are the teacher's outputs plus unit noise.
- Reduced-rank regressions m -> h -> n with outputs independent of the inputs (true rank 0),
  trained as in devinterp's own ``rrr_test``: lambda by Aoyagi and Watanabe ("Stochastic
  complexities of reduced rank regression in Bayesian estimation", Neural Networks 18, 2005),
  with devinterp's tolerance of 40%.
- A polynomial potential: K(w) = sum_i w_i^(2 k_i), lambda = sum_i 1 / (2 k_i) (Watanabe,
  "Algebraic Geometry and Statistical Learning Theory", 2009, ch. 2).

And a negative control: perturbed weights are no minimum, and the checks must say so.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from emergence_core.measures.batch import RegressionBatch
from emergence_core.measures.llc import LLCSettings, estimate_llc, sample_sgld
from emergence_core.measures.llc_calibration import calibrate_llc


def aoyagi_lambda(widths: list[int], rank: int) -> float:
    """The learning coefficient of a deep linear network x -> W_L ... W_1 x at a true
    parameter whose product has rank ``rank`` (Aoyagi 2024, Theorem 1).

    widths = [H_1 (input), ..., H_{L+1} (output)], M_s = H_s - r. Find the set S of l + 1
    indices with max_{s in S} M_s < min_{k not in S} M_k, sum_S M_s >= l max_S M_s and
    sum_S M_s < l min_{k not in S} M_k (the last two vacuous where nothing is left out or
    l = 0 makes them so); with a = sum_S M_s - (ceil(sum_S M_s / l) - 1) l,

        lambda = (-r^2 + r (H_1 + H_{L+1})) / 2 + a (l - a) / (4 l)
                 - l (l - 1) / 4 (sum_S M_s / l)^2 + 1/2 sum_{i < j in S} M_i M_j.

    S is the l + 1 smallest M_s (the first condition), so only prefixes of the sorted M are
    tried. With l = 0 the third condition reads sum < 0 and never holds.
    """
    if not 0 <= rank <= min(widths):
        raise ValueError(f"rank {rank} outside 0..{min(widths)}")
    m = sorted(h - rank for h in widths)
    base = (-rank**2 + rank * (widths[0] + widths[-1])) / 2
    for size in range(1, len(m) + 1):
        inside, rest = m[:size], m[size:]
        ell, total = size - 1, sum(m[:size])
        if rest and not max(inside) < min(rest):
            continue
        if ell == 0 and (not rest or total < 0):
            return base  # one layer only, or nothing smaller: the regular part alone
        if ell == 0:
            continue
        if total < ell * max(inside) or (rest and not total < ell * min(rest)):
            continue
        a = total - (math.ceil(total / ell) - 1) * ell
        pairs = sum(inside[i] * inside[j] for i in range(size) for j in range(i + 1, size))
        return base + a * (ell - a) / (4 * ell) - ell * (ell - 1) / 4 * (total / ell) ** 2 \
            + pairs / 2
    raise AssertionError(f"no set satisfies Aoyagi's conditions for {widths}, rank {rank}")


def aoyagi_watanabe_rrr(m: int, h: int, n: int) -> float:
    """lambda of a reduced-rank regression m -> h -> n at true rank 0 (Aoyagi and Watanabe
    2005, as devinterp's ``rrr_test`` states its four cases)."""
    if m + h < n:
        return m * h / 2
    if n + h < m:
        return h * n / 2
    if m + n < h:
        return m * n / 2
    odd = (m + h + n) % 2
    return (odd + 2 * m * n + 2 * h * n + 2 * m * h - n**2 - m**2 - h**2) / 8


@pytest.mark.parametrize("m, h, n", [(5, 3, 5), (5, 4, 5), (4, 3, 8), (8, 3, 4), (3, 8, 4),
                                     (6, 2, 7), (2, 5, 3)])
def test_aoyagi_formula_agrees_with_the_reduced_rank_regression_cases(m, h, n):
    # two formulas from two papers, on the two-layer networks both cover
    assert aoyagi_lambda([m, h, n], 0) == pytest.approx(aoyagi_watanabe_rrr(m, h, n))


@pytest.mark.parametrize("widths, rank", [([6, 4, 5], 4), ([7, 5, 5, 6], 5), ([4, 3, 3, 5], 3)])
def test_aoyagi_formula_is_half_the_dimension_where_the_model_is_regular(widths, rank):
    # rank = the narrowest width: the product's manifold of rank-r matrices is smooth, of
    # dimension r (H_1 + H_{L+1} - r), and lambda is half of it
    assert aoyagi_lambda(widths, rank) == pytest.approx(rank * (widths[0] + widths[-1] - rank)
                                                        / 2)


@pytest.mark.parametrize("rank", [0, 1, 3])
def test_aoyagi_formula_of_one_layer_is_its_dimension_over_two(rank):
    # a single matrix is a regular model whatever the true rank: lambda = d / 2
    assert aoyagi_lambda([3, 4], rank) == pytest.approx(6.0)


def test_aoyagi_formula_on_the_deep_linear_network_of_the_issue():
    assert aoyagi_lambda([10, 8, 6, 10], 3) == pytest.approx(33.0)
    assert aoyagi_lambda([5, 3, 5], 0) == pytest.approx(6.5)  # devinterp's 5-3-5


def _dln(widths: list[int], rank: int, n: int, seed: int = 0) -> tuple[nn.Module, RegressionBatch]:
    """A teacher deep linear network whose product has rank ``rank``, and its noisy data."""
    g = torch.Generator().manual_seed(seed)
    layers = [nn.Linear(a, b, bias=False) for a, b in itertools.pairwise(widths)]
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g)
                               / math.sqrt(layer.weight.shape[1]))
        u, s, vh = torch.linalg.svd(layers[0].weight, full_matrices=False)
        s[rank:] = 0  # the first layer's rank bounds the product's
        layers[0].weight.copy_(u @ torch.diag(s) @ vh)
    model = nn.Sequential(*layers)
    x = torch.randn(n, widths[0], generator=g)
    with torch.no_grad():
        y = model(x) + torch.randn(n, widths[-1], generator=g)
    product = model[0].weight.T
    for layer in model[1:]:
        product = product @ layer.weight.T
    assert int(torch.linalg.matrix_rank(product)) == rank
    return model, RegressionBatch(x, y)


def _untrained(widths: list[int], batch: RegressionBatch) -> float:
    torch.manual_seed(123)
    fresh = nn.Sequential(*[nn.Linear(a, b, bias=False)
                            for a, b in itertools.pairwise(widths)])
    with torch.no_grad():
        return float(batch.loss(fresh))


def _default_procedure(model: nn.Module, batch, untrained: float, settings: LLCSettings):
    """Calibration on the checkpoint, then an estimate at its choice with fresh seeds."""
    cal = calibrate_llc(model, batch, settings, untrained)
    assert cal.chosen is not None, cal.reason
    chosen = [p for p in cal.points if p.passed]
    assert len(chosen) == 1 and chosen[0].stationary and chosen[0].in_basin
    assert chosen[0].halving_change <= 0.1 and chosen[0].localisation_change <= 0.05
    r = estimate_llc(model, batch, replace(cal.apply(settings), seed=settings.seed + 100))
    assert r.checks == {"stationary": True, "in_basin": True} and r.converged
    return r, cal


DLN_CASES = [([10, 8, 6, 10], 3), ([8, 6, 8], 2), ([6, 8, 4, 6], 1)]


@pytest.mark.slow
@pytest.mark.parametrize("widths, rank", DLN_CASES)
def test_default_procedure_within_20_percent_on_deep_linear_networks(widths, rank):
    truth = aoyagi_lambda(widths, rank)
    model, batch = _dln(widths, rank, n=10_000)
    settings = LLCSettings(n_chains=4, n_draws=1000, n_burnin=500, minibatch_size=500)
    r, cal = _default_procedure(model, batch, _untrained(widths, batch), settings)
    assert abs(r.value - truth) / truth <= 0.20, (widths, rank, r.value, truth, cal.to_json())
    if widths == [10, 8, 6, 10]:
        # the localisation check at work: the strongest localisation biases this network low
        # (measured 29.4 at k = 1e-2 against 33) and must not be the choice
        strong = next(p for p in cal.points if p.localisation == 1e-2 and p.step == 0.2)
        assert strong.value < 0.93 * truth and not strong.passed
        assert strong.localisation_change is not None and strong.localisation_change > 0.05


def _rrr(m: int, h: int, n: int) -> tuple[nn.Module, RegressionBatch]:
    """devinterp's ``rrr_test`` set-up: 1,000 samples, outputs independent of the inputs,
    5,000 full-batch Adam steps at lr 0.01."""
    torch.manual_seed(1)
    x, y = torch.randn(1000, m), torch.randn(1000, n)
    model = nn.Sequential(nn.Linear(m, h, bias=False), nn.Linear(h, n, bias=False))
    batch = RegressionBatch(x, y)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(5000):
        opt.zero_grad()
        batch.loss(model).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model, batch


@pytest.mark.slow
@pytest.mark.parametrize("m, h, n", [(5, 3, 5), (4, 3, 8)])
def test_default_procedure_within_40_percent_on_reduced_rank_regressions(m, h, n):
    truth = aoyagi_watanabe_rrr(m, h, n)
    model, batch = _rrr(m, h, n)
    # the regression's loss sits at its noise floor (about 0.99): an absolute basin ceiling
    # of a quarter of the untrained loss could never pass it; the rise above L(w*) does
    settings = LLCSettings(n_chains=4, n_draws=2000, n_burnin=1000, minibatch_size=None)
    r, cal = _default_procedure(model, batch, _untrained([m, h, n], batch), settings)
    assert cal.init_loss > 0.9
    if (m, h, n) == (4, 3, 8):
        # the halving check at work: the largest step overestimates (measured 8.22 against
        # 6.0) and its value moves by over 10% at half the step, so it is not the choice
        big = next(p for p in cal.points if p.step == 0.2 and p.localisation == 1e-2)
        assert big.value > 1.2 * truth and big.halving_change > 0.1 and not big.passed
    assert abs(r.value - truth) / truth <= 0.40, (m, h, n, r.value, truth, cal.to_json())
    assert r.mala_acceptance > 0.5  # full batches: the MALA diagnostic is computed


class _Potential(nn.Module):
    """K(w) = sum_i w_i^(2 k_i) whatever the samples: lambda = sum 1 / (2 k_i)."""

    def __init__(self, ks: list[int]) -> None:
        super().__init__()
        self.register_buffer("k", torch.tensor(ks, dtype=torch.float64))
        self.w = nn.Parameter(torch.zeros(len(ks), dtype=torch.float64))


class _PotentialBatch:
    """The loss K(w) on n notional samples (the LossBatch protocol)."""

    n_samples, n_population = 10, None

    def loss(self, model: _Potential, ids: torch.Tensor | None = None) -> torch.Tensor:
        return (model.w ** (2 * model.k)).sum()


@pytest.mark.slow
def test_default_procedure_on_a_polynomial_potential():
    ks = [1] * 6 + [2] * 4
    truth = sum(1 / (2 * k) for k in ks)  # 3 + 1 = 4
    settings = LLCSettings(n_chains=4, n_draws=2000, n_burnin=1000, minibatch_size=None,
                           n_beta=100.0)
    # "untrained": the loss one unit away from w* along every axis
    r, _ = _default_procedure(_Potential(ks), _PotentialBatch(), float(len(ks)), settings)
    assert abs(r.value - truth) / truth <= 0.20, r.value


@pytest.mark.slow
def test_perturbed_weights_fail_the_checks():
    """The negative control: a deep linear network moved off its minimum. Its chains descend
    (the rise is negative), so the basin check fails at every setting of the pilot, nothing
    is chosen, and an estimate at the true model's choice reports not converged."""
    widths, rank = [10, 8, 6, 10], 3
    model, batch = _dln(widths, rank, n=10_000)
    settings = LLCSettings(n_chains=4, n_draws=400, n_burnin=200, minibatch_size=500)
    good = calibrate_llc(model, batch, settings, _untrained(widths, batch))
    assert good.chosen is not None
    moved = nn.Sequential(*[nn.Linear(a, b, bias=False)
                            for a, b in itertools.pairwise(widths)])
    moved.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    untrained = _untrained(widths, batch)
    bad = calibrate_llc(moved, batch, settings, untrained)
    assert bad.chosen is None and bad.points
    assert not any(p.in_basin for p in bad.points)
    ran = [p for p in bad.points if p.affordable]  # (a budget may leave points unrun)
    assert ran and all(p.rise < 0 and p.below_share > 0.5 for p in ran)
    r = estimate_llc(moved, batch, good.apply(settings))
    assert r.value < 0 and not r.converged and r.checks["in_basin"] is False


def test_bias_corrected_preconditioner_takes_the_stated_step():
    """A linear loss L(w) = a . w has the constant gradient a, so the settled V is a^2 and G
    = 1 / (|a| + rms_eps). Frozen after 50 adapting steps, the uncorrected average is only
    (1 - 0.99^50) = 39.5% of a^2; with the correction the drift per step is exactly
    eps / 2 * G * n_beta * a, measured here from the mean displacement of the kept draws
    (gamma = 0, so the drift is all there is besides zero-mean noise)."""
    a = torch.tensor([0.5, 2.0, 8.0], dtype=torch.float64)

    class Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3, dtype=torch.float64))

    def loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return model.w @ a

    eps, n_beta, draws, burnin = 1e-4, 1000.0, 400, 100
    model = Linear()
    for corrected, expected_v in ((True, a**2), (False, (1 - 0.99**50) * a**2)):
        s = LLCSettings(eps=eps, gamma=0.0, n_beta=n_beta, n_chains=1, n_draws=draws,
                        n_burnin=burnin, minibatch_size=None, sampler="rmsprop",
                        rms_bias_correction=corrected, seed=0)
        trace = sample_sgld(model, loss, n=4, settings=s)
        g = 1 / (expected_v.sqrt() + s.rms_eps)
        # the loss is linear: L(w_t) = a . w_t, so the loss trace gives a . w_t directly;
        # its mean slope over the frozen steps is -eps/2 * n_beta * sum(a^2 G)
        kept = trace.losses[0, burnin:]
        slope = float((kept[-1] - kept[0]) / (kept.numel() - 1))
        stated = -eps / 2 * n_beta * float((a * a * g).sum())
        noise = math.sqrt(eps * float((a * a * g).sum()) * 2 / (kept.numel() - 1))
        assert abs(slope - stated) <= 4 * noise, (corrected, slope, stated)
    # and the two differ by far more than that noise: the correction is what makes it right
    g_true, g_raw = 1 / (a + 0.1), 1 / (math.sqrt(1 - 0.99**50) * a + 0.1)
    assert float((a * a * g_raw).sum()) / float((a * a * g_true).sum()) > 1.4


class _Quadratic(nn.Module):
    """L(w) = L0 + 1/2 sum_i h_i w_i^2 at w* = 0: each direction an Ornstein-Uhlenbeck chain
    under SGLD, so the whole loss trace is known in closed form."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d, dtype=torch.float64))


class _QuadraticBatch:
    def __init__(self, h: torch.Tensor, floor: float = 1.0) -> None:
        self.h, self.floor = h, floor
        self.n_samples, self.n_population = 8, None

    def loss(self, model: nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.floor + 0.5 * (self.h * model.w**2).sum()


def _expected_llc(h: torch.Tensor, n_beta: float, eps: float, gamma: float, n_draws: int,
                  n_burnin: int) -> tuple[float, float]:
    """(expected estimate, stationary value) of plain SGLD on the quadratic, exactly.

    Per direction w_{t+1} = a w_t + sqrt(eps) xi with a = 1 - eps (n_beta h + gamma) / 2 and
    w_0 = 0, so Var w_t = v (1 - a^(2t)), v = eps / (1 - a^2); draw t is L(w_t) and the
    estimate is n_beta times the mean over the kept draws of sum_i h_i / 2 Var w_t.
    """
    h = h.double()
    r = (1 - eps * (n_beta * h + gamma) / 2) ** 2
    v = eps / (1 - r)
    kept = n_draws - n_burnin
    mean_r_t = r**n_burnin * (1 - r**kept) / ((1 - r) * kept)  # mean of r^t over kept t
    stationary = n_beta * float((h / 2 * v).sum())
    return n_beta * float((h / 2 * v * (1 - mean_r_t)).sum()), stationary


def test_the_relaxation_budget_gives_chains_their_stationary_value():
    """A planted spectrum like a transformer's (a few stiff directions over a bulk spread
    over four decades below lambda_max): fixed-length chains stop while the soft directions
    still relax, and the halving check then measures the chain length, not the step. The
    calibration's budget (burn-in and kept draws in relaxation times 1 / (eps gamma)) reaches
    the stationary value, and the sampler itself agrees with the closed form."""
    from emergence_core.measures.llc_calibration import CalibrationSettings

    d, n_beta, lam = 400, 1000.0, 1.0
    h = lam * 10 ** -torch.linspace(0, 4, d, dtype=torch.float64)
    stiff = n_beta * lam
    cal = CalibrationSettings(relaxation_burnin=2.0, relaxation_kept=2.0)
    assert CalibrationSettings().chain_length(0.05, 1e-2, LLCSettings()) == (200, 100)  # off
    base = LLCSettings(n_chains=4, n_beta=n_beta, minibatch_size=None)  # 200 draws, 100 burn-in
    c, k = 0.05, 1e-2
    eps, gamma = c / stiff, k * stiff

    def expected(cc: float, draws: int, burnin: int) -> tuple[float, float]:
        return _expected_llc(h, n_beta, cc / stiff, gamma, draws, burnin)

    n_draws, n_burnin = cal.chain_length(c, k, base)
    assert (n_draws, n_burnin) == (8000, 4000)  # tau = 1 / (c k) = 2000 steps
    budget, stationary = expected(c, n_draws, n_burnin)
    fixed, _ = expected(c, 200, 100)
    assert budget / stationary > 1 - 0.01  # the 5.8% bound is per slowest direction
    assert fixed / stationary < 1 - 0.2  # 200 draws: far from stationary
    # the halving check, at a fixed length against the budget at each step
    half_fixed, _ = expected(c / 2, 200, 100)
    half_budget, half_stationary = expected(c / 2, *cal.chain_length(c / 2, k, base))
    true_bias = abs(stationary - half_stationary) / half_stationary
    assert true_bias < 0.01
    assert abs(fixed - half_fixed) / half_fixed > 0.15  # it would fail a sound step
    assert abs(abs(budget - half_budget) / half_budget - true_bias) < 0.01
    # the sampler agrees with the closed form at both lengths (4 chains; the draws' spread)
    model, batch = _Quadratic(d), _QuadraticBatch(h)
    for draws, burnin, want in ((n_draws, n_burnin, budget), (200, 100, fixed)):
        r = estimate_llc(model, batch, replace(base, eps=eps, gamma=gamma, n_draws=draws,
                                               n_burnin=burnin))
        assert abs(r.value - want) <= max(4 * r.std / 2, 0.02 * want), (draws, r.value, want)


def test_the_localised_tier_estimates_the_llc_at_its_stated_localisation():
    """A planted checkpoint like a transformer's: 20 stiff directions over 380 soft ones whose
    share depends on gamma (n_beta h = 1 against gamma = 10 or 100), so no gamma-independent
    value exists and the strict tier chooses nothing. The localised tier chooses a setting at
    gamma = 0.1 * n_beta * lambda_max, with chains relaxed under it, whose estimate is the
    closed form of the localised LLC there (the soft directions' share is n_beta h / (2
    (n_beta h + gamma)) each), not the unlocalised value nor the strict tier's unrelaxed one."""
    from emergence_core.measures.llc_calibration import CalibrationSettings, calibrate_llc

    d, n_beta, lam = 400, 1000.0, 1.0
    h = torch.cat([torch.full((20,), lam, dtype=torch.float64),
                   torch.full((d - 20,), 1e-3 * lam, dtype=torch.float64)])
    model, batch = _Quadratic(d), _QuadraticBatch(h)
    base = LLCSettings(n_chains=4, n_beta=n_beta, minibatch_size=None)  # 200 draws, 100 burn-in
    cal = calibrate_llc(model, batch, base, untrained_loss=2.0, lambda_max=lam)
    assert cal.kind == "localised" and cal.converged, cal.reason
    strict = [p for p in cal.points if p.tier == "gamma-independent"]
    assert strict and not any(p.passed for p in strict)
    chosen = next(p for p in cal.points if p.passed)
    assert chosen.tier == "localised" and chosen.localisation == 0.1
    ch = cal.chosen
    assert ch["gamma"] == pytest.approx(0.1 * n_beta * lam)
    # chains of >= 2 relaxation times tau = 1 / (c k) of burn-in and of kept draws
    tau = 1 / (chosen.step * chosen.localisation)
    assert ch["n_burnin"] >= 2 * tau and ch["n_draws"] - ch["n_burnin"] >= 2 * tau
    expected, stationary = _expected_llc(h, n_beta, ch["eps"], ch["gamma"], ch["n_draws"],
                                         ch["n_burnin"])
    assert expected / stationary > 0.98  # relaxed: within 2% of the localised value
    assert stationary == pytest.approx(float((n_beta * h / (2 * (n_beta * h + 100))).sum()),
                                       rel=0.02)  # that value, to discretisation
    r = estimate_llc(model, batch, cal.apply(base))
    assert r.converged and abs(r.value - expected) <= max(3 * r.std / 2, 0.03 * expected), \
        (r.value, r.std, expected)
    unlocalised = float((h > 0).sum()) / 2  # 200: what gamma -> 0 would approach
    assert r.value < unlocalised / 10
    off = calibrate_llc(model, batch, base, untrained_loss=2.0, lambda_max=lam,
                        calibration=CalibrationSettings(localised=None))
    assert off.chosen is None and off.kind == "" and "localised tier" not in off.reason


@pytest.mark.slow
def test_a_regular_model_of_lambda_one_is_measured_once_its_halving_is_decidable():
    """A regular model has lambda = d / 2 (Watanabe, "Algebraic Geometry and Statistical
    Learning Theory", 2009, ch. 1; Aoyagi's formula at full rank): here d = 2, lambda = 1, on
    the quadratic whose SGLD chains are known in closed form. n_beta (L - L*) then fluctuates
    by about its own mean, so at the settings' 100 kept draws the halving check compares noise
    (z x the change's Monte Carlo error well above the 10% it judges), and judged on the
    point values alone the pilot chose nothing. Check 3 decided once its error allows doubles
    the chains until it does; the chosen setting keeps that length and its estimate lands
    within 10% of lambda = 1 and on the closed form of its localised value."""
    from emergence_core.measures.llc_calibration import CalibrationSettings
    from emergence_core.measures.llc_checks import change_noise

    d, n_beta = 2, 1000.0
    h = torch.ones(d, dtype=torch.float64)
    model, batch = _Quadratic(d), _QuadraticBatch(h)
    base = LLCSettings(n_chains=4, n_beta=n_beta, minibatch_size=None)  # 200 draws, 100 kept
    short = [estimate_llc(model, batch, replace(base, eps=c / n_beta, gamma=0.1 * n_beta))
             for c in (0.2, 0.1)]
    assert change_noise(*short, z=2.0) > 3 * CalibrationSettings().max_halving_change
    cal = calibrate_llc(model, batch, base, untrained_loss=2.0, lambda_max=1.0)
    assert cal.converged, cal.reason
    chosen = next(p for p in cal.points if p.passed)
    assert chosen.halving_noise <= 0.1 and chosen.halving_change <= 0.1
    assert cal.chosen["n_draws"] - cal.chosen["n_burnin"] >= 8 * 100  # lengthened
    r = estimate_llc(model, batch, replace(cal.apply(base), seed=base.seed + 100))
    assert r.converged and abs(r.value - d / 2) <= 0.1 * d / 2, (r.value, cal.to_json())
    expected, _ = _expected_llc(h, n_beta, cal.chosen["eps"], cal.chosen["gamma"],
                                cal.chosen["n_draws"], cal.chosen["n_burnin"])
    assert abs(r.value - expected) <= 3 * r.mcse, (r.value, r.mcse, expected)


def test_the_monte_carlo_error_is_that_of_an_ar1_chain():
    """Geyer's initial monotone sequence on AR(1) chains, whose integrated autocorrelation
    time (1 + phi) / (1 - phi) is known: within 15% at phi = 0.5 and 0.9 over 100,000 draws
    (the estimate's own spread there is about 6%),
    and the LLC's Monte Carlo error is n_beta sd / sqrt(C N / tau)."""
    from emergence_core.measures.llc import LLCResult, integrated_time

    g = torch.Generator().manual_seed(0)
    n = 100_000
    for phi in (0.5, 0.9):
        e = torch.randn(n, generator=g, dtype=torch.float64).tolist()
        xs = [e[0] / math.sqrt(1 - phi**2)]  # started at its stationary spread
        for t in range(1, n):
            xs.append(phi * xs[-1] + e[t])
        x = torch.tensor(xs, dtype=torch.float64)
        tau = (1 + phi) / (1 - phi)
        assert abs(integrated_time(x) - tau) <= 0.15 * tau, (phi, integrated_time(x))
    assert integrated_time(torch.ones(10)) == 1.0
    trace = torch.stack([x, x.flip(0)]) * 1e-3  # two chains of the phi = 0.9 series
    r = LLCResult(0.0, 0.0, (0.0, 0.0), tuple(map(tuple, trace.tolist())), 0.0, 100.0, 0,
                  1.0, True)
    want = 100.0 * float(trace.std(dim=1).pow(2).mean().sqrt()) * math.sqrt(19 / (2 * n))
    assert r.mcse == pytest.approx(want, rel=0.2)


class _RotatedQuadraticBatch(_QuadraticBatch):
    """L(w) = L0 + 1/2 w^T Q diag(h) Q^T w: the planted spectrum in a random basis, so that
    a probe's quadrature is a real estimate (on a diagonal Hessian Rademacher probes are
    exact whatever the quadrature)."""

    def __init__(self, h: torch.Tensor, seed: int = 0) -> None:
        super().__init__(h)
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(h.numel(), h.numel(), generator=g,
                                           dtype=torch.float64))
        self.matrix = q @ torch.diag(h) @ q.T

    def loss(self, model: nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.floor + 0.5 * model.w @ self.matrix @ model.w


def test_the_spectral_budget_reads_the_chain_length_off_the_measured_spectrum():
    """Stochastic Lanczos quadrature of the Hessian gives the density the closed form needs:
    on the planted spectrum (rotated) its predicted shortfall matches the exact one, the
    length it chooses is as short as the target allows and far below the worst case, and a
    model whose soft directions are exactly flat needs no longer chains at all."""
    from emergence_core.measures.llc_calibration import CalibrationSettings
    from emergence_core.measures.spectrum import hessian_spectrum, predicted_llc, spectral_length

    d, n_beta, lam = 400, 1000.0, 1.0
    h = lam * 10 ** -torch.linspace(0, 4, d, dtype=torch.float64)
    eps, gamma = 0.05 / (n_beta * lam), 1e-2 * n_beta * lam
    spectrum = hessian_spectrum(_Quadratic(d), _RotatedQuadraticBatch(h), n_probes=4,
                                n_steps=40)
    assert float(spectrum[1].sum()) == pytest.approx(d)
    assert float(spectrum[0].max()) == pytest.approx(lam, rel=1e-6)
    for draws, burnin in ((200, 100), (1600, 800), (8000, 4000)):
        want, stationary = _expected_llc(h, n_beta, eps, gamma, draws, burnin)
        got, got_stationary = predicted_llc(*spectrum, n_beta, eps, gamma, draws, burnin)
        assert got_stationary == pytest.approx(stationary, rel=0.1)  # 4 probes: a few %
        exact = 1 - want / stationary
        assert abs((1 - got / got_stationary) - exact) <= 0.1 * exact + 0.005, draws
    n_draws, n_burnin, short = spectral_length(spectrum, n_beta, eps, gamma, 200, 100, 0.05,
                                               20_000)
    at, stationary = _expected_llc(h, n_beta, eps, gamma, n_draws, n_burnin)
    half, _ = _expected_llc(h, n_beta, eps, gamma, n_draws // 2, n_burnin // 2)
    assert 1 - at / stationary <= 0.06 and 1 - half / stationary > 0.05  # the shortest
    assert short == pytest.approx(1 - at / stationary, abs=0.01)
    worst = CalibrationSettings(relaxation_burnin=2, relaxation_kept=2).chain_length(
        0.05, 1e-2, LLCSettings())
    assert n_draws <= worst[0] / 2  # 3,200 against 8,000
    # half the directions exactly flat, the rest stiff: the given length is already enough
    flat = torch.cat([torch.zeros(d // 2, dtype=torch.float64), h[: d // 20].repeat(10)])
    spectrum = hessian_spectrum(_Quadratic(d), _RotatedQuadraticBatch(flat), n_steps=40)
    assert spectral_length(spectrum, n_beta, eps, gamma, 1000, 500, 0.05, 20_000)[:2] \
        == (1000, 500)
