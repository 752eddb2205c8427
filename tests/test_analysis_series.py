"""Per-series math: smoothing, change points (against ruptures), floors, spacing, lags."""

from __future__ import annotations

import numpy as np
import pytest
import ruptures as rpt

from emergence_core.analysis.series import (
    binseg,
    changepoints,
    collapse_floor,
    local_spacing,
    noise_scale,
    smooth,
    xcorr_lag,
)


def test_smooth_is_a_centred_median_that_keeps_steps_in_place() -> None:
    x = np.r_[np.zeros(10), np.ones(10)]
    spiky = x.copy()
    spiky[4] = 50.0  # a single spike disappears
    np.testing.assert_array_equal(smooth(spiky, 5), x)
    np.testing.assert_array_equal(smooth(x, 5), x)  # the step stays at index 10
    assert smooth(np.array([3.0, 1.0]), 5).tolist() == [3.0, 1.0]  # window shrinks to 1
    np.testing.assert_allclose(smooth(np.array([1.0, 5.0, 2.0]), 5), [1.0, 2.0, 2.0])


def test_noise_scale_recovers_sigma_and_ignores_a_step() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.3, 4000) + np.r_[np.zeros(2000), 100 * np.ones(2000)]
    assert noise_scale(x) == pytest.approx(0.3, rel=0.05)


@pytest.mark.parametrize("seed", range(6))
def test_binseg_returns_what_ruptures_binseg_returns(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = rng.integers(1, 5)
    levels = rng.normal(0, 3, k + 1)
    bounds = np.sort(rng.choice(np.arange(10, 190), k, replace=False))
    y = np.repeat(levels, np.diff(np.r_[0, bounds, 200])) + rng.normal(0, 1, 200)
    pen = 2 * np.log(200)
    expected = rpt.Binseg(model="l2", min_size=3, jump=1).fit(y).predict(pen=pen)[:-1]
    assert binseg(y, pen, min_size=3).tolist() == expected


def test_changepoints_find_planted_steps_exactly_and_nothing_in_noise() -> None:
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(60), 5 * np.ones(50), 2 * np.ones(70)] + rng.normal(0, 0.2, 180)
    assert changepoints(y).tolist() == [60, 110]
    assert changepoints(rng.normal(0, 1, 300)).size == 0
    assert changepoints(np.full(50, 3.0)).size == 0  # constant: none, no division by zero
    assert changepoints(np.r_[np.zeros(30), np.ones(30)], max_changepoints=0).size == 0


def test_collapse_floor_on_a_planted_collapse_and_recovery() -> None:
    steps = np.arange(0, 2000, 10)  # 200 probes
    i = np.arange(200)
    v = np.where(i < 20, 50 - 2.25 * i, 5.0)  # 50 -> 5 at probe 20
    v = np.where(i >= 80, 40.0, v)  # recovers at probe 80
    v = np.where(i >= 150, 1.0, v)  # a later, deeper collapse that is not "the" floor
    f = collapse_floor(steps, v, early_fraction=0.9)
    assert f.floor == pytest.approx(5.0)
    assert f.recovery_step == 800
    assert f.floor_step == 200  # the first probe at the floor
    assert f.collapse_step == 190  # within 5% of the drop: 50 - 2.25 * 19 = 7.25 <= 7.25
    assert f.depth == pytest.approx(0.9)
    assert not f.degenerate
    assert collapse_floor(steps, v, early_fraction=0.9, recovery_fraction=1.0).floor == 1.0


def test_collapse_floor_without_recovery_stops_at_the_early_part() -> None:
    steps = np.arange(100)
    v = 100.0 - steps  # falls all run long
    f = collapse_floor(steps, v, early_fraction=0.5)
    assert f.floor_step == 49 and f.recovery_step is None
    flat = collapse_floor(steps, np.zeros(100))
    assert flat.degenerate and flat.floor == 0.0 and np.isnan(flat.depth)


def test_local_spacing_is_the_central_difference_at_the_nearest_probe() -> None:
    t = np.array([0, 1, 2, 4, 8, 16, 116, 216])
    assert local_spacing(t, 8) == 6.0  # (16 - 4) / 2
    assert local_spacing(t, 9) == 6.0  # nearest probe 8
    assert local_spacing(t, 0) == 1.0  # one-sided at the start
    assert local_spacing(t, 300) == 100.0  # one-sided at the end
    assert np.isnan(local_spacing(np.array([5]), 5))


@pytest.mark.parametrize("lead", [-7, -3, 0, 4, 8])
def test_xcorr_lag_recovers_a_planted_lead(lead: int) -> None:
    steps = np.arange(0, 2000, 10)
    i = np.arange(200)
    acc = (i >= 100).astype(float)
    measure = (i >= 100 - lead).astype(float) * -3.0  # falls while accuracy rises
    k, k_steps, r = xcorr_lag(steps, acc, steps, measure, 1000, max_lag=10, window=40)
    assert k == lead and k_steps == 10 * lead and r < 0
    assert xcorr_lag(steps, acc, steps, np.ones(200), 1000) is None  # flat: no lag
