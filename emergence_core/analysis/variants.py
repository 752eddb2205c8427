"""How far the findings depend on how RankMe is measured: one table of variants.

Studies differ on centring (Garrido et al.'s RankMe does not centre; on MOD s0 the
final-layer per-level floor is 20 to 24 centred and 3.2 to 4.5 uncentred), on where the
representation is read (SEP, the prompt mean, the last answer position) and on whether
task levels are pooled. Every headline that rests on RankMe is therefore recomputed for
each variant in the run: each collapse-family measure logged (``rankme``,
``rankme_uncentred``, and their ``@position`` forms), per level (the headline scope) and
pooled over levels. One row per variant:

- floors: how many (trial, level) floors, their median over (task, level, scale) medians,
  the median over task levels of the floor CV across scales, and ``floor_ratio``, the
  median over (task, scale) of this variant's floor over the headline's (both medians over
  levels);
- top-down: k/n (task, scale) combinations with its interval (``collapse.topdown_share``),
  the median number of layers a verdict rests on, the constant layers excluded, and
  ``topdown_changed``, the combinations whose verdict differs from the headline's;
- precursor: the measure's precursor k/n for the accuracy event (all events) with its
  interval under the departure rule, its k under the first-change-after-the-floor rule
  (``precursor_first_k``, same n), and its rank in the geometric hierarchy (per-level rows
  only: the leads are computed on the event's own level);
- ``changes``: in words, which of these conclusions differ from the headline variant.
"""

from __future__ import annotations

import polars as pl

from emergence_core.analysis.collapse import (
    floor_spread,
    floor_summary,
    topdown,
    topdown_share,
    trial_floors,
)
from emergence_core.analysis.settings import AnalysisSettings
from emergence_core.metrics import Measure

__all__ = ["FAMILY", "family", "variants_table"]

# RankMe's formula centred and not, and the covariance-spectrum effective ranks that
# ``emerge multiverse`` computes under their own names (emergence_core.multiverse)
FAMILY = (Measure.RANKME, Measure.RANKME_UNCENTRED, "erank_cov", "erank_moment")


def family(measures: set[str] | list[str], settings: AnalysisSettings) -> list[str]:
    """The collapse-family measures present, the headline ``collapse_measure`` first."""
    found = sorted(m for m in measures if m.split("@")[0] in FAMILY)
    head = [settings.collapse_measure] if settings.collapse_measure in measures else []
    return head + [m for m in found if m != settings.collapse_measure]


def _per_task_scale(floors: pl.DataFrame) -> pl.DataFrame:
    return floors.group_by("task", "scale").agg(pl.col("floor").median())


_SCHEMA = {
    "variant": pl.String, "measure": pl.String, "scope": pl.String, "headline": pl.Boolean,
    "n_floors": pl.Int64, "floor_median": pl.Float64, "cv_median": pl.Float64,
    "floor_ratio": pl.Float64, "topdown_k": pl.Int64, "topdown_n": pl.Int64,
    "topdown_lo": pl.Float64, "topdown_hi": pl.Float64, "topdown_ci": pl.String,
    "layers_median": pl.Float64, "n_constant": pl.Int64, "topdown_changed": pl.Int64,
    "precursor_k": pl.Int64, "precursor_n": pl.Int64, "precursor_lo": pl.Float64,
    "precursor_hi": pl.Float64, "precursor_ci": pl.String, "precursor_first_k": pl.Int64,
    "precursor_first_lo": pl.Float64, "precursor_first_hi": pl.Float64,
    "hierarchy_rank": pl.Int64,
    "changes": pl.String,
}


def variants_table(collapse_all: pl.DataFrame, scales: pl.DataFrame, rates: pl.DataFrame,
                   hierarchy: pl.DataFrame, settings: AnalysisSettings,
                   rates_first: pl.DataFrame | None = None) -> pl.DataFrame:
    """The variants table (module docstring); ``collapse_all``: ``collapse_table`` of every
    collapse-family measure; ``rates``/``hierarchy``: the headline (departure) tables;
    ``rates_first``: the rates under the first-change-after-the-floor rule."""
    present = set(collapse_all["measure"].to_list()) if collapse_all.height else set()
    rows: list[dict] = []
    head_td = head_floor = None
    acc_rates = rates.filter((pl.col("event") == "accuracy") & (pl.col("split_kind") == "all"))
    acc_hier = hierarchy.filter(pl.col("event") == "accuracy")
    acc_first = (rates_first.filter((pl.col("event") == "accuracy")
                                    & (pl.col("split_kind") == "all"))
                 if rates_first is not None and rates_first.height else None)
    for measure in family(present, settings):
        c = collapse_all.filter(pl.col("measure") == measure)
        for pooled in (False, True):
            floors = trial_floors(c, pooled)
            if floors.height == 0:
                continue
            summary = floor_summary(floors, scales)
            spread = floor_spread(summary)
            td = topdown(c, settings, pooled)
            share = topdown_share(c, td, settings, pooled)
            per_ts = _per_task_scale(floors)
            is_head = measure == settings.collapse_measure and not pooled
            if is_head:
                head_td, head_floor = td, per_ts
            row = {"variant": f"{measure} / {'pooled' if pooled else 'per level'}",
                   "measure": measure, "scope": "pooled" if pooled else "per level",
                   "headline": is_head, "n_floors": floors.height,
                   "floor_median": summary["floor"].median(),
                   "cv_median": spread["cv"].median(),
                   "topdown_k": share["k"], "topdown_n": share["n"], "topdown_lo": share["lo"],
                   "topdown_hi": share["hi"], "topdown_ci": share["ci_method"],
                   "layers_median": td["n_layers"].median(),
                   "n_constant": int(td["n_constant"].sum())}
            changes = []
            if head_floor is not None:
                ratio = per_ts.join(head_floor, on=["task", "scale"], suffix="_h")
                row["floor_ratio"] = (ratio["floor"] / ratio["floor_h"]).median()
                r = row["floor_ratio"]
                if r is not None and abs(r - 1.0) > 0.1:
                    changes.append(f"floors x{r:.2f}")
            if head_td is not None:
                both = td.join(head_td, on=["task", "scale"], suffix="_h")
                row["topdown_changed"] = int((both["verdict"] != both["verdict_h"]).sum())
                if row["topdown_changed"]:
                    changes.append(f"{row['topdown_changed']}/{both.height} top-down verdicts")
            if not pooled:
                r = acc_rates.filter(pl.col("measure") == measure)
                if r.height:
                    r0 = r.row(0, named=True)
                    row |= {"precursor_k": r0["precursor_k"], "precursor_n": r0["n"],
                            "precursor_lo": r0["precursor_lo"],
                            "precursor_hi": r0["precursor_hi"],
                            "precursor_ci": r0["ci_method"]}
                f = None if acc_first is None else acc_first.filter(
                    pl.col("measure") == measure)
                if f is not None and f.height:
                    f0 = f.row(0, named=True)
                    row |= {"precursor_first_k": f0["precursor_k"],
                            "precursor_first_lo": f0["precursor_lo"],
                            "precursor_first_hi": f0["precursor_hi"]}
                h = acc_hier.filter(pl.col("measure") == measure)
                if h.height and h["rank"][0] is not None:
                    row["hierarchy_rank"] = int(h["rank"][0])
            row["changes"] = "headline" if is_head else ("; ".join(changes) or "none")
            rows.append(row)
    if not rows:
        return pl.DataFrame(schema=_SCHEMA)
    return pl.DataFrame([{k: r.get(k) for k in _SCHEMA} for r in rows], schema=_SCHEMA)
