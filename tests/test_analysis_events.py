"""Emergence events over the table: the polars rule, log-prob normalisation, difficulty."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from emergence_core.analysis import (
    AnalysisSettings,
    as_lazy,
    behaviour_rows,
    difficulty_classes,
    emergence_events,
    emergence_step,
    event_details,
    events_to_arrow,
)
from emergence_core.metrics import EVENTS_SCHEMA
from emergence_core.testing import SyntheticConfig, generate


def _rows(series: dict[tuple[str, int | None], np.ndarray], measure: str = "accuracy",
          steps: np.ndarray | None = None) -> pl.DataFrame:
    frames = []
    for (trial, level), values in series.items():
        s = np.arange(values.size) * 10 if steps is None else steps
        frames.append(pl.DataFrame({
            "sweep": "t", "trial": trial, "task": trial.split("-")[0],
            "level": pl.Series([level] * s.size, dtype=pl.Int8), "scale": "s0", "seed": 0,
            "step": s, "measure": measure, "layer": pl.Series([None] * s.size, dtype=pl.Int16),
            "value": values, "source": "trial"}))
    return pl.concat(frames)


@pytest.mark.parametrize("persistence", [0, 1, 5])
def test_the_vectorised_rule_agrees_with_emergence_step(persistence: int) -> None:
    rng = np.random.default_rng(persistence)
    series = {}
    for n in range(40):
        v = np.clip(np.cumsum(rng.normal(0.02, 0.15, 60)), 0, 1)
        v[rng.integers(0, 60, 3)] = np.nan  # a missing value breaks a run
        series[(f"T{n}-x", 1 + n % 3)] = v
    settings = AnalysisSettings(persistence=persistence, event_measures=("accuracy",))
    ev = emergence_events(behaviour_rows(as_lazy(_rows(series))), settings)
    got = {(t, lv): s for t, lv, s in ev.select("trial", "level", "step").rows()}
    steps = np.arange(60) * 10
    for key, v in series.items():
        assert got[key] == emergence_step(steps, v, 0.5, persistence), key


def test_events_table_has_exactly_the_events_schema_and_a_null_for_no_event() -> None:
    acc = {("A-1", 1): np.r_[np.zeros(10), np.ones(10)], ("B-1", 1): np.full(20, 0.2)}
    ev = emergence_events(behaviour_rows(as_lazy(_rows(acc))), AnalysisSettings())
    assert events_to_arrow(ev).schema.equals(EVENTS_SCHEMA, check_metadata=True)
    got = dict(ev.filter(pl.col("measure") == "accuracy").select("trial", "step").rows())
    assert got == {"A-1": 100, "B-1": None}


def test_normalised_logprob_is_one_minus_the_ratio_to_the_first_probe() -> None:
    lp = np.array([-10.0, -9.0, -6.0, -4.0, -1.0, -0.5, -0.5, -0.5, -0.5, -0.5, -0.5])
    rows = behaviour_rows(as_lazy(_rows({("A-1", 2): lp}, measure="logprob")))
    norm = rows.filter(pl.col("measure") == "logprob_norm").sort("step")["value"].to_numpy()
    np.testing.assert_allclose(norm, 1 - lp / -10.0)
    ev = emergence_events(rows, AnalysisSettings(event_measures=("logprob_norm",)))
    assert ev["step"].to_list() == [30]  # 1 - (-4 / -10) = 0.6 >= 0.5, and stays


def test_per_level_rows_win_over_pooled_rows() -> None:
    both = {("A-1", 1): np.r_[np.zeros(10), np.ones(10)],
            ("A-1", None): np.r_[np.zeros(5), np.ones(15)]}
    ev = emergence_events(behaviour_rows(as_lazy(_rows(both))), AnalysisSettings())
    assert ev.filter(pl.col("measure") == "accuracy")["level"].to_list() == [1]
    pooled_only = emergence_events(
        behaviour_rows(as_lazy(_rows({("A-1", None): np.r_[np.zeros(5), np.ones(15)]}))),
        AnalysisSettings())
    assert pooled_only.filter(pl.col("measure") == "accuracy").select(
        "level", "step").rows() == [(None, 50)]


def test_the_interval_is_the_central_spacing_at_the_event() -> None:
    steps = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024])
    acc = (steps >= 32).astype(float)
    det = event_details(behaviour_rows(as_lazy(_rows({("A-1", 1): acc}, steps=steps))),
                        AnalysisSettings(event_measures=("accuracy",)))
    assert det.select("step", "interval").rows() == [(32, 24.0)]  # (64 - 16) / 2


@pytest.fixture(scope="module")
def planted() -> tuple:
    cfg = SyntheticConfig(tasks=("COPY", "ADD", "MUL"), seeds=(0, 1, 2),
                          never=(("MUL", 3, "s1"),), expensive=())
    return cfg, *generate(cfg)


def test_planted_events_are_found_at_their_steps(planted) -> None:
    _, df, truth = planted
    ev = emergence_events(behaviour_rows(as_lazy(df)), AnalysisSettings())
    acc = ev.filter(pl.col("measure") == "accuracy").join(truth.events, on=["trial", "level"])
    assert acc.height == truth.events.height == 54
    assert acc.filter(pl.col("step").ne_missing(pl.col("step_right"))).height == 0
    assert acc["step"].null_count() == 3  # MUL level 3 at s1 never emerges, 3 seeds
    lp = ev.filter(pl.col("measure") == "logprob_norm").join(truth.events, on=["trial", "level"])
    assert lp.filter(pl.col("step").ne_missing(pl.col("logprob_step"))).height == 0


def test_difficulty_classes_follow_the_planted_median_and_the_override(planted) -> None:
    _cfg, df, _truth = planted
    ev = emergence_events(behaviour_rows(as_lazy(df)), AnalysisSettings())
    classes = difficulty_classes(ev, AnalysisSettings())
    # planted probe index = 60 + 4 task + 30 (level - 1) - 2 scale: per scale, units sort
    # by level first, so the hard ones (above the median of 9) are the 4 latest
    for scale in ("s0", "s1"):
        hard = classes.filter((pl.col("scale") == scale) & (pl.col("difficulty") == "hard"))
        assert sorted(hard["unit"].to_list()) == ["ADD:3", "COPY:3", "MUL:2", "MUL:3"]
    never = classes.filter((pl.col("unit") == "MUL:3") & (pl.col("scale") == "s1"))
    assert never["emergence_step"][0] == float("inf") and never["n_emerged"][0] == 0
    forced = difficulty_classes(ev, AnalysisSettings(hard=("COPY", "ADD:1")))
    hard = set(forced.filter(pl.col("difficulty") == "hard")["unit"].to_list())
    assert hard == {"COPY:1", "COPY:2", "COPY:3", "ADD:1"}


def _chance_rows(chances: dict[tuple[str, int | None], float]) -> pl.DataFrame:
    return pl.concat([_rows({k: np.array([c])}, measure="chance") for k, c in chances.items()])


def test_a_flat_series_at_chance_never_emerges_however_long_it_holds() -> None:
    """Issue 11: PAR's constant answer scores about 0.5 raw; corrected it is 0."""
    rng = np.random.default_rng(0)
    flat = {("PAR-1", 3): 0.511 + rng.normal(0, 0.01, 200), ("CMP-1", 1): np.full(200, 0.492)}
    df = pl.concat([_rows(flat), _chance_rows({("PAR-1", 3): 0.511, ("CMP-1", 1): 0.492})])
    lf = as_lazy(df)
    rows = behaviour_rows(lf)
    raw = emergence_events(rows, AnalysisSettings(event_measures=("accuracy",)))
    assert raw["step"].to_list() != [None, None]  # raw accuracy does cross 0.5: the trap
    from emergence_core.analysis import chance_table
    chances = chance_table(lf)
    ev = emergence_events(rows, AnalysisSettings(event_measures=("accuracy",)), chances)
    assert ev["step"].to_list() == [None, None]
    assert sorted(ev["chance"].to_list()) == [0.492, 0.511]


