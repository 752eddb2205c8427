"""Emergence events over the metrics table, and the difficulty classes they define.

The rule is ``emergence.emergence_step`` (docs/methods.md §4), evaluated here for every
``(trial, level)`` at once with polars window expressions instead of a loop over series;
``tests/test_analysis_events.py`` checks both agree.

Chance correction. The accuracy rule reads ``(accuracy - chance) / (1 - chance)``, with
``chance`` the level's ``chance`` row (the best constant answer's accuracy on its
diagnostic set, logged once by the trial; 0.5 for Pythia's pair-scored sets). A trial
without chance rows (written before they existed) is read raw, chance 0, and the report
says so under "What is missing". The same correction runs in the trial's own tracker.

Normalised log-prob. ``logprob`` is the mean log-prob of the whole correct answer, a
negative number whose scale grows with answer length and vocabulary. The variant uses

    logprob_norm(t) = 1 - logprob(t) / logprob_chance,

with ``logprob_chance`` the level's log-prob under the best prompt-blind per-position
predictor (``tasks.chance``: minus the summed entropies of each answer position's token
frequencies on the diagnostic set): 0 at that baseline, 1 when the answer has probability
1, negative while the model is worse than the baseline (as an untrained model, uniform over
its vocabulary, is), on every task alike. Without a ``logprob_chance`` row the anchor is
the first probe of that (trial, level), ``logprob(t0)``, as before (then it depends on the
initialisation), and the report says so. Null when the anchor is >= 0.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from emergence_core.analysis.frames import prefer_levels, unit_expr
from emergence_core.analysis.settings import LOGPROB_NORM, AnalysisSettings
from emergence_core.metrics import EVENTS_SCHEMA, Measure

__all__ = [
    "CHANCE_MEASURES",
    "behaviour_rows",
    "chance_table",
    "difficulty_classes",
    "emergence_events",
    "event_details",
    "events_to_arrow",
    "normalised_logprob",
]

_SERIES = ["trial", "measure", "level"]
_META = ["sweep", "task", "scale", "seed", "source"]


# Logged once per (trial, level) by the trial: the diagnostic set's baselines and size.
CHANCE_MEASURES = (Measure.CHANCE, Measure.LOGPROB_CHANCE, Measure.DIAG_SIZE,
                   Measure.DIAG_ASKED)
_CHANCE_SCHEMA = {"trial": pl.String, "level": pl.Int8, "chance": pl.Float64,
                  "logprob_chance": pl.Float64, "diag_size": pl.Float64,
                  "diag_asked": pl.Float64}


def chance_table(lf: pl.LazyFrame) -> pl.DataFrame:
    """One row per (trial, level) with its chance rows: chance, logprob_chance, diag_size,
    diag_asked (null where not logged)."""
    rows = (lf.filter(pl.col("measure").is_in(list(CHANCE_MEASURES)))
            .group_by(["trial", "level", "measure"]).agg(pl.col("value").first()).collect())
    if rows.height == 0:
        return pl.DataFrame(schema=_CHANCE_SCHEMA)
    wide = rows.pivot("measure", index=["trial", "level"], values="value")
    return wide.select([pl.col(c).cast(t) if c in wide.columns else pl.lit(None, t).alias(c)
                        for c, t in _CHANCE_SCHEMA.items()])


def _with_chance(rows: pl.DataFrame, chances: pl.DataFrame | None) -> pl.DataFrame:
    chances = chances if chances is not None else pl.DataFrame(schema=_CHANCE_SCHEMA)
    return rows.join(chances.select("trial", "level", "chance", "logprob_chance"),
                     on=["trial", "level"], how="left", nulls_equal=True)


def normalised_logprob(rows: pl.DataFrame, chances: pl.DataFrame | None = None) -> pl.DataFrame:
    """``logprob`` rows (sorted by step within trial and level) as ``logprob_norm`` rows.

    The anchor is ``logprob_chance`` where ``chances`` has it, else the first probe.
    """
    lp = _with_chance(rows.filter((pl.col("measure") == Measure.LOGPROB)
                                  & pl.col("value").is_not_null()), chances)
    first = pl.col("value").sort_by("step").first().over(["trial", "level"])
    anchor = pl.coalesce(pl.col("logprob_chance"), first)
    return lp.with_columns(
        pl.when(anchor < 0).then(1.0 - pl.col("value") / anchor).otherwise(None).alias("value"),
        pl.lit(LOGPROB_NORM).alias("measure"),
    ).drop("chance", "logprob_chance")


def behaviour_rows(lf: pl.LazyFrame, chances: pl.DataFrame | None = None) -> pl.DataFrame:
    """Accuracy, log-prob and normalised log-prob rows, per level where a trial has levels.

    Accuracy stays raw here (figures draw it); ``event_details`` corrects it for chance.
    ``chances``: ``chance_table`` (default: read from ``lf``).
    Sorted by (trial, measure, level, step), the order the event rule needs.
    """
    if chances is None:
        chances = chance_table(lf)
    rows = (lf.filter(pl.col("measure").is_in([Measure.ACCURACY, Measure.LOGPROB]))
            .drop("layer").collect())
    rows = prefer_levels(rows)
    return (pl.concat([rows, normalised_logprob(rows, chances)])
            .sort([*_SERIES, "step"], nulls_last=True))


def event_details(behaviour: pl.DataFrame, settings: AnalysisSettings,
                  chances: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per (trial, level, event measure): the event step and the grid around it.

    Accuracy is read chance-corrected (``chance`` from ``chances``, 0 where unknown; a
    chance of 1 makes every value null, so no event). Beyond EVENTS_SCHEMA: ``interval``
    (the probe interval at the event, the central spacing of that series' probe steps
    there), ``n_probes``, ``last_step`` and ``chance_known``.
    """
    w = settings.persistence + 1
    df = _with_chance(behaviour.filter(pl.col("measure").is_in(list(settings.event_measures))),
                      chances)
    is_acc = pl.col("measure") == Measure.ACCURACY
    c = pl.col("chance").fill_null(0.0)
    df = df.with_columns(
        pl.col("chance").is_not_null().alias("chance_known"),
        pl.when(is_acc).then(c).otherwise(None).alias("chance"),
        pl.when(~is_acc).then(pl.col("value")).when(c < 1.0)
        .then((pl.col("value") - c) / (1.0 - c)).otherwise(None).alias("value"))
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
        pl.col("chance").first(), pl.col("chance_known").first(),
    ).with_columns(pl.lit(settings.threshold, pl.Float64).alias("threshold"),
                   pl.lit(settings.persistence, pl.Int32).alias("persistence")))


def to_events_schema(details: pl.DataFrame) -> pl.DataFrame:
    """The EVENTS_SCHEMA columns of ``event_details``, in order and with its types."""
    schema = pl.from_arrow(EVENTS_SCHEMA.empty_table()).schema  # type: ignore[union-attr]
    return details.select([pl.col(n).cast(t) for n, t in schema.items()])


def emergence_events(behaviour: pl.DataFrame, settings: AnalysisSettings,
                     chances: pl.DataFrame | None = None) -> pl.DataFrame:
    """The events table (EVENTS_SCHEMA): one row per (trial, level, event measure).

    ``step`` is null where the rule never holds within the run.
    """
    return to_events_schema(event_details(behaviour, settings, chances))


def events_to_arrow(events: pl.DataFrame) -> pa.Table:
    """The events table as Arrow with exactly EVENTS_SCHEMA (nullability and metadata)."""
    return to_events_schema(events).to_arrow().cast(EVENTS_SCHEMA)


def difficulty_classes(events: pl.DataFrame, settings: AnalysisSettings) -> pl.DataFrame:
    """Difficulty class of each task level at each scale (docs/methods.md §4).

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
