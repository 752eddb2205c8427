"""Emergence events over the metrics table, and the difficulty classes they define.

The rule is ``emergence.emergence_step`` (SPEC section 4), evaluated here for every
``(trial, level)`` at once with polars window expressions instead of a loop over series;
``tests/test_analysis_events.py`` checks both agree.

Normalised log-prob. ``logprob`` is the mean log-prob of the whole correct answer, a
negative number whose scale grows with answer length and vocabulary. The variant uses

    logprob_norm(t) = 1 - logprob(t) / logprob(t0),

with ``t0`` the first probe step of that (trial, level): 0 at the first probe, 1 when the
answer has probability 1, 0.5 when its log-prob has halved (each answer token's
probability is then, on average, the square root of what it was). It is anchored at the
start of training and at perfection, uses no later value (a run that never learns never
crosses 0.5), and is undefined (null) when ``logprob(t0) >= 0``. If a run's first logged
probe is late, the anchor moves with it.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from emergence_core.analysis.frames import prefer_levels, unit_expr
from emergence_core.analysis.settings import LOGPROB_NORM, AnalysisSettings
from emergence_core.metrics import EVENTS_SCHEMA, Measure

__all__ = [
    "behaviour_rows",
    "difficulty_classes",
    "emergence_events",
    "event_details",
    "events_to_arrow",
    "normalised_logprob",
]

_SERIES = ["trial", "measure", "level"]
_META = ["sweep", "task", "scale", "seed", "source"]


def normalised_logprob(rows: pl.DataFrame) -> pl.DataFrame:
    """``logprob`` rows (sorted by step within trial and level) as ``logprob_norm`` rows."""
    lp = rows.filter((pl.col("measure") == Measure.LOGPROB) & pl.col("value").is_not_null())
    first = pl.col("value").sort_by("step").first().over(["trial", "level"])
    return lp.with_columns(
        pl.when(first < 0).then(1.0 - pl.col("value") / first).otherwise(None).alias("value"),
        pl.lit(LOGPROB_NORM).alias("measure"),
    )


def behaviour_rows(lf: pl.LazyFrame) -> pl.DataFrame:
    """Accuracy, log-prob and normalised log-prob rows, per level where a trial has levels.

    Sorted by (trial, measure, level, step), the order the event rule needs.
    """
    rows = (lf.filter(pl.col("measure").is_in([Measure.ACCURACY, Measure.LOGPROB]))
            .drop("layer").collect())
    rows = prefer_levels(rows)
    return (pl.concat([rows, normalised_logprob(rows)])
            .sort([*_SERIES, "step"], nulls_last=True))


def event_details(behaviour: pl.DataFrame, settings: AnalysisSettings) -> pl.DataFrame:
    """One row per (trial, level, event measure): the event step and the grid around it.

    Beyond EVENTS_SCHEMA: ``interval`` (the probe interval at the event, the central
    spacing of that series' probe steps there), ``n_probes`` and ``last_step``.
    """
    w = settings.persistence + 1
    df = behaviour.filter(pl.col("measure").is_in(list(settings.event_measures)))
    ok = (pl.col("value") >= settings.threshold).fill_null(False).cast(pl.Int32)
    prev, nxt = pl.col("step").shift(1), pl.col("step").shift(-1)
    df = df.with_columns(
        # run[i] = number of values >= threshold among probes i .. i + persistence
        ok.rolling_sum(w).shift(-(w - 1)).over(_SERIES).alias("_run"),
        pl.when(prev.is_null() & nxt.is_null()).then(None)
        .when(prev.is_null()).then(nxt - pl.col("step"))
        .when(nxt.is_null()).then(pl.col("step") - prev)
        .otherwise((nxt - prev) / 2.0).over(_SERIES).cast(pl.Float64).alias("interval"),
    )
    hit = pl.col("_run") == w
    return (df.group_by(_SERIES, maintain_order=True).agg(
        *[pl.col(c).first() for c in _META],
        pl.col("step").filter(hit).first().alias("step"),
        pl.col("interval").filter(hit).first().alias("interval"),
        pl.len().alias("n_probes"),
        pl.col("step").max().alias("last_step"),
    ).with_columns(pl.lit(settings.threshold, pl.Float64).alias("threshold"),
                   pl.lit(settings.persistence, pl.Int32).alias("persistence")))


def to_events_schema(details: pl.DataFrame) -> pl.DataFrame:
    """The EVENTS_SCHEMA columns of ``event_details``, in order and with its types."""
    schema = pl.from_arrow(EVENTS_SCHEMA.empty_table()).schema  # type: ignore[union-attr]
    return details.select([pl.col(n).cast(t) for n, t in schema.items()])


def emergence_events(behaviour: pl.DataFrame, settings: AnalysisSettings) -> pl.DataFrame:
    """The events table (EVENTS_SCHEMA): one row per (trial, level, event measure).

    ``step`` is null where the rule never holds within the run.
    """
    return to_events_schema(event_details(behaviour, settings))


def events_to_arrow(events: pl.DataFrame) -> pa.Table:
    """The events table as Arrow with exactly EVENTS_SCHEMA (nullability and metadata)."""
    return to_events_schema(events).to_arrow().cast(EVENTS_SCHEMA)


def difficulty_classes(events: pl.DataFrame, settings: AnalysisSettings) -> pl.DataFrame:
    """Difficulty class of each task level at each scale (SPEC section 4).

    A task level's emergence step at a scale is the median over seeds of its accuracy event
    step, a never-emerging seed counting as +inf (it is later than any event). The level
    is ``hard`` when that step is above the median over all task levels at that scale,
    else ``easy``; ``settings.hard`` (``"TASK"`` or ``"TASK:LEVEL"``) overrides the rule.
    """
    acc = events.filter(pl.col("measure") == Measure.ACCURACY).with_columns(unit_expr())
    per_unit = acc.group_by(["task", "level", "unit", "scale"]).agg(
        pl.col("step").cast(pl.Float64).fill_null(float("inf")).median().alias("emergence_step"),
        pl.len().alias("n_seeds"),
        pl.col("step").is_not_null().sum().alias("n_emerged"),
    ).with_columns(pl.col("emergence_step").median().over("scale").alias("scale_median"))
    if settings.hard is None:
        hard = pl.col("emergence_step") > pl.col("scale_median")
    else:
        hard = pl.col("unit").is_in(list(settings.hard)) | pl.col("task").is_in(list(settings.hard))
    return (per_unit.with_columns(pl.when(hard).then(pl.lit("hard")).otherwise(pl.lit("easy"))
                                  .alias("difficulty"))
            .sort(["scale", "task", "level"], nulls_last=True))
