"""Precursor rates with seed-clustered bootstrap intervals, and the geometric hierarchy.

docs/methods.md §4: for each measure the fraction of events for which it is a precursor (and
synchronous, lagging), split by difficulty class and by scale, each with its count k/n
and a confidence interval: a bootstrap over seeds where the split holds at least
``bootstrap_min_seeds`` of them, a Wilson score interval otherwise (``interval``).

Denominator: the events for which the measure has a series (``n``), including those
where the series shows no change point (class ``no_onset``), which count as not a
precursor. Clusters are seeds: events of one seed share a training run's randomness
(and, per trial, the same measure series), so they are resampled together.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from emergence_core.analysis.frames import group_slices
from emergence_core.analysis.settings import AnalysisSettings

__all__ = ["CLASSES", "DEGENERATE", "cluster_bootstrap", "hierarchy", "interval",
           "precursor_rates", "row_method", "wilson"]

CLASSES = ("precursor", "synchronous", "unresolved", "lagging")


def cluster_bootstrap(k: np.ndarray, n: np.ndarray, *, n_resamples: int = 2000,
                      level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``sum(k) / sum(n)`` when whole clusters are resampled.

    ``k[i]``, ``n[i]``: successes and trials of cluster ``i`` (one seed). Each resample draws
    as many clusters as there are, with replacement, and recomputes the pooled ratio
    (Davison & Hinkley, "Bootstrap Methods and their Application", 1997, section 3.8). NaN
    for fewer than two clusters, where resampling clusters says nothing.
    """
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    if k.size < 2:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, k.size, size=(n_resamples, k.size))
    kk, nn = k[idx].sum(axis=1), n[idx].sum(axis=1)
    r = kk[nn > 0] / nn[nn > 0]
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(r, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (Wilson 1927); NaN for n = 0.

    Used where a split holds one seed, so there are no clusters to resample: it treats the
    n events as independent, which events of one training run are not quite.
    """
    if n <= 0:
        return float("nan"), float("nan")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2.0))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo = 0.0 if k <= 0 else max(0.0, float(centre - half))  # exact at the ends, not 1e-17
    hi = 1.0 if k >= n else min(1.0, float(centre + half))
    return lo, hi


def interval(k: np.ndarray, n: np.ndarray, settings: AnalysisSettings) -> tuple[float, float, str]:
    """(lo, hi, method) of sum(k)/sum(n): the seed bootstrap with at least
    ``bootstrap_min_seeds`` seeds, else Wilson; Wilson too where the bootstrap is degenerate
    (every resample the same share: the seeds agree), so no interval reads 0-0%."""
    if len(k) >= settings.bootstrap_min_seeds:
        lo, hi = cluster_bootstrap(k, n, n_resamples=settings.n_bootstrap,
                                   level=settings.ci_level, seed=settings.bootstrap_seed)
        if hi > lo:
            return lo, hi, "seed bootstrap"
        method = DEGENERATE
    else:
        method = "wilson"
    lo, hi = wilson(int(np.sum(k)), int(np.sum(n)), settings.ci_level)
    return lo, hi, method


DEGENERATE = "wilson (seeds agree)"


def row_method(methods: list[str]) -> str:
    """One ci_method for a row of several intervals: theirs when they agree, else the
    bootstrap's with the Wilson fallback named."""
    if len(set(methods)) == 1:
        return methods[0]
    return f"seed bootstrap; {DEGENERATE} where degenerate"


def _splits(leads: pl.DataFrame) -> pl.DataFrame:
    """``leads`` stacked once per split: all, difficulty, scale, difficulty x scale."""
    return pl.concat([
        leads.with_columns(pl.lit("all").alias("split_kind"), pl.lit("all").alias("split")),
        leads.with_columns(pl.lit("difficulty").alias("split_kind"),
                           pl.col("difficulty").alias("split")),
        leads.with_columns(pl.lit("scale").alias("split_kind"), pl.col("scale").alias("split")),
        leads.with_columns(pl.lit("difficulty x scale").alias("split_kind"),
                           pl.concat_str("difficulty", pl.lit("/"), "scale").alias("split")),
    ]).filter(pl.col("split").is_not_null())


def precursor_rates(leads: pl.DataFrame, settings: AnalysisSettings) -> pl.DataFrame:
    """Rates of each class per (event, measure, split), with k/n and seed-bootstrap CIs.

    ``leads`` needs the columns event, measure, seed, scale, difficulty and class.
    Columns: ``n``, ``n_seeds``, and for each class ``<class>_k``, ``<class>_rate``,
    ``<class>_lo``, ``<class>_hi`` (null CI with one seed), and ``no_onset_k``.
    """
    keys = ["event", "measure", "split_kind", "split"]
    per_seed = (_splits(leads).group_by([*keys, "seed"]).agg(
        pl.len().alias("n"),
        *[(pl.col("class") == c).sum().alias(c) for c in (*CLASSES, "no_onset")])
        .sort([*keys, "seed"]))
    cols: dict[str, list] = {k: [] for k in (*keys, "n", "n_seeds", "ci_method")}
    for c in CLASSES:
        for suffix in ("k", "rate", "lo", "hi"):
            cols[f"{c}_{suffix}"] = []
    cols["no_onset_k"] = []
    n_all = per_seed["n"].to_numpy()
    counts = {c: per_seed[c].to_numpy() for c in (*CLASSES, "no_onset")}
    for key, a, b in group_slices(per_seed, keys):
        n = n_all[a:b]
        for name, v in zip(keys, key, strict=True):
            cols[name].append(v)
        cols["n"].append(int(n.sum()))
        cols["n_seeds"].append(b - a)
        methods = []
        for c in CLASSES:
            k = counts[c][a:b]
            lo, hi, method = interval(k, n, settings)
            methods.append(method)
            cols[f"{c}_k"].append(int(k.sum()))
            cols[f"{c}_rate"].append(float(k.sum() / n.sum()))
            cols[f"{c}_lo"].append(None if np.isnan(lo) else lo)
            cols[f"{c}_hi"].append(None if np.isnan(hi) else hi)
        cols["no_onset_k"].append(int(counts["no_onset"][a:b].sum()))
        cols["ci_method"].append(row_method(methods))
    schema = {k: pl.String for k in keys} | {"n": pl.Int64, "n_seeds": pl.Int64,
                                              "ci_method": pl.String}
    for c in CLASSES:
        schema |= {f"{c}_k": pl.Int64, f"{c}_rate": pl.Float64, f"{c}_lo": pl.Float64,
                   f"{c}_hi": pl.Float64}
    schema["no_onset_k"] = pl.Int64
    return pl.DataFrame(cols, schema=schema)


def hierarchy(leads: pl.DataFrame, rates: pl.DataFrame, suffix: str = "",
              min_onsets: int = 1) -> pl.DataFrame:
    """The geometric hierarchy: measures ordered by median lead (earliest first), per event.

    Median, quartiles of lead in steps and median lead in probe intervals, over events where
    the measure has an onset. The order (``rank``) is by the lead in probe intervals, which
    is comparable across scales whose probe grids differ (a lead in steps weighs the
    sparsely probed late events most); ties, then the lead in steps. A measure with fewer
    than ``min_onsets`` onsets is listed after the ranked ones with a null ``rank``: one
    event's lead is no ordering. ``suffix`` picks the onset rule's columns (``leads.RULES``:
    "" departure, "_first", "_nearest"); ``rates`` must be that rule's.
    """
    onset = {"": "onset_step"}.get(suffix, f"onset{suffix}")
    overall = rates.filter(pl.col("split_kind") == "all").select(
        "event", "measure", "n", "precursor_k", "precursor_rate")
    ranked = pl.col("n_onsets") >= min_onsets
    return (leads.filter(pl.col(onset).is_not_null())
            .group_by(["event", "measure"]).agg(
                pl.len().alias("n_onsets"),
                pl.col(f"lead{suffix}").median().alias("median_lead"),
                pl.col(f"lead{suffix}").quantile(0.25).alias("q25_lead"),
                pl.col(f"lead{suffix}").quantile(0.75).alias("q75_lead"),
                pl.col(f"lead_intervals{suffix}").median().alias("median_lead_intervals"),
                pl.col("xcorr_lag").median().alias("median_xcorr_lag"))
            .join(overall, on=["event", "measure"], how="left")
            .with_columns(ranked.alias("_ranked"))
            .sort(["event", "_ranked", "median_lead_intervals", "median_lead", "measure"],
                  descending=[False, True, True, True, False], nulls_last=True)
            .with_columns(pl.when(pl.col("_ranked"))
                          .then(pl.int_range(1, pl.len() + 1).over("event"))
                          .alias("rank"))
            .drop("_ranked"))