def test_chance_correction_moves_the_event_to_where_corrected_accuracy_crosses() -> None:
    acc = np.r_[np.full(10, 0.5), np.linspace(0.5, 1.0, 11), np.ones(10)]  # 0.05 per probe
    df = pl.concat([_rows({("PAR-1", 1): acc}), _chance_rows({("PAR-1", 1): 0.5})])
    lf = as_lazy(df)
    from emergence_core.analysis import chance_table
    ev = emergence_events(behaviour_rows(lf), AnalysisSettings(event_measures=("accuracy",)),
                          chance_table(lf))
    # (acc - 0.5) / 0.5 >= 0.5  <=>  acc >= 0.75: probe 10 + 5 = 15
    assert ev["step"].to_list() == [150]
    # chance 1: nothing to learn, never an event
    df1 = pl.concat([_rows({("K-1", 1): np.ones(20)}), _chance_rows({("K-1", 1): 1.0})])
    ev1 = emergence_events(behaviour_rows(as_lazy(df1)), AnalysisSettings(
        event_measures=("accuracy",)), chance_table(as_lazy(df1)))
    assert ev1["step"].to_list() == [None]


def test_logprob_norm_is_anchored_at_the_chance_logprob_when_logged() -> None:
    lp = np.array([-30.0, -20.0, -5.0, -3.0, -1.0, -0.5, -0.5, -0.5, -0.5, -0.5, -0.5])
    df = pl.concat([_rows({("A-1", 2): lp}, measure="logprob"),
                    _rows({("A-1", 2): np.array([-4.0])}, measure="logprob_chance")])
    rows = behaviour_rows(as_lazy(df))
    norm = rows.filter(pl.col("measure") == "logprob_norm").sort("step")["value"].to_numpy()
    np.testing.assert_allclose(norm, 1 - lp / -4.0)  # negative while worse than chance
    ev = emergence_events(rows, AnalysisSettings(event_measures=("logprob_norm",)))
    assert ev["step"].to_list() == [40]  # 1 - (-1 / -4) = 0.75: the first at or above 0.5
