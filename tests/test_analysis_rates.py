"""Precursor rates: counts, seed-clustered bootstrap intervals, and the hierarchy."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from emergence_core.analysis import AnalysisSettings, cluster_bootstrap, hierarchy, precursor_rates


def test_identical_seeds_give_a_degenerate_interval_at_the_truth() -> None:
    lo, hi = cluster_bootstrap(np.array([3, 3, 3]), np.array([4, 4, 4]))
    assert lo == hi == 0.75


def test_one_seed_has_no_interval() -> None:
    assert all(np.isnan(cluster_bootstrap(np.array([3]), np.array([4]))))


def _simulate(n_seeds: int, reps: int, p: float = 0.7, per_seed: int = 24) -> tuple:
    """Coverage of p and mean width, with seed-level heterogeneity (rate varies by seed)."""
    rng = np.random.default_rng(n_seeds)
    hits, widths = 0, []
    for r in range(reps):
        p_seed = np.clip(rng.normal(p, 0.08, n_seeds), 0, 1)
        k = rng.binomial(per_seed, p_seed)
        lo, hi = cluster_bootstrap(k, np.full(n_seeds, per_seed), n_resamples=1000, seed=r)
        hits += lo <= p <= hi
        widths.append(hi - lo)
    return hits / reps, float(np.mean(widths))


def test_bootstrap_intervals_cover_the_truth_and_shrink_with_seeds() -> None:
    cover3, width3 = _simulate(3, 150)
    cover10, width10 = _simulate(10, 150)
    cover40, width40 = _simulate(40, 150)
    # percentile intervals over few clusters undercover; with 10+ they are near nominal
    assert cover10 >= 0.85 and cover40 >= 0.88 and cover3 >= 0.6
    assert width3 > width10 > width40
    assert width40 < 0.6 * width10


def _leads(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"event": pl.String, "measure": pl.String,
                                      "seed": pl.Int64, "scale": pl.String,
                                      "difficulty": pl.String, "class": pl.String,
                                      "lead": pl.Int64, "lead_intervals": pl.Float64,
                                      "onset_step": pl.Int64, "xcorr_lag": pl.Int64},
                        orient="row")


def test_rates_count_each_class_per_split() -> None:
    rows = []
    for seed in (0, 1, 2):
        rows += [("accuracy", "rankme", seed, "s0", "easy", "precursor", 50, 5.0, 1, 3),
                 ("accuracy", "rankme", seed, "s1", "hard", "precursor", 40, 4.0, 1, 3),
                 ("accuracy", "rankme", seed, "s1", "hard", "lagging", -30, -3.0, 1, -2),
                 ("accuracy", "llc", seed, "s0", "easy", "synchronous", 0, 0.0, 1, 0),
                 ("accuracy", "llc", seed, "s1", "hard", "no_onset", None, None, None, None)]
    rates = precursor_rates(_leads(rows), AnalysisSettings(n_bootstrap=200))
    r = rates.filter((pl.col("measure") == "rankme") & (pl.col("split_kind") == "all")).row(
        0, named=True)
    assert (r["n"], r["n_seeds"], r["precursor_k"], r["lagging_k"]) == (9, 3, 6, 3)
    assert r["precursor_rate"] == pytest.approx(2 / 3)
    # three seeds (< bootstrap_min_seeds): Wilson on 6/9, never the bootstrap's 67-67%
    from emergence_core.analysis.rates import wilson

    assert r["ci_method"] == "wilson"
    assert (r["precursor_lo"], r["precursor_hi"]) == pytest.approx(wilson(6, 9))
    assert r["precursor_lo"] < 2 / 3 < r["precursor_hi"]
    # allowed to bootstrap three seeds, the seeds agree (2/3 in each), every resample is
    # 2/3: the degenerate interval is replaced by Wilson, and the row says so
    boot = precursor_rates(_leads(rows), AnalysisSettings(n_bootstrap=200,
                                                          bootstrap_min_seeds=2))
    b = boot.filter((pl.col("measure") == "rankme") & (pl.col("split_kind") == "all")).row(
        0, named=True)
    assert b["ci_method"] == "wilson (seeds agree)"
    assert (b["precursor_lo"], b["precursor_hi"]) == pytest.approx(wilson(6, 9))
    hard = rates.filter((pl.col("measure") == "rankme") & (pl.col("split") == "hard")).row(
        0, named=True)
    assert (hard["n"], hard["precursor_k"], hard["lagging_k"]) == (6, 3, 3)
    cell = rates.filter(pl.col("split") == "hard/s1").filter(pl.col("measure") == "llc")
    assert cell.select("n", "no_onset_k", "precursor_k").row(0) == (3, 3, 0)
    h = hierarchy(_leads(rows), rates)
    assert h["measure"].to_list() == ["rankme", "llc"]  # median lead 40 before 0
    assert h.filter(pl.col("measure") == "rankme")["median_lead"][0] == 40.0
    assert h.filter(pl.col("measure") == "llc")["n_onsets"][0] == 3
    assert h["rank"].to_list() == [1, 2]
    # a measure with fewer onsets than the minimum is listed last, unranked
    few = hierarchy(_leads(rows), rates, min_onsets=4)
    assert few["measure"].to_list() == ["rankme", "llc"]
    assert few["rank"].to_list() == [1, None]  # rankme has 6 onsets, llc 3


def test_a_few_seeds_that_differ_get_wilson_and_enough_seeds_the_bootstrap() -> None:
    def rows_for(n_seeds: int) -> list[tuple]:
        rows = []
        for seed in range(n_seeds):  # seed-varying shares, so the bootstrap is not degenerate
            rows += [("accuracy", "rankme", seed, "s0", "easy", "precursor", 50, 5.0, 1, 3)] \
                * (1 + seed % 3)
            rows += [("accuracy", "rankme", seed, "s0", "easy", "lagging", -5, -1.0, 1, 0)] * 2
        return rows

    settings = AnalysisSettings(n_bootstrap=300)
    # from 5 seeds the precursor share is bootstrapped; synchronous and unresolved are 0 in
    # every seed, so theirs fall back to Wilson, and the row's method names both
    both = "seed bootstrap; wilson (seeds agree) where degenerate"
    for n_seeds, method in ((3, "wilson"), (4, "wilson"), (5, both), (8, both)):
        r = precursor_rates(_leads(rows_for(n_seeds)), settings).filter(
            pl.col("split_kind") == "all").row(0, named=True)
        assert r["ci_method"] == method, n_seeds
        assert r["precursor_lo"] < r["precursor_rate"] < r["precursor_hi"]


def test_one_seed_gets_a_wilson_interval_and_says_so() -> None:
    from emergence_core.analysis.rates import wilson

    lo, hi = wilson(8, 10)  # textbook value: 0.490 to 0.943
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0
    rows = [("accuracy", "rankme", 0, "s0", "easy", "precursor", 50, 10, 100, 0)] * 8 + \
        [("accuracy", "rankme", 0, "s0", "easy", "lagging", -50, -10, 100, 0)] * 2
    r = precursor_rates(_leads(rows), AnalysisSettings()).filter(
        pl.col("split_kind") == "all").row(0, named=True)
    assert r["ci_method"] == "wilson" and r["n_seeds"] == 1
    assert (r["precursor_lo"], r["precursor_hi"]) == pytest.approx((lo, hi))
