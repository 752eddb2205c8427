"""Collapse floors, their spread across scales, and the top-down test, on planted data."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from emergence_core.analysis import AnalysisSettings, SyntheticConfig, analyze, generate

SCALES = (("s0", 2), ("s1", 4), ("s2", 6))


@pytest.fixture(scope="module")
def result():
    cfg = SyntheticConfig(tasks=("COPY", "ADD"), scales=SCALES, seeds=(0, 1),
                          bottom_up_tasks=("ADD",), task_floors=(("COPY", 5.0), ("ADD", 8.0)),
                          floor_spread=0.3, expensive=(), per_layer=("rankme",), n_probes=160)
    df, truth = generate(cfg)
    return analyze(df), truth


def test_floors_are_the_planted_final_layer_floors(result) -> None:
    a, truth = result
    got = a.floors.join(truth.floors, on="trial")
    assert got.height == truth.floors.height == 12
    # the minimum of a smoothed noisy plateau sits a little below it, never above
    rel = (got["floor"] - got["floor_right"]) / got["floor_right"]
    assert rel.max() <= 0.0 and rel.min() > -0.03


def test_floor_spread_reports_the_planted_cv_and_ratio(result) -> None:
    a, _ = result
    delta = np.linspace(-0.3, 0.3, 3)
    for task in ("COPY", "ADD"):
        row = a.floor_spread.filter(pl.col("task") == task).row(0, named=True)
        assert row["n_scales"] == 3
        assert row["cv"] == pytest.approx(delta.std() / 1.0, abs=0.01)  # std(1 + d) / mean
        assert row["max_min_ratio"] == pytest.approx(1.3 / 0.7, rel=0.02)


def test_topdown_counts_planted_directions(result) -> None:
    a, truth = result
    got = a.topdown.join(truth.topdown, on=["task", "scale"])
    assert got.height == 6
    assert (got["verdict"] == got["verdict_right"]).all()
    assert a.topdown.filter(pl.col("verdict") == "top-down").height == 3  # COPY at 3 scales
    copy_s2 = a.topdown.filter((pl.col("task") == "COPY") & (pl.col("scale") == "s2"))
    assert copy_s2["rho"][0] == pytest.approx(-1.0)
    assert copy_s2["layers"][0] == "1 2 3 4 5 6"  # layer 0 (constant at SEP) left out


def test_collapse_times_follow_the_planted_layer_order(result) -> None:
    a, truth = result
    pooled = a.collapse.filter(pl.col("level").is_null() & (pl.col("layer") > 0))
    got = pooled.join(truth.collapse, on=["trial", "layer"]).sort("trial", "layer")
    for _, g in got.group_by("trial"):
        order = np.argsort(g["collapse_step"].to_numpy(), kind="stable")
        assert (order == np.argsort(g["collapse_index"].to_numpy(), kind="stable")).all()
    assert a.collapse.filter(pl.col("layer") == 0)["degenerate"].all()


def test_topdown_thresholds_and_undetermined() -> None:
    cfg = SyntheticConfig(tasks=("COPY",), scales=(("s0", 2),), seeds=(0,), layer_gap=0,
                          expensive=(), per_layer=("rankme",), n_probes=140)
    a = analyze(generate(cfg)[0])
    assert a.topdown["verdict"].to_list() == ["undetermined"]  # every layer at once: tied
    strict = analyze(generate(SyntheticConfig(expensive=(), per_layer=("rankme",)))[0],
                     AnalysisSettings(topdown_min_layers=3))
    assert set(strict.topdown.filter(pl.col("scale") == "s0")["verdict"]) == {"undetermined"}
    assert set(strict.topdown.filter(pl.col("scale") == "s1")["verdict"]) == {"top-down"}
