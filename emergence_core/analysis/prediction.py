"""Prediction limits: how far a geometric signal predicts the order of emergence.

docs/methods.md §4. A signal must be computable without knowing the event, so here:

- ``onset``: the first change point of ``signal_measure``'s headline series (the event's
  level where logged per level) after the trial's collapse (``Leads.onsets``: past the step
  at which the pooled final-layer collapse measure reaches its floor, by a margin that
  skips the collapse's own end; the first change point at all when the trial has no
  floor). Not the matched onset of ``leads``, which is chosen by nearness to the event and
  would predict it circularly.
- ``floor_depth``: ``1 - floor / initial`` of the collapse measure's final layer at the
  event's level (pooled where not logged per level).

Statistics, over accuracy events that happened (a never-emerging level has no order):
``spearman`` between signal and emergence step (per scale, and all pooled);
``concordance``: over pairs of task levels in the same difficulty class, scale and seed
with different emergence steps, the fraction whose emergence order the signal's order
matches (a tie in the signal counts one half; 0.5 is chance, below 0.5 the signal
predicts the reverse order); ``reversal``: over pairs of task levels whose emergence order
(median over seeds) flips between two scales, the fraction for which the signal's order
matches the emergence order at both scales.

Intervals (``lo``, ``hi``, ``ci_method``) on concordance and reversal: a percentile bootstrap
over seeds (seeds drawn with replacement, each draw a distinct cluster, the statistic
recomputed once per distinct multiset drawn) with at least ``bootstrap_min_seeds`` seeds,
else, and where every resample gives the same value, a Wilson interval on k/n.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import polars as pl
from scipy import stats

from emergence_core.analysis.frames import group_slices, unit_expr
from emergence_core.analysis.rates import DEGENERATE, wilson
from emergence_core.analysis.settings import AnalysisSettings

__all__ = ["SIGNALS", "event_signals", "prediction_limits"]

SIGNALS = ("onset", "floor_depth")
_SCHEMA = {"signal": pl.String, "statistic": pl.String, "scope": pl.String, "n": pl.Int64,
           "k": pl.Float64, "value": pl.Float64, "p_value": pl.Float64, "lo": pl.Float64,
           "hi": pl.Float64, "ci_method": pl.String}


def event_signals(details: pl.DataFrame, onsets: pl.DataFrame, collapse: pl.DataFrame,
                  difficulty: pl.DataFrame, inventory: pl.DataFrame,
                  settings: AnalysisSettings) -> pl.DataFrame:
    """One row per accuracy event that happened, with its signals and difficulty class.

    ``onsets``: ``Leads.onsets``; ``inventory``: (trial, measure, has_levels), whether a
    trial logs a measure per level.
    """
    ev = (details.filter((pl.col("measure") == "accuracy") & pl.col("step").is_not_null())
          .select("trial", "task", "level", "scale", "seed", pl.col("step").alias("event_step"))
          .with_columns(unit_expr()))
    cps = (onsets.filter(pl.col("measure") == settings.signal_measure)
           .select("trial", "level", pl.col("first_onset").alias("onset")))
    series_levels = (inventory.filter(pl.col("measure") == settings.signal_measure)
                     .select("trial", pl.col("has_levels").alias("_lv")))
    depth = (collapse.filter(pl.col("is_final"))
             .select("trial", "level", pl.col("depth").alias("floor_depth")))
    ev = ev.join(series_levels, on="trial", how="left").with_columns(
        pl.when(pl.col("_lv")).then(pl.col("level")).alias("_cp_level"))
    ev = ev.join(cps, left_on=["trial", "_cp_level"], right_on=["trial", "level"], how="left",
                 nulls_equal=True)
    own = ev.join(depth, on=["trial", "level"], how="left", nulls_equal=True)
    pooled = depth.filter(pl.col("level").is_null()).select("trial",
                                                            pl.col("floor_depth").alias("_fd"))
    own = own.join(pooled, on="trial", how="left").with_columns(
        pl.col("floor_depth").fill_null(pl.col("_fd")))
    return (own.join(difficulty.select("unit", "scale", "difficulty"), on=["unit", "scale"],
                     how="left")
            .select("trial", "task", "level", "unit", "scale", "seed", "difficulty",
                    "event_step", pl.col("onset").cast(pl.Float64), "floor_depth"))


def _concordance(s: np.ndarray, e: np.ndarray) -> tuple[float, int]:
    """(concordant pairs, a signal tie counting 1/2; pairs with different event steps)."""
    i, j = np.triu_indices(s.size, k=1)
    de, ds = np.sign(e[i] - e[j]), np.sign(s[i] - s[j])
    valid = de != 0
    k = float(np.sum(ds[valid] == de[valid]) + 0.5 * np.sum(ds[valid] == 0))
    return k, int(valid.sum())


def _spearman(df: pl.DataFrame, signal: str, scope: str) -> dict:
    s, e = df[signal].to_numpy(), df["event_step"].to_numpy().astype(np.float64)
    rho = p = None
    if s.size >= 3 and np.ptp(s) > 0 and np.ptp(e) > 0:
        res = stats.spearmanr(s, e)
        rho, p = float(res.statistic), float(res.pvalue)
    return {"signal": signal, "statistic": "spearman", "scope": scope, "n": s.size,
            "k": None, "value": rho, "p_value": p}


def _reversals(df: pl.DataFrame, signal: str, scales: list[str]) -> list[dict]:
    med = df.group_by(["unit", "scale"]).agg(pl.col("event_step").median(),
                                             pl.col(signal).median())
    rows, total_k, total_n = [], 0, 0
    for a, b in combinations(scales, 2):
        pair = (med.filter(pl.col("scale") == a)
                .join(med.filter(pl.col("scale") == b), on="unit", suffix="_b"))
        ea, eb = pair["event_step"].to_numpy(), pair["event_step_b"].to_numpy()
        sa, sb = pair[signal].to_numpy(), pair[f"{signal}_b"].to_numpy()
        i, j = np.triu_indices(ea.size, k=1)
        da, db = np.sign(ea[i] - ea[j]), np.sign(eb[i] - eb[j])
        flip = da * db < 0
        right = flip & (np.sign(sa[i] - sa[j]) == da) & (np.sign(sb[i] - sb[j]) == db)
        k, n = int(right.sum()), int(flip.sum())
        total_k, total_n = total_k + k, total_n + n
        rows.append({"signal": signal, "statistic": "reversal", "scope": f"{a} vs {b}",
                     "n": n, "k": float(k), "value": k / n if n else None, "p_value": None})
    rows.append({"signal": signal, "statistic": "reversal", "scope": "all", "n": total_n,
                 "k": float(total_k), "value": total_k / total_n if total_n else None,
                 "p_value": None})
    return rows


def _pair_rows(df: pl.DataFrame, signal: str, scales: list[str]) -> list[dict]:
    """Concordance and reversal rows of one signal over ``df``."""
    rows: list[dict] = []
    groups = df.filter(pl.col("difficulty").is_not_null()).sort(["scale", "seed", "difficulty"])
    per: dict[str, list[float]] = {}
    for (scale, _seed, cls), a, b in group_slices(groups, ["scale", "seed", "difficulty"]):
        k, n = _concordance(groups[signal][a:b].to_numpy(),
                            groups["event_step"][a:b].to_numpy())
        for scope in ("all", f"scale={scale}", f"difficulty={cls}"):
            acc = per.setdefault(scope, [0.0, 0])
            acc[0] += k
            acc[1] += n
    for scope, (k, n) in per.items():
        rows.append({"signal": signal, "statistic": "concordance", "scope": scope,
                     "n": int(n), "k": k, "value": k / n if n else None, "p_value": None})
    rows.extend(_reversals(df, signal, scales))
    return rows


def _with_intervals(rows: list[dict], df: pl.DataFrame, signal: str, scales: list[str],
                    settings: AnalysisSettings) -> list[dict]:
    seeds = sorted(set(df["seed"].to_list())) if df.height else []
    boot = len(seeds) >= settings.bootstrap_min_seeds
    if boot:
        rng = np.random.default_rng(settings.bootstrap_seed)
        draws: dict[tuple[str, str], list[float]] = {}
        seen: dict[tuple, list[dict]] = {}  # the statistic depends on the multiset drawn
        for _ in range(settings.n_bootstrap):
            drawn = tuple(sorted(rng.choice(seeds, size=len(seeds)).tolist()))
            if drawn not in seen:
                pick = pl.DataFrame({"seed": list(drawn), "_draw": list(range(len(seeds)))},
                                    schema={"seed": pl.Int64, "_draw": pl.Int64})
                again = (df.join(pick, on="seed", how="inner")
                         .with_columns(pl.col("_draw").alias("seed")).drop("_draw"))
                seen[drawn] = _pair_rows(again, signal, scales)
            for r in seen[drawn]:
                if r["value"] is not None:
                    draws.setdefault((r["statistic"], r["scope"]), []).append(r["value"])
    alpha = (1 - settings.ci_level) / 2
    for r in rows:
        lo = hi = np.nan
        method = "wilson"
        if boot:
            v = draws.get((r["statistic"], r["scope"]), [])
            if v:
                lo, hi = np.quantile(v, [alpha, 1 - alpha])
            method = "seed bootstrap" if hi > lo or not v else DEGENERATE
        if method != "seed bootstrap":
            lo, hi = wilson(r["k"], r["n"], settings.ci_level)
        r |= {"lo": None if np.isnan(lo) else float(lo), "hi": None if np.isnan(hi)
              else float(hi), "ci_method": method if r["n"] else None}
    return rows


def prediction_limits(signals: pl.DataFrame, scales: list[str],
                      settings: AnalysisSettings | None = None) -> pl.DataFrame:
    """Spearman, within-class concordance and ordering reversal for each signal, the last
    two with intervals (module docstring).

    ``scales``: scale names in order (the order of the reversal's scale pairs).
    """
    settings = settings or AnalysisSettings()
    rows: list[dict] = []
    for signal in SIGNALS:
        df = signals.filter(pl.col(signal).is_not_null() & pl.col(signal).is_not_nan())
        rows.append(_spearman(df, signal, "all"))
        for scale in scales:
            rows.append(_spearman(df.filter(pl.col("scale") == scale), signal, f"scale={scale}"))
        rows.extend(_with_intervals(_pair_rows(df, signal, scales), df, signal, scales,
                                    settings))
    return pl.DataFrame([{k: r.get(k) for k in _SCHEMA} for r in rows], schema=_SCHEMA)
