"""Prediction limits: Spearman, within-class concordance, ordering reversals."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from emergence_core.analysis import AnalysisSettings, analyze, prediction_limits
from emergence_core.testing import SyntheticConfig, generate


def _signals(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"unit": pl.String, "scale": pl.String, "seed": pl.Int64,
                                      "difficulty": pl.String, "event_step": pl.Int64,
                                      "onset": pl.Float64, "floor_depth": pl.Float64},
                        orient="row")


def _get(p: pl.DataFrame, signal: str, statistic: str, scope: str) -> dict:
    return p.filter((pl.col("signal") == signal) & (pl.col("statistic") == statistic)
                    & (pl.col("scope") == scope)).row(0, named=True)


def test_spearman_has_its_textbook_value() -> None:
    e = np.arange(1, 11)
    s = np.array([2, 1, 4, 3, 6, 5, 8, 7, 10, 9], dtype=float)  # sum d^2 = 10
    rows = [(f"U{i}", "s0", 0, "easy", int(ei) * 100, si, -si) for i, (ei, si) in
            enumerate(zip(e, s, strict=True))]
    p = prediction_limits(_signals(rows), ["s0"])
    assert _get(p, "onset", "spearman", "all")["value"] == pytest.approx(1 - 6 * 10 / 990)
    assert _get(p, "floor_depth", "spearman", "all")["value"] == pytest.approx(-(1 - 60 / 990))


def test_concordance_counts_pairs_within_class_scale_and_seed() -> None:
    rows = [("A", "s0", 0, "easy", 1, 1.0, 0.0), ("B", "s0", 0, "easy", 2, 3.0, 0.0),
            ("C", "s0", 0, "easy", 3, 2.0, 0.0), ("D", "s0", 0, "easy", 4, 2.0, 0.0),
            ("E", "s0", 0, "hard", 9, 0.0, 0.0), ("F", "s0", 1, "easy", 1, 5.0, 0.0)]
    c = _get(prediction_limits(_signals(rows), ["s0"]), "onset", "concordance", "all")
    # AB AC AD right, BC BD wrong, CD a signal tie (1/2); E and F have no partner
    assert (c["k"], c["n"]) == (3.5, 6)
    # two seeds, fewer than bootstrap_min_seeds: Wilson on k/n
    from emergence_core.analysis.rates import wilson
    assert c["ci_method"] == "wilson"
    assert (c["lo"], c["hi"]) == pytest.approx(wilson(3.5, 6))
    # allowed to resample two seeds: seed 1 has no pair, so every resample that has a value
    # repeats seed 0's 3.5/6; that degenerate interval gives way to Wilson, said so
    b = _get(prediction_limits(_signals(rows), ["s0"], AnalysisSettings(bootstrap_min_seeds=2)),
             "onset", "concordance", "all")
    assert b["ci_method"] == "wilson (seeds agree)"
    assert (b["lo"], b["hi"]) == pytest.approx(wilson(3.5, 6))


def test_reversals_are_the_pairs_that_flip_between_scales() -> None:
    rows = [("A", "s0", 0, "easy", 1, 1.0, 1.0), ("B", "s0", 0, "easy", 2, 2.0, 2.0),
            ("C", "s0", 0, "easy", 3, 3.0, 3.0),
            ("A", "s1", 0, "easy", 2, 2.0, 1.0), ("B", "s1", 0, "easy", 1, 1.0, 2.0),
            ("C", "s1", 0, "easy", 3, 3.0, 3.0)]
    p = prediction_limits(_signals(rows), ["s0", "s1"])
    onset = _get(p, "onset", "reversal", "s0 vs s1")
    depth = _get(p, "floor_depth", "reversal", "all")
    assert (onset["k"], onset["n"]) == (1.0, 1)  # A-B flips, and the onset flips with it
    assert (depth["k"], depth["n"]) == (0.0, 1)  # the floor depth does not
    from emergence_core.analysis.rates import wilson
    assert onset["ci_method"] == "wilson"  # one seed: nothing to resample
    assert (onset["lo"], onset["hi"]) == pytest.approx(wilson(1, 1))


def test_planted_reversal_is_found_end_to_end() -> None:
    cfg = SyntheticConfig(tasks=("COPY", "ADD"), levels=(1,), scales=(("s0", 2), ("s1", 2)),
                          seeds=(0,), task_gap=4, task_scale_slope=(("COPY", 8),),
                          expensive=(), per_layer=("rankme",))
    df, truth = generate(cfg)
    a = analyze(df)
    planted = truth.onsets.filter(pl.col("measure") == "rankme")
    got = a.signals.join(planted, on=["trial", "level"])
    assert got.height == 4 and (got["onset"] == got["onset_step"]).all()  # not the collapse
    r = _get(a.prediction, "onset", "reversal", "all")
    assert (r["k"], r["n"]) == (1.0, 1)  # COPY before ADD at s0, after at s1; onsets follow
    assert _get(a.prediction, "onset", "spearman", "all")["value"] == pytest.approx(1.0)
