"""Collapse floors, their spread across scales, and the top-down test, on planted data."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from emergence_core.analysis import AnalysisSettings, analyze
from emergence_core.testing import SyntheticConfig, generate

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
    assert truth.floors.height == 12
    assert got.height == 36 and set(got["level"]) == {1, 2, 3}  # per level: the headline
    # the minimum of a smoothed noisy plateau sits a little below it, never above
    rel = (got["floor"] - got["floor_right"]) / got["floor_right"]
    assert rel.max() <= 0.0 and rel.min() > -0.03


def test_floor_spread_reports_the_planted_cv_and_ratio(result) -> None:
    a, _ = result
    delta = np.linspace(-0.3, 0.3, 3)
    assert a.floor_spread.height == 6  # per task level
    for task in ("COPY", "ADD"):
        row = a.floor_spread.filter(pl.col("task") == task).row(0, named=True)
        assert row["n_scales"] == 3
        assert row["cv"] == pytest.approx(delta.std() / 1.0, abs=0.01)  # std(1 + d) / mean
        assert row["max_min_ratio"] == pytest.approx(1.3 / 0.7, rel=0.02)
        # two seeds: a seed bootstrap around the planted CV (seeds differ by noise only)
        assert row["ci_method"] == "seed bootstrap"
        assert row["cv_lo"] <= row["cv"] + 0.01 and row["cv_hi"] >= row["cv"] - 0.01


def test_topdown_counts_planted_directions(result) -> None:
    a, truth = result
    got = a.topdown.join(truth.topdown, on=["task", "scale"])
    assert got.height == 6
    assert (got["verdict"] == got["verdict_right"]).all()
    assert a.topdown.filter(pl.col("verdict") == "top-down").height == 3  # COPY at 3 scales
    copy_s2 = a.topdown.filter((pl.col("task") == "COPY") & (pl.col("scale") == "s2"))
    assert copy_s2["rho"][0] == pytest.approx(-1.0)
    assert copy_s2["layers"][0] == "1 2 3 4 5 6"  # layer 0 (constant at SEP) left out
    assert (copy_s2["n_layers"][0], copy_s2["n_constant"][0]) == (6, 1)
    share = a.topdown_summary.row(0, named=True)
    assert (share["k"], share["n"], share["ci_method"]) == (3, 6, "seed bootstrap")
    assert share["lo"] == share["hi"] == 0.5  # every resample of seeds keeps the verdicts


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


def test_the_variants_table_shows_where_centring_and_pooling_change_the_floor() -> None:
    """Planted: uncentred = 0.2 x centred + 1, pooled = 0.3 x per level (the MOD s0 gaps)."""
    cfg = SyntheticConfig(tasks=("COPY",), scales=(("s0", 2), ("s1", 4)), seeds=(0,),
                          expensive=(), per_layer=("rankme", "rankme_uncentred"),
                          uncentred_scale=0.2, pooled_scale=0.3, task_floors=(("COPY", 10.0),),
                          n_probes=160)
    a = analyze(generate(cfg)[0])
    v = {r["variant"]: r for r in a.variants.iter_rows(named=True)}
    assert set(v) == {"rankme / per level", "rankme / pooled", "rankme_uncentred / per level",
                      "rankme_uncentred / pooled"}
    head = v["rankme / per level"]
    assert head["headline"] and head["changes"] == "headline" and head["floor_ratio"] == 1.0
    assert v["rankme / pooled"]["floor_ratio"] == pytest.approx(0.3, rel=0.05)
    assert "floors x0.3" in v["rankme / pooled"]["changes"]
    # 0.2 x floor + 1 over the same floor
    floors = a.floor_summary.group_by("scale").agg(pl.col("floor").median())["floor"]
    want = float(((0.2 * floors + 1) / floors).median())
    assert v["rankme_uncentred / per level"]["floor_ratio"] == pytest.approx(want, rel=0.05)
    assert head["topdown_k"] == 2 and head["topdown_ci"] == "wilson"  # one seed
    assert head["layers_median"] == 3.0 and head["n_constant"] == 2
    assert head["precursor_n"] == 6 and head["precursor_ci"] == "wilson"
    assert v["rankme / pooled"]["precursor_n"] is None
