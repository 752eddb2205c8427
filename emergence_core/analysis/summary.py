"""The report's first section: each headline claim with its count, interval and rule."""

from __future__ import annotations

import numpy as np
import polars as pl

from emergence_core.analysis.pipeline import Analysis

__all__ = ["pct", "summary_lines", "summary_rows"]


def pct(x: float | None) -> str:
    """A share as a whole percentage, ``n/a`` for none."""
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _interval(lo: float | None, hi: float | None, method: str | None, level: float) -> str:
    if lo is None or hi is None or (isinstance(lo, float) and np.isnan(lo)):
        return f"none ({method})" if method else "none"
    return f"{100 * level:.0f}% CI {100 * lo:.0f}-{100 * hi:.0f}% ({method})"


def summary_rows(a: Analysis) -> list[tuple[str, str, str, str]]:
    """The report's answers first: (claim, result, interval, rule) per headline claim."""
    s, lvl = a.settings, a.settings.ci_level
    rows: list[tuple[str, str, str, str]] = []
    acc = a.details.filter(pl.col("measure") == "accuracy")
    k = acc.filter(pl.col("step").is_not_null()).height
    rows.append(("Capabilities emerge (accuracy events)", f"{k}/{acc.height} (trial, level) "
                 "series", "-", f"chance-corrected accuracy >= {s.threshold:g} for "
                 f"{s.persistence + 1} probes"))
    if a.floor_summary.height:
        n_scales = a.floor_summary["scale"].n_unique()
        f = a.floor_summary["floor"]
        spread = a.floor_spread["cv"].drop_nulls()
        result = (f"floors {f.min():.3g} to {f.max():.3g} over "
                  f"{a.floor_summary.select('task', 'level').unique().height} task levels")
        result += (f"; median CV across {n_scales} scales {spread.median():.2f}"
                   if spread.len() else "; one scale: no spread across scales")
        rows.append((f"Representations collapse to task-specific floors ({s.collapse_measure}, "
                     "final layer)", result, "-", f"minimum over the first "
                     f"{100 * s.early_fraction:.0f}% of training, before recovery"))
    if a.topdown_summary.height:
        t = a.topdown_summary.row(0, named=True)
        result = (f"{t['k']}/{t['n']} (task, scale) with a verdict" if t["n"] else
                  "no verdict") + f"; {t['n_undetermined']} undetermined"
        rows.append(("Collapse runs top-down", result,
                     _interval(t["lo"], t["hi"], t["ci_method"], lvl),
                     f"Spearman rho <= -{s.topdown_rho:g} over >= {s.topdown_min_layers} "
                     f"layers whose drop is >= {s.topdown_min_depth:g} deep"))
    rules = (("departure", a.rates), ("first", a.rates_first))
    for m in a.hierarchy.filter(pl.col("event") == "accuracy")["measure"].to_list():
        got = []
        for rule, table in rules:
            row = table.filter((pl.col("event") == "accuracy") & (pl.col("split_kind") == "all")
                               & (pl.col("measure") == m))
            if row.height:
                got.append((rule, row.row(0, named=True)))
        if not got:
            continue
        n, no_onset = got[0][1]["n"], got[0][1]["no_onset_k"]
        rows.append((f"{m} changes before emergence (precursor of accuracy events)",
                     "; ".join(f"{x['precursor_k']}/{n} under {rule}" for rule, x in got)
                     + f" ({no_onset} events without a departure onset)",
                     "; ".join(f"{rule} " + _interval(x["precursor_lo"], x["precursor_hi"],
                                                     x["ci_method"], lvl) for rule, x in got),
                     "lead > tolerance; onset rules departure (headline) and first"))
    conc = a.prediction.filter((pl.col("signal") == "onset")
                               & (pl.col("statistic") == "concordance")
                               & (pl.col("scope") == "all"))
    if conc.height and conc["n"][0]:
        c = conc.row(0, named=True)
        rows.append((f"{s.signal_measure}'s onset orders emergence within a class",
                     f"{c['k']:g}/{c['n']} pairs ({pct(c['value'])})",
                     _interval(c["lo"], c["hi"], c["ci_method"], lvl), "0.5 is chance"))
    return rows


def summary_lines(a: Analysis) -> list[str]:
    """The report's ``## Summary`` section: the rows of ``summary_rows`` as a table."""
    rows = summary_rows(a)
    out = ["## Summary", "",
           "Each headline claim with its count, interval and the rule that decides it; the "
           "sections below give the definitions and every table.", "",
           "| claim | result | interval | rule |", "|---|---|---|---|"]
    out += [f"| {c} | {r} | {i} | {u} |" for c, r, i, u in rows]
    return [*out, ""]
