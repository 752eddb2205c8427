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
    # the planted direction where three or more layers collapse; two blocks cannot say
    want = [v if n >= 3 else "undetermined" for v, n in got.select("verdict_right",
                                                                      "n_blocks").rows()]
    assert got["verdict"].to_list() == want
    assert a.topdown.filter(pl.col("verdict") == "top-down").height == 2  # COPY at s1, s2
    copy_s2 = a.topdown.filter((pl.col("task") == "COPY") & (pl.col("scale") == "s2"))
    assert copy_s2["rho"][0] == pytest.approx(-1.0)
    assert copy_s2["layers"][0] == "1 2 3 4 5 6"  # layer 0 (constant at SEP) left out
    assert (copy_s2["n_layers"][0], copy_s2["n_constant"][0]) == (6, 1)
    s0 = a.topdown.filter(pl.col("scale") == "s0")
    assert s0["n_layers"].to_list() == [2, 2] and s0["rho"].is_nan().all()
    share = a.topdown_summary.row(0, named=True)
    assert (share["k"], share["n"], share["n_undetermined"]) == (2, 4, 2)
    # two seeds (< bootstrap_min_seeds): Wilson on 2/4
    from emergence_core.analysis.collapse import topdown_share
    from emergence_core.analysis.rates import wilson
    assert share["ci_method"] == "wilson"
    assert (share["lo"], share["hi"]) == pytest.approx(wilson(2, 4))
    # resampled, every draw of seeds keeps the verdicts (2/4): the 50-50% interval that says
    # nothing gives way to Wilson, and the method says why
    boot = topdown_share(a.collapse, a.topdown, AnalysisSettings(bootstrap_min_seeds=2,
                                                                 n_bootstrap=50))
    assert boot["ci_method"] == "wilson (seeds agree)"
    assert (boot["lo"], boot["hi"]) == pytest.approx(wilson(2, 4))


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
                     AnalysisSettings(topdown_min_layers=5))
    assert set(strict.topdown["verdict"]) == {"undetermined"}  # s1 has four layers
    with pytest.raises(ValueError, match="topdown_min_layers must be >= 3"):
        AnalysisSettings(topdown_min_layers=2)


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
    # s1 top-down; s0's two layers give no verdict
    assert (head["topdown_k"], head["topdown_n"], head["topdown_ci"]) == (1, 1, "wilson")
    assert head["layers_median"] == 3.0 and head["n_constant"] == 2
    assert head["precursor_n"] == 6 and head["precursor_ci"] == "wilson"
    assert v["rankme / pooled"]["precursor_n"] is None


# Planted layers for the voting rule: one trial, one level, rankme at SEP per layer.
_STEPS = np.arange(0, 1000, 10)


def _falls_at(step: int, top: float = 20.0, floor: float = 8.0) -> np.ndarray:
    """A collapse from ``top`` to ``floor`` (depth 0.6) that ends at ``step``."""
    return top - (top - floor) * np.clip((_STEPS - (step - 50)) / 50.0, 0.0, 1.0)


def _collapse(layers: dict[int, np.ndarray], settings: AnalysisSettings) -> pl.DataFrame:
    from emergence_core.analysis.collapse import collapse_table

    rows = pl.DataFrame([
        {"trial": "T-s-0", "task": "T", "scale": "s", "seed": 0, "source": "trial",
         "measure": "rankme", "level": 1, "layer": layer, "step": int(t), "value": float(v)}
        for layer, values in layers.items() for t, v in zip(_STEPS, values, strict=True)],
        schema_overrides={"level": pl.Int8, "layer": pl.Int16})
    return collapse_table(rows, settings)


def test_a_layer_that_never_collapses_does_not_vote() -> None:
    """A flat layer's "collapse time" is wherever its noise is lowest: here a dip at step 0,
    which under the old rule (every non-constant layer votes) turns a planted top-down
    order into "mixed"."""
    from emergence_core.analysis.collapse import topdown

    flat = np.full(_STEPS.size, 10.0)
    flat[:3] = 9.9  # depth 0 (its floor is its first value)
    layers = {0: np.zeros(_STEPS.size), 1: flat, 2: _falls_at(400), 3: _falls_at(300),
              4: _falls_at(200)}
    old = AnalysisSettings(topdown_min_depth=0.0)
    row = topdown(_collapse(layers, old), old).row(0, named=True)
    assert (row["verdict"], row["layers"], row["collapse_steps"]) == ("mixed", "1 2 3 4",
                                                                      "0 400 300 200")
    new = AnalysisSettings()
    row = topdown(_collapse(layers, new), new).row(0, named=True)
    assert row["verdict"] == "top-down" and row["rho"] == pytest.approx(-1.0)
    assert (row["layers"], row["n_layers"], row["n_shallow"], row["n_constant"]) == (
        "2 3 4", 3, 1, 1)
    assert row["depths"] == "0.600 0.600 0.600"


def test_the_embedding_never_votes_unless_asked() -> None:
    """Layer 0 varies (read away from SEP) and collapses deep and first: it is left out and
    counted, so a planted top-down order over the blocks stays top-down."""
    from emergence_core.analysis.collapse import topdown

    layers = {0: _falls_at(100), 1: _falls_at(400), 2: _falls_at(300), 3: _falls_at(200)}
    row = topdown(_collapse(layers, AnalysisSettings()), AnalysisSettings()).row(0, named=True)
    assert (row["verdict"], row["layers"], row["n_embedding"]) == ("top-down", "1 2 3", 1)
    asked = AnalysisSettings(topdown_embedding=True)
    row = topdown(_collapse(layers, asked), asked).row(0, named=True)
    assert (row["verdict"], row["layers"], row["n_embedding"]) == ("mixed", "0 1 2 3", 0)


def test_two_collapsing_layers_give_no_verdict() -> None:
    """Two layers always give rho = +-1 with no p-value: a two-block model is undetermined,
    and the share counts it apart from the verdicts."""
    from emergence_core.analysis.collapse import topdown, topdown_share

    layers = {0: np.zeros(_STEPS.size), 1: _falls_at(400), 2: _falls_at(200)}
    s = AnalysisSettings()
    c = _collapse(layers, s)
    table = topdown(c, s)
    row = table.row(0, named=True)
    assert (row["verdict"], row["n_layers"]) == ("undetermined", 2) and np.isnan(row["rho"])
    share = topdown_share(c, table, s)
    assert (share["k"], share["n"], share["n_undetermined"]) == (0, 0, 1)
    assert share["lo"] is None and share["ci_method"] == "none (no verdict)"
