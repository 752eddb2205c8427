"""Representation collapse: floors, their spread across scales, collapse order of layers.

SPEC section 4. The series is the collapse measure (RankMe at SEP by default) pooled over
task levels; the final layer is the headline (its floor is "the" floor of a trial), and
every layer gets a collapse time for the top-down test. The definitions of the early part,
recovery and "reaching" the floor are in ``series.collapse_floor``.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats

from emergence_core.analysis.frames import group_slices
from emergence_core.analysis.series import collapse_floor
from emergence_core.analysis.settings import AnalysisSettings

__all__ = [
    "collapse_table",
    "floor_spread",
    "floor_summary",
    "topdown",
    "trial_floors",
]

_TRIAL_META = ["trial", "task", "scale", "seed", "source"]


def collapse_table(rows: pl.DataFrame, settings: AnalysisSettings) -> pl.DataFrame:
    """Floor of every (trial, level, layer) series in ``rows`` (collapse-measure rows).

    Columns: trial meta, level, layer, ``is_final`` (the trial's deepest layer), initial,
    floor, depth (``1 - floor / initial``), floor_step, collapse_step, recovery_step,
    degenerate, n_probes. Series with fewer than 2 finite values are skipped.
    """
    keys = ["trial", "level", "layer"]
    rows = rows.filter(pl.col("value").is_not_null()).sort([*keys, "step"], nulls_last=True)
    steps, values = rows["step"].to_numpy(), rows["value"].to_numpy()
    out: dict[str, list] = {k: [] for k in (*keys, "initial", "floor", "depth", "floor_step",
                                            "collapse_step", "recovery_step", "degenerate",
                                            "n_probes")}
    for key, a, b in group_slices(rows, keys):
        if b - a < 2:
            continue
        f = collapse_floor(steps[a:b], values[a:b], window=settings.smooth_window,
                           early_fraction=settings.early_fraction,
                           recovery_fraction=settings.recovery_fraction,
                           reach_fraction=settings.floor_reach_fraction)
        for k, v in zip(keys, key, strict=True):
            out[k].append(v)
        for name in ("initial", "floor", "depth", "floor_step", "collapse_step",
                     "recovery_step", "degenerate"):
            out[name].append(getattr(f, name))
        out["n_probes"].append(b - a)
    table = pl.DataFrame(out, schema={
        "trial": pl.String, "level": pl.Int8, "layer": pl.Int16, "initial": pl.Float64,
        "floor": pl.Float64, "depth": pl.Float64, "floor_step": pl.Int64,
        "collapse_step": pl.Int64, "recovery_step": pl.Int64, "degenerate": pl.Boolean,
        "n_probes": pl.Int64})
    meta = rows.select(_TRIAL_META).unique("trial")
    return (table.join(meta, on="trial", how="left")
            .with_columns((pl.col("layer") == pl.col("layer").max().over("trial"))
                          .fill_null(True).alias("is_final"))
            .select([*_TRIAL_META, "level", "layer", "is_final", *list(out)[3:]]))


def trial_floors(collapse: pl.DataFrame) -> pl.DataFrame:
    """The floor of each trial: its final layer, pooled over levels."""
    return (collapse.filter(pl.col("is_final") & pl.col("level").is_null())
            .drop("level", "is_final").sort(["task", "scale", "seed"]))


def floor_summary(floors: pl.DataFrame, scales: pl.DataFrame) -> pl.DataFrame:
    """Floors per (task, scale): median over seeds, with min, max and the seed count.

    ``scales`` (scale, n_layers) orders scales by depth, so Pythia's model names sort by size.
    """
    return (floors.group_by(["task", "scale"]).agg(
        pl.col("floor").median().alias("floor"), pl.col("floor").min().alias("floor_min"),
        pl.col("floor").max().alias("floor_max"), pl.col("depth").median().alias("depth"),
        pl.col("floor_step").median().alias("floor_step"), pl.len().alias("n_seeds"))
        .join(scales, on="scale", how="left")
        .sort(["task", "n_layers", "scale"], nulls_last=True))


def floor_spread(summary: pl.DataFrame) -> pl.DataFrame:
    """Scale invariance of each task's floor: spread of its per-scale floors.

    ``cv`` = population standard deviation / mean over the scales the task was run at (the
    spread of these floors, not an estimate for unseen scales); ``max_min_ratio`` = largest
    / smallest floor (null when the smallest is 0). Both are null for fewer than 2 scales.
    """
    enough = pl.len() >= 2
    return summary.group_by("task").agg(
        pl.len().alias("n_scales"),
        pl.col("floor").mean().alias("mean_floor"),
        pl.when(enough).then(pl.col("floor").std(ddof=0) / pl.col("floor").mean())
        .alias("cv"),
        pl.when(enough & (pl.col("floor").min() > 0))
        .then(pl.col("floor").max() / pl.col("floor").min()).alias("max_min_ratio"),
    ).sort("task")


def topdown(collapse: pl.DataFrame, settings: AnalysisSettings) -> pl.DataFrame:
    """The top-down test per (task, scale) (SPEC section 4).

    Collapse time of a layer = median over seeds of its collapse step (pooled levels,
    constant layers left out). ``rho`` = Spearman correlation between layer index and
    collapse time; ``verdict`` is ``top-down`` when ``rho <= -topdown_rho`` (deeper layers
    collapse first), ``bottom-up`` when ``rho >= topdown_rho``, ``mixed`` in between, and
    ``undetermined`` with fewer than ``topdown_min_layers`` layers or all times tied.
    """
    per_layer = (collapse.filter(pl.col("level").is_null() & ~pl.col("degenerate"))
                 .group_by(["task", "scale", "layer"]).agg(
                     pl.col("collapse_step").median().alias("collapse_step"),
                     pl.len().alias("n_seeds"))
                 .sort(["task", "scale", "layer"]))
    out: dict[str, list] = {k: [] for k in ("task", "scale", "n_layers", "n_seeds", "rho",
                                            "p_value", "verdict", "layers", "collapse_steps")}
    for (task, scale), a, b in group_slices(per_layer, ["task", "scale"]):
        g = per_layer[a:b]
        layers, times = g["layer"].to_numpy(), g["collapse_step"].to_numpy()
        rho = p = float("nan")
        if layers.size >= settings.topdown_min_layers and np.ptp(times) > 0:
            res = stats.spearmanr(layers, times)
            rho, p = float(res.statistic), float(res.pvalue)
        if np.isnan(rho):
            verdict = "undetermined"
        elif rho <= -settings.topdown_rho:
            verdict = "top-down"
        elif rho >= settings.topdown_rho:
            verdict = "bottom-up"
        else:
            verdict = "mixed"
        for k, v in (("task", task), ("scale", scale), ("n_layers", int(layers.size)),
                     ("n_seeds", int(g["n_seeds"].max())), ("rho", rho), ("p_value", p),
                     ("verdict", verdict), ("layers", " ".join(map(str, layers))),
                     ("collapse_steps", " ".join(str(int(t)) for t in times))):
            out[k].append(v)
    return pl.DataFrame(out, schema={
        "task": pl.String, "scale": pl.String, "n_layers": pl.Int64, "n_seeds": pl.Int64,
        "rho": pl.Float64, "p_value": pl.Float64, "verdict": pl.String, "layers": pl.String,
        "collapse_steps": pl.String})
