"""Probe and learning-rate schedules."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from emergence_core.analysis import emergence_step
from emergence_core.schedule import lr_at, probe_schedule


@pytest.mark.parametrize("steps", [201, 500, 1000, 4000, 40000, 143000])
def test_probe_schedule_has_200_probes_denser_early(steps: int) -> None:
    p = probe_schedule(steps)
    assert p[0] == 0 and p[-1] == steps
    assert np.all(np.diff(p) > 0)
    assert len(p) >= 201
    gaps = np.diff(p)
    assert gaps[:20].mean() < gaps[-20:].mean() or steps < 400


def test_short_runs_probe_every_step() -> None:
    assert probe_schedule(50).tolist() == list(range(51))
    with pytest.raises(ValueError):
        probe_schedule(0)


def test_lr_warms_up_then_decays_to_the_floor() -> None:
    kw = {"lr": 1e-3, "steps": 1000, "warmup_steps": 100, "min_lr_ratio": 0.1}
    assert lr_at(0, **kw) == pytest.approx(1e-5)
    assert lr_at(99, **kw) == pytest.approx(1e-3)
    assert lr_at(550, **kw) == pytest.approx(0.55e-3)
    assert lr_at(1000, **kw) == pytest.approx(1e-4)
    lrs = [lr_at(s, **kw) for s in range(100, 1001)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_emergence_rule_needs_the_threshold_to_hold() -> None:
    steps = np.arange(0, 100, 10)
    acc = np.array([0, 0.2, 0.6, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    # 0.6 at step 20 falls back at 30; from step 40 it holds for 5 more probes
    assert emergence_step(steps, acc, 0.5, 5) == 40
    assert emergence_step(steps, acc, 0.5, 6) is None  # not enough later probes to confirm
    assert emergence_step(steps, acc, 0.99, 0) is None
    assert emergence_step(steps, np.where(acc > 0.5, np.nan, acc), 0.55, 0) is None
