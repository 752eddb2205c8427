"""Representation collapse: floors, their spread across scales, collapse order of layers.

docs/methods.md §4. The series is the collapse measure (RankMe at SEP by default) of each task
level (the headline: pooling the levels adds rank between them, MOD s0's pooled minimum
7.8 against per-level 20 to 24) or pooled over levels (a variant, ``pooled=True``); the
final layer's floor is "the" floor of a trial level, and every layer gets a collapse time
for the top-down test. A trial without per-level rows (Pythia) uses its pooled rows in
both. The definitions of the early part, recovery and "reaching" the floor are in
``series.collapse_floor``.

Only layers that collapse vote in the top-down test (``voting``): constant layers (no
variance at the read position: the embedding output at SEP within a level), layers whose
drop is shallower than ``topdown_min_depth``, and the embedding itself are left out and
counted (``n_constant``, ``n_shallow``, ``n_embedding``); each verdict states how many
layers it rests on (``n_layers``) and needs ``topdown_min_layers`` of them.

Intervals: the share of top-down (task, scale) combinations and each task level's floor CV
get a percentile bootstrap over seeds (all trials of a resampled seed together): the share
with at least ``bootstrap_min_seeds`` seeds (fewer, or every resample the same share: a
Wilson interval), the CV with two or more (with one seed, none; ``ci_method`` says which).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats

from emergence_core.analysis.frames import group_slices
from emergence_core.analysis.rates import DEGENERATE, wilson
from emergence_core.analysis.series import collapse_floor
from emergence_core.analysis.settings import AnalysisSettings

__all__ = [
    "collapse_table",
    "floor_spread",
    "floor_summary",
    "scope_rows",
    "topdown",
    "topdown_share",
    "trial_floors",
    "voting",
]

_TRIAL_META = ["trial", "task", "scale", "seed", "source"]


def collapse_table(rows: pl.DataFrame, settings: AnalysisSettings) -> pl.DataFrame:
    """Floor of every (trial, measure, level, layer) series in ``rows`` (collapse-family rows).

    Columns: trial meta, measure, level, layer, ``is_final`` (the trial's deepest layer of
    that measure), initial, floor, depth (``1 - floor / initial``), floor_step,
    collapse_step, recovery_step, degenerate, n_probes. Series with fewer than 2 finite
    values are skipped.
    """
    keys = ["trial", "measure", "level", "layer"]
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
        "trial": pl.String, "measure": pl.String, "level": pl.Int8, "layer": pl.Int16,
        "initial": pl.Float64, "floor": pl.Float64, "depth": pl.Float64,
        "floor_step": pl.Int64, "collapse_step": pl.Int64, "recovery_step": pl.Int64,
        "degenerate": pl.Boolean, "n_probes": pl.Int64})
    meta = rows.select(_TRIAL_META).unique("trial")
    return (table.join(meta, on="trial", how="left")
            .with_columns((pl.col("layer") == pl.col("layer").max().over("trial", "measure"))
                          .fill_null(True).alias("is_final"))
            .select([*_TRIAL_META, "measure", "level", "layer", "is_final", *list(out)[4:]]))


def scope_rows(collapse: pl.DataFrame, pooled: bool = False) -> pl.DataFrame:
    """The rows of one scope: per level (each trial's per-level rows where it has any, else
    its pooled rows) or, with ``pooled``, the pooled (null-level) rows."""
    if pooled:
        return collapse.filter(pl.col("level").is_null())
    has = pl.col("level").is_not_null().any().over("trial")
    return collapse.filter(pl.col("level").is_not_null() | ~has)


def trial_floors(collapse: pl.DataFrame, pooled: bool = False) -> pl.DataFrame:
    """The floor of each trial level (final layer); with ``pooled``, of each trial."""
    return (scope_rows(collapse, pooled).filter(pl.col("is_final")).drop("is_final")
            .sort(["task", "scale", "seed", "level"], nulls_last=True))


def floor_summary(floors: pl.DataFrame, scales: pl.DataFrame) -> pl.DataFrame:
    """Floors per (task, level, scale): median over seeds, with min, max and the seed count.

    ``scales`` (scale, n_layers) orders scales by depth, so Pythia's model names sort by size.
    """
    return (floors.group_by(["task", "level", "scale"]).agg(
        pl.col("floor").median().alias("floor"), pl.col("floor").min().alias("floor_min"),
        pl.col("floor").max().alias("floor_max"), pl.col("depth").median().alias("depth"),
        pl.col("floor_step").median().alias("floor_step"), pl.len().alias("n_seeds"))
        .join(scales, on="scale", how="left")
        .sort(["task", "level", "n_layers", "scale"], nulls_last=True))


def floor_spread(summary: pl.DataFrame, floors: pl.DataFrame | None = None,
                 settings: AnalysisSettings | None = None) -> pl.DataFrame:
    """Scale invariance of each task level's floor: spread of its per-scale floors.

    ``cv`` = population standard deviation / mean over the scales the task level was run at
    (the spread of these floors, not an estimate for unseen scales); ``max_min_ratio`` =
    largest / smallest floor (null when the smallest is 0). Both are null for fewer than 2
    scales. With ``floors`` (per seed) holding two or more seeds, ``cv_lo``/``cv_hi`` are
    a percentile bootstrap over seeds of the CV of per-scale median floors.
    """
    enough = pl.len() >= 2
    out = summary.group_by("task", "level").agg(
        pl.len().alias("n_scales"),
        pl.col("floor").mean().alias("mean_floor"),
        pl.when(enough).then(pl.col("floor").std(ddof=0) / pl.col("floor").mean())
        .alias("cv"),
        pl.when(enough & (pl.col("floor").min() > 0))
        .then(pl.col("floor").max() / pl.col("floor").min()).alias("max_min_ratio"),
    ).sort("task", "level", nulls_last=True)
    lo, hi, method = [], [], []
    settings = settings or AnalysisSettings()
    for task, level in out.select("task", "level").rows():
        f = (floors.filter((pl.col("task") == task) & pl.col("level").eq_missing(level))
             if floors is not None else pl.DataFrame())
        seeds = sorted(set(f["seed"].to_list())) if f.height else []
        if len(seeds) < 2:
            lo.append(None)
            hi.append(None)
            method.append("none (one seed)")
            continue
        grid = f.pivot("scale", index="seed", values="floor", aggregate_function="median")
        m = grid.drop("seed").to_numpy()  # [seeds, scales], NaN where a seed lacks a scale
        rng = np.random.default_rng(settings.bootstrap_seed)
        idx = rng.integers(0, m.shape[0], size=(settings.n_bootstrap, m.shape[0]))
        med = np.nanmedian(m[idx], axis=1)  # [resamples, scales]: per-scale median floors
        with np.errstate(invalid="ignore", divide="ignore"):
            cvs = med.std(axis=1) / med.mean(axis=1)
        cvs = cvs[np.isfinite(cvs)]
        alpha = (1 - settings.ci_level) / 2
        q = np.quantile(cvs, [alpha, 1 - alpha]) if cvs.size else [None, None]
        lo.append(None if q[0] is None else float(q[0]))
        hi.append(None if q[1] is None else float(q[1]))
        method.append("seed bootstrap")
    return out.with_columns(pl.Series("cv_lo", lo, pl.Float64), pl.Series("cv_hi", hi, pl.Float64),
                            pl.Series("ci_method", method, pl.String))


def _layer_times(collapse: pl.DataFrame, pooled: bool,
                 seeds: list | None = None) -> pl.DataFrame:
    """Per (task, scale, layer): median collapse step and median drop depth over seeds and
    levels of the scope's non-constant series, the seeds counted, and whether every series
    was constant."""
    rows = scope_rows(collapse, pooled)
    if seeds is not None:  # a bootstrap resample: seeds drawn with replacement
        pick = pl.DataFrame({"seed": seeds, "_draw": range(len(seeds))},
                            schema={"seed": pl.Int64, "_draw": pl.Int64})
        rows = rows.join(pick, on="seed", how="inner")
    live = ~pl.col("degenerate")
    return (rows.group_by(["task", "scale", "layer"]).agg(
        pl.col("collapse_step").filter(live).median().alias("collapse_step"),
        pl.col("depth").filter(live).median().alias("depth"),
        pl.col("seed").filter(live).n_unique().alias("n_seeds"),
        pl.col("degenerate").all().alias("constant"))
        .sort(["task", "scale", "layer"]))


def voting(layers: np.ndarray, depths: np.ndarray, settings: AnalysisSettings) -> np.ndarray:
    """Which non-constant layers vote in the top-down test: those that collapse (median drop
    depth ``1 - floor / initial`` at least ``topdown_min_depth``; a flat layer's "collapse
    time" is wherever its noise dips lowest) and, unless ``topdown_embedding``, not layer 0
    (the embedding output: at SEP one vector per task level, elsewhere a lookup of the token,
    so its geometry is the embedding table's, not a layer's computation)."""
    depths = np.nan_to_num(np.asarray(depths, dtype=np.float64), nan=-np.inf)
    ok = depths >= settings.topdown_min_depth
    if not settings.topdown_embedding:
        ok &= np.asarray(layers) != 0
    return ok


def _verdict(layers: np.ndarray, times: np.ndarray, settings: AnalysisSettings
             ) -> tuple[float, float, str]:
    """(rho, p, verdict) over the voting layers given."""
    rho = p = float("nan")
    if layers.size >= settings.topdown_min_layers and np.ptp(times) > 0:
        res = stats.spearmanr(layers, times)
        rho, p = float(res.statistic), float(res.pvalue)
    if np.isnan(rho):
        return rho, p, "undetermined"
    if rho <= -settings.topdown_rho:
        return rho, p, "top-down"
    if rho >= settings.topdown_rho:
        return rho, p, "bottom-up"
    return rho, p, "mixed"


def topdown(collapse: pl.DataFrame, settings: AnalysisSettings,
            pooled: bool = False) -> pl.DataFrame:
    """The top-down test per (task, scale) (docs/methods.md §4).

    Collapse time of a layer = median over seeds and task levels of its collapse step
    (per-level series; pooled series with ``pooled``), constant series left out; its drop
    depth the median of their ``1 - floor / initial``. Only voting layers (``voting``) enter:
    ``n_layers`` of them; the rest are counted as ``n_constant`` (every series constant),
    ``n_shallow`` (drop shallower than ``topdown_min_depth``) and ``n_embedding`` (layer 0).
    ``rho`` = Spearman correlation between layer index and collapse time over the voting
    layers; ``verdict`` is ``top-down`` when ``rho <= -topdown_rho`` (deeper layers
    collapse first), ``bottom-up`` when ``rho >= topdown_rho``, ``mixed`` in between, and
    ``undetermined`` with fewer than ``topdown_min_layers`` voting layers or all times tied.
    """
    per_layer = _layer_times(collapse, pooled)
    out: dict[str, list] = {k: [] for k in (
        "task", "scale", "n_layers", "n_constant", "n_shallow", "n_embedding", "n_seeds",
        "rho", "p_value", "verdict", "layers", "collapse_steps", "depths")}
    for (task, scale), a, b in group_slices(per_layer, ["task", "scale"]):
        g = per_layer[a:b]
        live = g.filter(~pl.col("constant") & pl.col("collapse_step").is_not_null())
        layers, depths = live["layer"].to_numpy(), live["depth"].to_numpy()
        shallow = ~(np.nan_to_num(depths, nan=-np.inf) >= settings.topdown_min_depth)
        vote = voting(layers, depths, settings)
        times = live["collapse_step"].to_numpy()[vote]
        rho, p, verdict = _verdict(layers[vote], times, settings)
        for k, v in (("task", task), ("scale", scale), ("n_layers", int(vote.sum())),
                     ("n_constant", int(g["constant"].sum())),
                     ("n_shallow", int(shallow.sum())),
                     ("n_embedding", int(((layers == 0) & ~shallow & ~vote).sum())),
                     ("n_seeds", int(g["n_seeds"].max())), ("rho", rho), ("p_value", p),
                     ("verdict", verdict), ("layers", " ".join(map(str, layers[vote]))),
                     ("collapse_steps", " ".join(str(int(t)) for t in times)),
                     ("depths", " ".join(f"{d:.3f}" for d in depths[vote]))):
            out[k].append(v)
    return pl.DataFrame(out, schema={
        "task": pl.String, "scale": pl.String, "n_layers": pl.Int64, "n_constant": pl.Int64,
        "n_shallow": pl.Int64, "n_embedding": pl.Int64, "n_seeds": pl.Int64,
        "rho": pl.Float64, "p_value": pl.Float64, "verdict": pl.String, "layers": pl.String,
        "collapse_steps": pl.String, "depths": pl.String})


def topdown_share(collapse: pl.DataFrame, table: pl.DataFrame, settings: AnalysisSettings,
                  pooled: bool = False) -> dict:
    """k/n top-down among the (task, scale) combinations of ``table`` (``topdown``'s) that
    have a verdict (``n_undetermined`` counts the rest), with an interval: seeds resampled
    (``n_bootstrap`` times, voting and verdicts recomputed) when the collapse table holds
    at least ``bootstrap_min_seeds`` seeds, else (and where every resample gives the same
    share) Wilson over the combinations."""
    undetermined = int((table["verdict"] == "undetermined").sum()) if table.height else 0
    k, n = int((table["verdict"] == "top-down").sum()), table.height - undetermined
    seeds = sorted(set(collapse["seed"].to_list())) if collapse.height else []
    base = {"k": k, "n": n, "n_undetermined": undetermined}
    if n == 0:
        why = "none (no verdict)" if table.height else "none (no combinations)"
        return base | {"lo": None, "hi": None, "ci_method": why}
    if len(seeds) < settings.bootstrap_min_seeds:
        lo, hi = wilson(k, n, settings.ci_level)
        return base | {"lo": lo, "hi": hi, "ci_method": "wilson"}
    # per (task, scale): the live series' layer, seed index, collapse step and depth
    rows = scope_rows(collapse, pooled).filter(~pl.col("degenerate")
                                               & pl.col("collapse_step").is_not_null())
    seed_ix = {sd: i for i, sd in enumerate(seeds)}
    combos = [(g["layer"].to_numpy(), np.array([seed_ix[x] for x in g["seed"].to_list()]),
               g["collapse_step"].to_numpy().astype(np.float64),
               g["depth"].to_numpy().astype(np.float64))
              for _, g in rows.group_by(["task", "scale"])]

    def share(counts: np.ndarray) -> float:
        hits = determined = 0
        for layer, seed, step, depth in combos:
            w = counts[seed]  # a seed drawn twice counts twice, one not drawn not at all
            layers = np.unique(layer[w > 0])
            at = [layer == lv for lv in layers]
            times = np.array([np.median(np.repeat(step[m], w[m])) for m in at])
            depths = np.array([np.median(np.repeat(depth[m], w[m])) for m in at])
            vote = voting(layers, depths, settings)
            verdict = _verdict(layers[vote], times[vote], settings)[2]
            hits += verdict == "top-down"
            determined += verdict != "undetermined"
        return hits / determined if determined else float("nan")

    rng = np.random.default_rng(settings.bootstrap_seed)
    seen: dict[tuple, float] = {}  # few seeds give few distinct resamples: refit each once
    shares = []
    for _ in range(settings.n_bootstrap):
        counts = np.bincount(rng.integers(0, len(seeds), len(seeds)), minlength=len(seeds))
        key = tuple(counts.tolist())
        if key not in seen:
            seen[key] = share(counts)
        shares.append(seen[key])
    shares = np.asarray(shares)
    shares = shares[np.isfinite(shares)]
    alpha = (1 - settings.ci_level) / 2
    lo, hi = np.quantile(shares, [alpha, 1 - alpha])
    if not hi > lo:  # every resample the same share: the seeds agree
        lo, hi = wilson(k, n, settings.ci_level)
        return base | {"lo": lo, "hi": hi, "ci_method": DEGENERATE}
    return base | {"lo": float(lo), "hi": float(hi), "ci_method": "seed bootstrap"}
