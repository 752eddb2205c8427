"""Onsets, leads and classes: planted exactly, boundaries of the synchronous band."""

from __future__ import annotations

import polars as pl
import pytest

from emergence_core.analysis import AnalysisSettings, SyntheticConfig, analyze, generate
from emergence_core.metrics import Measure


@pytest.fixture(scope="module")
def planted():
    cfg = SyntheticConfig(tasks=("COPY", "ADD"), scales=(("s0", 2), ("s1", 4)), seeds=(0, 1))
    df, truth = generate(cfg)
    return analyze(df), truth


def test_every_planted_onset_lead_and_class_is_recovered(planted) -> None:
    a, truth = planted
    got = (a.leads.filter(pl.col("event") == "accuracy")
           .join(truth.onsets, on=["trial", "level", "measure"], how="full", nulls_equal=True))
    assert got.height == truth.onsets.height == 24 * 8
    assert got.filter(pl.col("onset_step").ne_missing(pl.col("onset_step_right"))).height == 0
    assert got.filter(pl.col("lead").ne_missing(pl.col("lead_right"))).height == 0
    assert got.filter(pl.col("class").ne_missing(pl.col("class_right"))).height == 0
    assert set(got["class"]) == {"precursor", "synchronous", "lagging"}


def test_headline_series_are_the_final_layer_and_the_events_level(planted) -> None:
    a, _ = planted
    rank = a.leads.filter((pl.col("measure") == Measure.RANKME) & (pl.col("event") == "accuracy"))
    assert (rank["layer"] == rank["scale"].replace_strict({"s0": 2, "s1": 4})).all()
    assert (rank["series_level"] == rank["level"]).all()
    pooled = a.leads.filter(pl.col("measure") == Measure.LLC)
    assert pooled["series_level"].null_count() == pooled.height and pooled["layer"].is_null().all()


def test_dense_cross_correlation_lag_equals_the_planted_lead(planted) -> None:
    a, _ = planted
    acc = a.leads.filter(pl.col("event") == "accuracy")
    assert set(acc.filter(pl.col("measure") == Measure.RANKME)["xcorr_lag"]) == {6}
    assert set(acc.filter(pl.col("measure") == Measure.LINEAR_PROBE)["xcorr_lag"]) == {0}


@pytest.mark.parametrize(("lead", "expected"), [(2, "precursor"), (1, "synchronous"),
                                                (0, "synchronous"), (-1, "synchronous"),
                                                (-2, "lagging")])
def test_one_probe_interval_is_the_edge_of_the_synchronous_band(lead: int, expected: str) -> None:
    cfg = SyntheticConfig(tasks=("COPY",), scales=(("s0", 2),), seeds=(0,), expensive=(),
                          per_layer=(Measure.RANKME,), leads=((Measure.RANKME, lead),),
                          steps=tuple(range(0, 20_000, 100)))  # spacing 100 everywhere
    a = analyze(generate(cfg)[0], AnalysisSettings(event_measures=("accuracy",)))
    assert set(a.leads["lead"]) == {100 * lead}
    assert set(a.leads["tolerance"]) == {100.0}
    assert set(a.leads["class"]) == {expected}


def test_a_sparse_measure_is_judged_on_its_own_grid_unless_told_otherwise() -> None:
    cfg = SyntheticConfig(tasks=("COPY",), scales=(("s0", 2),), seeds=(0,), per_layer=(),
                          expensive=(Measure.LLC,), leads=((Measure.LLC, 3),),
                          steps=tuple(range(0, 20_000, 100)), expensive_every=4)
    df, _truth = generate(cfg)
    wide = analyze(df, AnalysisSettings(event_measures=("accuracy",)))
    narrow = analyze(df, AnalysisSettings(event_measures=("accuracy",),
                                          measure_grid_tolerance=False))
    # events at probes 59, 89, 119; changes planted at the last checkpoint (every 4th probe)
    # at or before 56, 86, 116: 56, 84, 116
    assert wide.leads.sort("level")["lead"].to_list() == [300, 500, 300]
    assert set(wide.leads["tolerance"]) == {400.0}  # checkpoints every 4th probe
    assert wide.leads.sort("level")["class"].to_list() == ["synchronous", "precursor",
                                                            "synchronous"]
    assert set(narrow.leads["tolerance"]) == {100.0}
    assert set(narrow.leads["class"]) == {"precursor"}


def test_a_flat_measure_has_no_onset_and_counts_in_the_denominator() -> None:
    cfg = SyntheticConfig(tasks=("COPY",), scales=(("s0", 2),), seeds=(0, 1), per_layer=(),
                          expensive=(Measure.FISHER_ERANK,), noise=0.0)
    df, _ = generate(cfg)
    flat = df.with_columns(pl.when(pl.col("measure") == Measure.FISHER_ERANK).then(7.0)
                           .otherwise(pl.col("value")).alias("value"))
    a = analyze(flat, AnalysisSettings(event_measures=("accuracy",)))
    assert set(a.leads["class"]) == {"no_onset"}
    r = a.rates.filter(pl.col("split_kind") == "all").row(0, named=True)
    assert (r["n"], r["precursor_k"], r["no_onset_k"]) == (6, 0, 6)
