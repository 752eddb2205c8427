"""The LLC's localised tier sets its grid by the curvature where its chains go, not at w*.

At a checkpoint trained to near-zero cross-entropy the Hessian at w* vanishes with the
softmax's saturation and grows as the loss rises, so a grid relative to the curvature at w*
takes steps the chains cannot hold once they rise (docs/methods.md §3.4). Here on planted
losses whose curvature along a ray is known in closed form: a quadratic (the same everywhere)
and a quartic (zero at w*), and a flat-bottomed well whose localised chains are stable only
at steps set by the basin's curvature.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from emergence_core.measures.llc import LLCSettings, curvature_at_rise
from emergence_core.measures.llc_calibration import CalibrationSettings, calibrate_llc


class _Vector(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d, dtype=torch.float64))


class _Well:
    """L(w) = floor + a/2 |w|^2 + b sum w_i^4 on notional samples (the LossBatch protocol)."""

    def __init__(self, a: float, b: float, floor: float = 0.0) -> None:
        self.a, self.b, self.floor = a, b, floor
        self.n_samples, self.n_population = 8, None

    def loss(self, model: nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
        w = model.w
        return self.floor + self.a / 2 * (w**2).sum() + self.b * (w**4).sum()


def _direction(d: int, seed: int) -> torch.Tensor:
    """The unit direction curvature_at_rise draws for a single (d,) parameter."""
    u = torch.randn((d,), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return u / u.norm()


def test_on_a_quadratic_the_curvature_is_the_same_along_the_ray():
    d, a = 30, 2.0
    model, well = _Vector(d), _Well(a, 0.0, floor=1.0)
    lam, r = curvature_at_rise(model, well, rise=0.3, seed=4)
    assert lam == pytest.approx(a, rel=1e-6)
    assert a / 2 * r**2 == pytest.approx(0.3, rel=1e-6)  # |u| = 1
    assert torch.equal(model.w.detach(), torch.zeros(d, dtype=torch.float64))  # left at w*


def test_on_a_quartic_the_curvature_is_its_closed_form_at_the_rise():
    """K(w) = sum w_i^4: the Hessian is 0 at w* and diag(12 w_i^2) at w = r u, where
    r^4 sum u_i^4 = rise; so lambda_max = 12 r^2 max u_i^2."""
    d, rise, seed = 30, 0.5, 7
    model, well = _Vector(d), _Well(0.0, 1.0)
    lam, r = curvature_at_rise(model, well, rise=rise, seed=seed)
    u = _direction(d, seed)
    r_true = (rise / float((u**4).sum())) ** 0.25
    assert r == pytest.approx(r_true, rel=1e-6)
    assert lam == pytest.approx(12 * r_true**2 * float((u**2).max()), rel=1e-2)
    assert torch.equal(model.w.detach(), torch.zeros(d, dtype=torch.float64))


def test_a_rise_the_loss_never_reaches_gives_nan():
    lam, r = curvature_at_rise(_Vector(5), _Well(0.0, 0.0, floor=1.0), rise=0.1)
    assert math.isnan(lam) and math.isnan(r)


def test_the_localised_tier_steps_by_the_basins_curvature_not_w_stars():
    """A flat-bottomed well (a = 1e-3 at w*, a quartic wall). Relative to lambda_max at w*
    every step of the localised tier is unstable where the chains go (eps = c / (n_beta a) is
    0.006 to 0.2 against a wall whose curvature n_beta 12 w^2 is hundreds): every chain turns
    non-finite. Relative to the curvature at the basin's edge every point runs finite and in
    the basin, its gamma stated as k n_beta lambda_basin and its eps as c / (n_beta
    lambda_basin), while the strict tier keeps lambda_max at w*. (Whether a point then passes
    is the checks' business; here split-R-hat judges 2 chains whose kept window is two
    relaxation times, and the study's pilots show real checkpoints choosing.)"""
    d, n_beta = 50, 1000.0
    model, well = _Vector(d), _Well(1e-3, 1.0)
    base = LLCSettings(n_chains=2, n_beta=n_beta, minibatch_size=None)
    cal = calibrate_llc(model, well, base, untrained_loss=1.0, lambda_max=1e-3)
    assert cal.lambda_basin > 1e3 * cal.lambda_max
    local = [p for p in cal.points if p.tier == "localised"]
    assert len(local) == 6  # the whole grid ran: nothing passed in either tier
    for p in local:
        assert math.isfinite(p.value) and p.in_basin, p
        assert p.gamma == pytest.approx(0.1 * n_beta * cal.lambda_basin)
        assert p.eps == pytest.approx(p.step / (n_beta * cal.lambda_basin))
    strict = [p for p in cal.points if p.tier == "gamma-independent"]
    assert strict and all(p.gamma == pytest.approx(p.localisation * n_beta * 1e-3)
                          for p in strict)
    record = cal.to_json()
    assert record["localised_stiffness"] == pytest.approx(n_beta * cal.lambda_basin)
    assert record["n_beta_lambda_max"] == pytest.approx(n_beta * 1e-3)
    at_w_star = calibrate_llc(model, well, base, untrained_loss=1.0, lambda_max=1e-3,
                              calibration=CalibrationSettings(stiffness_rise=None))
    assert math.isnan(at_w_star.lambda_basin) and at_w_star.chosen is None
    local = [p for p in at_w_star.points if p.tier == "localised"]
    assert len(local) == 6 and not any(math.isfinite(p.value) for p in local)


def test_stiffness_rise_is_a_fraction_of_the_basin_bound():
    with pytest.raises(ValueError, match="stiffness_rise"):
        CalibrationSettings(stiffness_rise=1.5)
    with pytest.raises(ValueError, match="stiffness_rise"):
        CalibrationSettings(stiffness_rise=0.0)
