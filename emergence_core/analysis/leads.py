"""Onsets, leads and their classification for every (event, measure) (docs/methods.md §4).

Series. For each measure its headline series: the final (deepest) layer for per-layer
measures, the event's own task level where the measure is logged per level, else the
trial's pooled series (the expensive measures are computed on the mixed training data,
so every level's event is compared with one pooled series).

Onset, two rules. The change points of a series are the starts of its constant-mean
regimes on the smoothed series (``series.changepoints``). A series can have several
(collapse, recovery, one per level's event in a pooled series). For an event at step e
with tolerance tol (below):

- ``departure`` (the headline, docs/methods.md §4): the change point that opens the regime in
  which the measure stands at the event, i.e. the last change point at or before
  e + tol; if there is none, the first one after (the measure departs only after the event:
  lagging). Two kinds of change points are not candidates: those within the collapse (before
  the trial's final layer reaches its collapse floor, plus ``changepoint_min_size +
  smooth_window // 2`` probes, the collapse's own staircase; see ``measure_leads``) when the
  event comes after it (an event inside the collapse keeps them: the collapse is then the
  regime the measure departs in), and, in a series shared by several events (an expensive
  measure pooled over levels), those nearer to another event of the trial than to this one,
  which open that event's regime.
  A later unrelated change cannot move this onset.
- ``first`` (first change after the floor): the series' first change point past the
  collapse (``first_onset``: at least ``changepoint_min_size + smooth_window // 2`` probes
  after the trial's final layer reaches its floor), whatever the event. It does not look at
  the event, so on a gradual recovery, where departure lands on the last step of the
  staircase near the event, it reports when the measure first left its floor.
- ``nearest`` (variant): the change point nearest the event in probes of the event's own
  grid, ties to the earlier, over all change points. Symmetric, but a later unrelated
  change that happens to lie closer flips a precursor into lagging.

Lead = event step - onset step, per rule (``lead``/``class`` for departure, ``_first`` and
``_nearest`` suffixes for the others). Tolerance, stated per (measure, event) in the
``tolerance`` column and used alike in text, tables and figures: the wider of the probe
interval at the event (``interval``, the central spacing of the event series' probe steps
there) and the measure's own probe spacing there (``measure_spacing``), since a measure
probed every k-th step cannot place an onset finer than its grid (``measure_grid_tolerance``
False: the event's interval alone). Class: ``precursor`` when lead > tolerance,
``lagging`` when lead < -tolerance; within the band ``synchronous`` when the tolerance is the
event's own resolution, ``unresolved`` when it is wider (the measure's grid, not the data,
decides there); ``no_onset`` when the series has no candidate change point.

Same-grid control (``grid_control``): each cheap measure (probed on the event's grid) is
also read only at the steps of each coarse measure of the trial, segmented there and
classified with that grid's tolerance, so a coarse measure's verdict can be set beside what
the grid alone does to a measure known at full resolution.

Cross-correlation lag (``series.xcorr_lag``): between the measure's derivative and that of
the event's own behaviour series (accuracy for accuracy events, the normalised log-prob for
its variant), in probes of that series' grid; positive when the measure moves first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from emergence_core.analysis.frames import group_slices
from emergence_core.analysis.series import changepoints, local_spacing, smooth, xcorr_lag
from emergence_core.analysis.settings import AnalysisSettings

__all__ = ["RULES", "Leads", "classify", "departure_onset", "grid_control", "measure_leads",
           "nearest_onset"]

_KEY = ["trial", "measure", "level"]


@dataclass(frozen=True)
class Leads:
    """``leads``: one row per (event, measure), both onset rules; ``changepoints``: one row
    per change point; ``onsets``: one row per series, its first change point after the
    collapse (``first_onset``, see ``measure_leads``), the event-free onset used as a
    signal."""

    leads: pl.DataFrame
    changepoints: pl.DataFrame
    onsets: pl.DataFrame


def _series_cache(df: pl.DataFrame, window: int) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """(steps, smoothed values) of each (trial, measure, level) series of sorted ``df``."""
    steps, values = df["step"].to_numpy(), df["value"].to_numpy()
    return {k: (steps[a:b], smooth(values[a:b], window))
            for k, a, b in group_slices(df, _KEY)}


def tolerance_expr(measure_grid_tolerance: bool = True) -> pl.Expr:
    """The stated tolerance of a lead row (module docstring)."""
    return (pl.max_horizontal("interval", "measure_spacing") if measure_grid_tolerance
            else pl.col("interval"))


def _class_expr(onset: str, lead: str) -> pl.Expr:
    within = (pl.when(pl.col("tolerance") <= pl.col("interval") * (1 + 1e-9))
              .then(pl.lit("synchronous")).otherwise(pl.lit("unresolved")))
    return (pl.when(pl.col(onset).is_null()).then(pl.lit("no_onset"))
            .when(pl.col(lead) > pl.col("tolerance")).then(pl.lit("precursor"))
            .when(pl.col(lead) < -pl.col("tolerance")).then(pl.lit("lagging"))
            .otherwise(within))


# The onset rules: name -> (column suffix, onset column); departure is the headline.
RULES = {"departure": ("", "onset_step"), "first": ("_first", "onset_first"),
         "nearest": ("_nearest", "onset_nearest")}


def classify(leads: pl.DataFrame, measure_grid_tolerance: bool = True) -> pl.DataFrame:
    """Add ``tolerance``, and per rule (``RULES``) the lead, lead in intervals, lead in
    tolerances and class (departure: ``lead``, ``class``...; first: ``lead_first``,
    ``class_first``...; nearest: ``lead_nearest``, ``class_nearest``...), and
    ``rules_agree`` (departure and nearest class alike) and ``rules_agree_first``
    (departure and first), to raw onset rows (``onset_step``, ``onset_first``,
    ``onset_nearest``)."""
    out = leads.with_columns(tolerance_expr(measure_grid_tolerance).alias("tolerance"))
    for suffix, onset in RULES.values():
        lead = f"lead{suffix}"
        out = out.with_columns((pl.col("event_step") - pl.col(onset)).alias(lead)).with_columns(
            (pl.col(lead) / pl.col("interval")).alias(f"lead_intervals{suffix}"),
            (pl.col(lead) / pl.col("tolerance")).alias(f"lead_tolerances{suffix}"),
            _class_expr(onset, lead).alias(f"class{suffix}"))
    return out.with_columns(
        pl.col("class").eq_missing(pl.col("class_nearest")).alias("rules_agree"),
        pl.col("class").eq_missing(pl.col("class_first")).alias("rules_agree_first"))


def nearest_onset(found: np.ndarray, event: float, grid: np.ndarray) -> int | None:
    """The change point (step) nearest ``event`` in probes of ``grid``; ties to the earlier."""
    if found.size == 0:
        return None
    pos = np.interp(np.append(found, event), grid, np.arange(grid.size))
    return int(found[np.argmin(np.abs(pos[:-1] - pos[-1]))])


def departure_onset(found: np.ndarray, event: float, tolerance: float,
                    others: np.ndarray | None = None,
                    grid: np.ndarray | None = None) -> int | None:
    """The change point (step) opening the regime the measure is in at ``event``.

    ``found``: candidate change points (sorted steps); ``others``: steps of the other events
    sharing this series, whose nearer change points (in probes of ``grid``, the events'
    grid; steps without one) are theirs. The last candidate at or before
    ``event + tolerance``, else the first after it, else None.
    """
    cand = np.asarray(found, dtype=np.float64)
    if others is not None and len(others) and cand.size:
        def pos(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x, dtype=np.float64)
            return x if grid is None else np.interp(x, grid, np.arange(len(grid)))
        d_own = np.abs(pos(cand) - pos(np.array([event]))[0])
        d_other = np.min(np.abs(pos(cand)[:, None] - pos(others)[None, :]), axis=1)
        cand = cand[d_own <= d_other]
    if cand.size == 0:
        return None
    before = cand[cand <= event + tolerance]
    return int(before[-1]) if before.size else int(cand[0])


@dataclass
class _Segmented:
    """Per (trial, measure, level) series: steps, smoothed values, change-point steps."""

    smoothed: dict[tuple, tuple[np.ndarray, np.ndarray]]
    found: dict[tuple, np.ndarray]
    layer: dict[tuple, int | None]
    measures: dict[str, list[str]]  # trial -> its measures, in table order
    changepoints: pl.DataFrame
    onsets: pl.DataFrame


def _segment(series: pl.DataFrame, settings: AnalysisSettings,
             collapse_end: dict[str, int]) -> _Segmented:
    """Smooth and segment every headline series; note its first post-collapse change."""
    margin = settings.changepoint_min_size + settings.smooth_window // 2
    series = series.filter(pl.col("value").is_not_null()).sort([*_KEY, "step"], nulls_last=True)
    steps, values, layer_col = series["step"].to_numpy(), series["value"].to_numpy(), \
        series["layer"]
    seg = _Segmented({}, {}, {}, {}, pl.DataFrame(), pl.DataFrame())
    cp_cols: dict[str, list] = {k: [] for k in ("trial", "measure", "level", "layer", "step")}
    first: dict[str, list] = {k: [] for k in ("trial", "measure", "level", "first_onset")}
    for key, a, b in group_slices(series, _KEY):
        t = steps[a:b]
        smoothed = smooth(values[a:b], settings.smooth_window)
        idx = changepoints(values[a:b], window=settings.smooth_window,
                           penalty=settings.changepoint_penalty,
                           min_size=settings.changepoint_min_size,
                           max_changepoints=settings.max_changepoints,
                           noise_floor=settings.noise_floor, smoothed=smoothed)
        seg.smoothed[key], seg.found[key], seg.layer[key] = (t, smoothed), t[idx], layer_col[a]
        trial_measures = seg.measures.setdefault(key[0], [])
        if key[1] not in trial_measures:
            trial_measures.append(key[1])
        for k, v in zip(("trial", "measure", "level", "layer"), (*key, seg.layer[key]),
                        strict=True):
            cp_cols[k] += [v] * idx.size
        cp_cols["step"] += t[idx].tolist()
        end = collapse_end.get(key[0])
        later = idx[idx >= (0 if end is None else int(np.searchsorted(t, end)) + margin)]
        for k, v in zip(first, (*key, int(t[later[0]]) if later.size else None), strict=True):
            first[k].append(v)
    seg.changepoints = pl.DataFrame(cp_cols, schema={
        "trial": pl.String, "measure": pl.String, "level": pl.Int8, "layer": pl.Int16,
        "step": pl.Int64})
    seg.onsets = pl.DataFrame(first, schema={"trial": pl.String, "measure": pl.String,
                                             "level": pl.Int8, "first_onset": pl.Int64})
    return seg


def measure_leads(series: pl.DataFrame, behaviour: pl.DataFrame, details: pl.DataFrame,
                  settings: AnalysisSettings,
                  collapse_end: dict[str, int] | None = None, *, xcorr: bool = True) -> Leads:
    """Onset, lead, class and cross-correlation lag of every measure for every event.

    ``series``: headline rows (trial, measure, level, layer, step, value) of the measures
    analysed; ``behaviour``: ``events.behaviour_rows``; ``details``: ``events.event_details``.
    ``collapse_end``: trial -> the step at which its final layer reaches its collapse floor.
    A series' ``first_onset`` is its first change point at least ``changepoint_min_size +
    smooth_window // 2`` probes after that step: closer ones are the collapse's own end,
    which segmentation locates only to within a segment's minimum length and smoothing to
    within half a window (a linear fall into the floor is cut into a staircase whose last
    step lands just past the floor). Without a collapse step, the first change point.
    ``xcorr`` False skips the cross-correlation lags (null), which the same-grid control
    does not report.
    """
    seg = _segment(series, settings, collapse_end or {})
    first_of = {(t, m, lv): f for t, m, lv, f in seg.onsets.rows()}
    behaviour_cache = _series_cache(
        behaviour.filter(pl.col("value").is_not_null()), settings.smooth_window)
    cols: dict[str, list] = {k: [] for k in (
        "event", "trial", "level", "measure", "layer", "series_level", "event_step",
        "interval", "onset_step", "onset_first", "onset_nearest", "measure_spacing",
        "n_changepoints",
        "xcorr_lag", "xcorr_lag_steps", "xcorr_r")}
    emerged = details.filter(pl.col("step").is_not_null())
    # departure candidates start past the collapse, the margin counted in probes of the
    # trial's accuracy grid (a coarse measure's own probes would stretch it tenfold)
    margin = settings.changepoint_min_size + settings.smooth_window // 2
    cut: dict[str, float] = {}
    for (trial, measure, _lv), (g, _) in behaviour_cache.items():
        end = (collapse_end or {}).get(trial)
        if measure == "accuracy" and end is not None and trial not in cut:
            cut[trial] = float(g[min(int(np.searchsorted(g, end)) + margin, g.size - 1)])
    shared: dict[tuple, list[int]] = {}  # (trial, event measure) -> its event steps
    for event, trial, e in emerged.select("measure", "trial", "step").rows():
        shared.setdefault((trial, event), []).append(e)
    for event, trial, level, e, interval in emerged.select(
            "measure", "trial", "level", "step", "interval").rows():
        acc = behaviour_cache.get((trial, event, level))
        for measure in seg.measures.get(trial, []):
            key = (trial, measure, level)
            if key not in seg.found:
                key = (trial, measure, None)
                if key not in seg.found:
                    continue
            found = seg.found[key]
            m_steps, m_smooth = seg.smoothed[key]
            spacing = local_spacing(m_steps, e)
            tol = max(interval, spacing) if settings.measure_grid_tolerance else interval
            others = None
            if key[2] is None and level is not None:  # one series shared by every level
                steps_all = shared[(trial, event)]
                others = np.array([s for s in steps_all if s != e])
            grid = acc[0] if acc is not None else m_steps
            # an event inside the collapse departs from the regime before it: keep them all
            start = cut.get(trial, -np.inf)
            onset = departure_onset(found[found >= start] if e > start else found, e, tol,
                                    others, grid)
            nearest = nearest_onset(found, e, grid)
            lag = None if acc is None or not xcorr else xcorr_lag(
                acc[0], acc[1], m_steps, m_smooth, e, max_lag=settings.xcorr_max_lag,
                window=settings.xcorr_window)
            row = (event, trial, level, measure, seg.layer[key], key[2], e, interval, onset,
                   first_of.get(key), nearest, spacing, int(found.size),
                   *(lag if lag is not None else (None, None, None)))
            for k, v in zip(cols, row, strict=True):
                cols[k].append(v)
    leads = pl.DataFrame(cols, schema={
        "event": pl.String, "trial": pl.String, "level": pl.Int8, "measure": pl.String,
        "layer": pl.Int16, "series_level": pl.Int8, "event_step": pl.Int64,
        "interval": pl.Float64, "onset_step": pl.Int64, "onset_first": pl.Int64,
        "onset_nearest": pl.Int64,
        "measure_spacing": pl.Float64, "n_changepoints": pl.Int64, "xcorr_lag": pl.Int64,
        "xcorr_lag_steps": pl.Int64, "xcorr_r": pl.Float64})
    return Leads(classify(leads, settings.measure_grid_tolerance), seg.changepoints, seg.onsets)


_CLASS_ORDER = ("precursor", "synchronous", "unresolved", "lagging", "no_onset")


def grid_control(series: pl.DataFrame, behaviour: pl.DataFrame, details: pl.DataFrame,
                 leads: pl.DataFrame, settings: AnalysisSettings,
                 collapse_end: dict[str, int] | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The same-grid control (module docstring): (per-event rows, summary).

    A measure is *coarse* in a trial when it has fewer than 2/3 as many probe steps as the
    trial's accuracy series, *cheap* when it has at least 9/10 as many. Each cheap series is
    cut to the steps of each coarse one and run through ``measure_leads`` (same settings,
    same events). Rows: the control's lead rows with ``grid`` (the coarse measure) and
    ``class_full`` (the cheap measure's class on its own grid). Summary, per (event, grid,
    measure): ``n`` and, for each class, ``<class>_k`` on that grid; for cheap measures also
    ``full_<class>_k`` on their own grid; the coarse measure itself is listed with
    ``measure == grid``.
    """
    empty = pl.DataFrame(), pl.DataFrame()
    if series.height == 0 or details.height == 0:
        return empty
    acc_n = (behaviour.filter(pl.col("measure") == "accuracy").group_by("trial", "level")
             .agg(pl.col("step").n_unique().alias("n")).group_by("trial")
             .agg(pl.col("n").max().alias("acc_n")))
    sizes = (series.group_by("trial", "measure", "level").agg(pl.col("step").n_unique()
                                                             .alias("n"))
             .group_by("trial", "measure").agg(pl.col("n").max())
             .join(acc_n, on="trial", how="inner"))
    coarse = sizes.filter(pl.col("n") < pl.col("acc_n") * 2 / 3).select("trial", "measure")
    cheap = sizes.filter(pl.col("n") >= pl.col("acc_n") * 0.9).select("trial", "measure")
    parts = []
    for trial, grid in coarse.rows():
        steps = series.filter((pl.col("trial") == trial) & (pl.col("measure") == grid))["step"]
        for (c,) in cheap.filter(pl.col("trial") == trial).select("measure").rows():
            parts.append(series.filter((pl.col("trial") == trial) & (pl.col("measure") == c)
                                       & pl.col("step").is_in(steps.unique().implode()))
                         .with_columns(pl.lit(f"{c}\x1f{grid}").alias("measure")))
    if not parts:
        return empty
    ctrl = measure_leads(pl.concat(parts), behaviour, details, settings, collapse_end,
                         xcorr=False).leads
    parts_col = pl.col("measure").str.split("\x1f")
    ctrl = ctrl.with_columns(parts_col.list.get(1).alias("grid"),
                             parts_col.list.get(0).alias("measure"))
    full = leads.select("event", "trial", "level", "measure", pl.col("class").alias("class_full"))
    ctrl = ctrl.join(full, on=["event", "trial", "level", "measure"], how="left",
                     nulls_equal=True)
    counts = [(pl.col("class") == c).sum().alias(f"{c}_k") for c in _CLASS_ORDER]
    on_grid = ctrl.group_by("event", "grid", "measure").agg(
        pl.len().alias("n"), *counts,
        *[(pl.col("class_full") == c).sum().alias(f"full_{c}_k") for c in _CLASS_ORDER])
    own = (leads.join(coarse.rename({"measure": "grid"}), left_on=["trial", "measure"],
                      right_on=["trial", "grid"], how="semi")
           .with_columns(pl.col("measure").alias("grid"))
           .group_by("event", "grid", "measure").agg(pl.len().alias("n"), *counts))
    summary = pl.concat([own, on_grid], how="diagonal_relaxed").sort(
        ["event", "grid", pl.col("measure") != pl.col("grid"), "measure"])
    return ctrl, summary
