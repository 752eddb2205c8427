"""Onsets, leads and their classification for every (event, measure) (SPEC section 4).

Series. For each measure its headline series: the final (deepest) layer for per-layer
measures, the event's own task level where the measure is logged per level, else the
trial's pooled series (the expensive measures are computed on the mixed training data,
so every level's event is compared with one pooled series).

Onset. The change points of a series are the starts of its constant-mean regimes on the
smoothed series (``series.changepoints``). A series can have several (collapse, recovery,
one per level's event in a pooled series); the onset *for an event* is the change point
nearest to the event step (ties to the earlier). Nearest, rather than the last one before
the event, keeps the test symmetric: change points unrelated to the event fall before and
after it alike, so a measure is not called a precursor merely for having changed earlier.
A constant-mean boundary sits at the middle of a gradual transition, as the 0.5 threshold
crossing sits in accuracy's, so a measure that moves in lockstep with accuracy is
synchronous rather than an artefactual precursor.

Lead = event step - onset step. Tolerance = the probe interval at the event (central
spacing of accuracy's probe steps there); with ``measure_grid_tolerance`` the wider of that
and the measure's own spacing at the event, since a measure probed every k-th step cannot
place an onset finer than its grid. Class: ``precursor`` when lead > tolerance,
``lagging`` when lead < -tolerance, ``synchronous`` otherwise, ``no_onset`` when the series
has no change point.

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

__all__ = ["Leads", "classify", "measure_leads"]

_KEY = ["trial", "measure", "level"]


@dataclass(frozen=True)
class Leads:
    """``leads``: one row per (event, measure); ``changepoints``: one row per change point;
    ``onsets``: one row per series, its first change point after the collapse
    (``first_onset``, see ``measure_leads``), the event-free onset used as a signal."""

    leads: pl.DataFrame
    changepoints: pl.DataFrame
    onsets: pl.DataFrame


def _series_cache(df: pl.DataFrame, window: int) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """(steps, smoothed values) of each (trial, measure, level) series of sorted ``df``."""
    steps, values = df["step"].to_numpy(), df["value"].to_numpy()
    return {k: (steps[a:b], smooth(values[a:b], window))
            for k, a, b in group_slices(df, _KEY)}


def classify(leads: pl.DataFrame, measure_grid_tolerance: bool = True) -> pl.DataFrame:
    """Add ``tolerance``, ``lead``, ``lead_intervals`` and ``class`` to raw onset rows."""
    tol = (pl.max_horizontal("interval", "measure_spacing") if measure_grid_tolerance
           else pl.col("interval"))
    lead = pl.col("lead")
    return leads.with_columns(tol.alias("tolerance"),
                              (pl.col("event_step") - pl.col("onset_step")).alias("lead")
                              ).with_columns(
        (lead / pl.col("interval")).alias("lead_intervals"),
        pl.when(pl.col("onset_step").is_null()).then(pl.lit("no_onset"))
        .when(lead > pl.col("tolerance")).then(pl.lit("precursor"))
        .when(lead < -pl.col("tolerance")).then(pl.lit("lagging"))
        .otherwise(pl.lit("synchronous")).alias("class"))


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
                  collapse_end: dict[str, int] | None = None) -> Leads:
    """Onset, lead, class and cross-correlation lag of every measure for every event.

    ``series``: headline rows (trial, measure, level, layer, step, value) of the measures
    analysed; ``behaviour``: ``events.behaviour_rows``; ``details``: ``events.event_details``.
    ``collapse_end``: trial -> the step at which its final layer reaches its collapse floor.
    A series' ``first_onset`` is its first change point at least ``changepoint_min_size +
    smooth_window // 2`` probes after that step: closer ones are the collapse's own end,
    which segmentation locates only to within a segment's minimum length and smoothing to
    within half a window (a linear fall into the floor is cut into a staircase whose last
    step lands just past the floor). Without a collapse step, the first change point.
    """
    seg = _segment(series, settings, collapse_end or {})
    behaviour_cache = _series_cache(
        behaviour.filter(pl.col("value").is_not_null()), settings.smooth_window)
    cols: dict[str, list] = {k: [] for k in (
        "event", "trial", "level", "measure", "layer", "series_level", "event_step",
        "interval", "onset_step", "measure_spacing", "n_changepoints", "xcorr_lag",
        "xcorr_lag_steps", "xcorr_r")}
    emerged = details.filter(pl.col("step").is_not_null())
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
            onset = None
            if found.size:
                # distance in probes of the event's own grid; argmin: ties to the earlier
                grid = acc[0] if acc is not None else m_steps
                pos = np.interp(np.append(found, e), grid, np.arange(grid.size))
                onset = int(found[np.argmin(np.abs(pos[:-1] - pos[-1]))])
            lag = None if acc is None else xcorr_lag(
                acc[0], acc[1], m_steps, m_smooth, e, max_lag=settings.xcorr_max_lag,
                window=settings.xcorr_window)
            row = (event, trial, level, measure, seg.layer[key], key[2], e, interval, onset,
                   local_spacing(m_steps, e), int(found.size),
                   *(lag if lag is not None else (None, None, None)))
            for k, v in zip(cols, row, strict=True):
                cols[k].append(v)
    leads = pl.DataFrame(cols, schema={
        "event": pl.String, "trial": pl.String, "level": pl.Int8, "measure": pl.String,
        "layer": pl.Int16, "series_level": pl.Int8, "event_step": pl.Int64,
        "interval": pl.Float64, "onset_step": pl.Int64, "measure_spacing": pl.Float64,
        "n_changepoints": pl.Int64, "xcorr_lag": pl.Int64, "xcorr_lag_steps": pl.Int64,
        "xcorr_r": pl.Float64})
    return Leads(classify(leads, settings.measure_grid_tolerance), seg.changepoints, seg.onsets)
