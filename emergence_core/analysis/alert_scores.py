"""The live alerts scored against the events: how often and how early they preceded them
(the report's "Live alerts" section).

The trials raise alerts while they run (``emergence_core.trial.alerts``) from what they have seen
so far; the statistics stage knows the whole run. Set side by side:

- an alert *precedes* its level's event when the event exists and the alert was raised
  (its detection step, not its estimated onset) before the event's step, at most
  ``alert_horizon`` probe intervals (at the event) before it: an alert raised far earlier
  says nothing about when the capability comes;
- **precision** of a kind: the share of its alerts that preceded their level's event,
  beside its **baseline**, the precision of alerts raised at random: the share of all
  (trial, level, probe step) triples whose step precedes the level's event within the
  horizon; **recall**: the share of events preceded by at least one alert of that kind;
- **lead**: event step minus detection step, in steps and in probe intervals at the event
  (the event's own ``interval``), the median over the alerts that preceded;
- a precursor alert's **estimated onset** against the offline onset of the same series
  (the ``leads`` table: the departure rule on the whole series, at the measure's final
  layer): the median signed difference, in probe intervals.

Alerts of levels that never emerged count against precision; events that never had an alert
count against recall. Everything is in ``tables/alerts.csv`` (one row per alert, with
``preceded`` and ``lead_steps``) and ``tables/alert_summary.csv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    from emergence_core.analysis.pipeline import Analysis

__all__ = ["alert_summary", "alerts_caption", "alerts_figure", "alerts_section",
           "baseline_precision", "match_alerts"]


def _preceded(horizon: float) -> pl.Expr:
    lead = pl.col("event_step") - pl.col("step")
    return (pl.col("event_step").is_not_null() & (lead > 0)
            & (lead <= horizon * pl.col("interval")))


def _events(details: pl.DataFrame) -> pl.DataFrame:
    return (details.filter(pl.col("measure") == "accuracy")
            .select("trial", "level", pl.col("step").alias("event_step"), "interval"))


def match_alerts(alerts: pl.DataFrame, details: pl.DataFrame,
                 horizon: float = 10.0) -> pl.DataFrame:
    """Each alert with its level's accuracy event: ``event_step``, ``interval``,
    ``preceded`` (within ``horizon`` probe intervals before it), ``lead_steps``,
    ``lead_intervals``."""
    return (alerts.join(_events(details), on=["trial", "level"], how="left")
            .with_columns(_preceded(horizon).alias("preceded"),
                          (pl.col("event_step") - pl.col("step")).alias("lead_steps"))
            .with_columns((pl.col("lead_steps") / pl.col("interval")).alias("lead_intervals"))
            .sort("trial", "step", "kind", "measure"))


def baseline_precision(grid: pl.DataFrame, details: pl.DataFrame,
                       horizon: float = 10.0) -> float | None:
    """The precision of alerts raised at random: the share of ``grid``'s (trial, level,
    step) probe steps that precede their level's event within ``horizon`` intervals."""
    if grid.height == 0:
        return None
    hit = (grid.select("trial", "level", "step").unique()
           .join(_events(details), on=["trial", "level"], how="left")
           .select(_preceded(horizon).fill_null(False)))
    return float(hit.to_series().mean())


def alert_summary(matched: pl.DataFrame, details: pl.DataFrame, leads: pl.DataFrame,
                  baseline: float | None = None) -> pl.DataFrame:
    """Per kind: alerts, preceded, precision and its ``baseline`` (``baseline_precision``),
    events, events preceded, recall, median lead, and (precursors) the median
    estimated-minus-offline onset in probe intervals."""
    events = details.filter((pl.col("measure") == "accuracy") & pl.col("step").is_not_null())
    n_events = events.height
    offline = (leads.filter(pl.col("event") == "accuracy")
               .select("trial", "level", "measure", "layer", "onset_step")
               .rename({"onset_step": "offline_onset"}))
    rows = []
    for kind in ("precursor", "approach"):
        k = matched.filter(pl.col("kind") == kind)
        pre = k.filter(pl.col("preceded"))
        hit = pre.select("trial", "level").unique().height
        first = (k.sort("onset_step").group_by("trial", "level", "measure", "layer")
                 .agg(pl.col("onset_step").first(), pl.col("interval").first()))
        vs = first.join(offline, on=["trial", "level", "measure", "layer"], how="inner") \
            .drop_nulls("offline_onset")
        diff = ((vs["onset_step"] - vs["offline_onset"]) / vs["interval"]).median() \
            if vs.height else None
        rows.append({
            "kind": kind, "alerts": k.height, "preceded": pre.height,
            "precision": pre.height / k.height if k.height else None,
            "baseline_precision": baseline,
            "events": n_events, "events_preceded": hit,
            "recall": hit / n_events if n_events else None,
            "median_lead_steps": pre["lead_steps"].median(),
            "median_lead_intervals": pre["lead_intervals"].median(),
            "n_vs_offline": vs.height, "median_onset_minus_offline_intervals": diff})
    return pl.DataFrame(rows, schema={
        "kind": pl.String, "alerts": pl.Int64, "preceded": pl.Int64, "precision": pl.Float64,
        "baseline_precision": pl.Float64,
        "events": pl.Int64, "events_preceded": pl.Int64, "recall": pl.Float64,
        "median_lead_steps": pl.Float64, "median_lead_intervals": pl.Float64,
        "n_vs_offline": pl.Int64, "median_onset_minus_offline_intervals": pl.Float64})


def _num(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def alerts_section(summary: pl.DataFrame, n_trials: int, horizon: float = 10.0) -> list[str]:
    """Markdown lines; one sentence when no trial raised an alert."""
    lines = ["## Live alerts", ""]
    if summary["alerts"].sum() == 0:
        return [*lines, f"No live alert was raised in {n_trials} trials (or the run predates "
                        "alerts).", ""]
    lines += ["Raised by the trials while they ran (`emergence_core.trial.alerts` states the "
              "rule). An alert *preceded* its level's accuracy event when it was raised "
              f"before the event step, at most {horizon:g} probe intervals (at the event) "
              "before it. "
              "Precision: preceded / alerts, beside its baseline (random: the share of all "
              "probe steps of all levels that precede their level's event within that "
              "horizon, the precision of alerts raised at random); recall: events with at "
              "least one preceding alert / events; lead: event step minus detection step "
              "(median over the alerts that preceded), also in probe intervals at the event. "
              "The last column sets the precursor alerts' estimated onsets against the "
              "offline onsets of the same series (negative: the live rule placed it earlier).", "",
              "| kind | alerts | preceded | precision (random) | events preceded | recall | "
              "median lead (steps) | median lead (intervals) | onset - offline (intervals, n) "
              "|", "|---|---|---|---|---|---|---|---|---|"]
    for r in summary.iter_rows(named=True):
        lines.append(
            f"| {r['kind']} | {r['alerts']} | {r['preceded']} | {_num(r['precision'])} "
            f"({_num(r['baseline_precision'])}) | "
            f"{r['events_preceded']}/{r['events']} | {_num(r['recall'])} | "
            f"{_num(r['median_lead_steps'], '.0f')} | {_num(r['median_lead_intervals'], '.1f')}"
            f" | {_num(r['median_onset_minus_offline_intervals'], '.1f')} "
            f"(n={r['n_vs_offline']}) |")
    return [*lines, ""]


def alerts_caption(trial: str) -> str:
    return (f"Trial {trial}: chance-corrected accuracy per level against training step; marks "
            "below zero: live precursor (|) and approach (^) alerts at the step they were "
            "raised; dashed: emergence events.")


def alerts_figure(a: Analysis, matched: pl.DataFrame, trial: str, path: Path) -> Path:
    """One trial's chance-corrected accuracy per level, its live alerts (marks below the
    axis at the detection step, one row per kind) and its events (dashed lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    details = a.details
    c = pl.col("chance").fill_null(0.0)
    acc = (a.behaviour.filter((pl.col("trial") == trial) & (pl.col("measure") == "accuracy")
                              & pl.col("level").is_not_null())
           .join(a.chances.select("trial", "level", "chance"), on=["trial", "level"],
                 how="left")
           .with_columns(((pl.col("value") - c) / (1 - c)).alias("corrected")))
    value = "corrected"
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=150)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    levels = sorted(acc["level"].unique().to_list())
    for i, lv in enumerate(levels):
        g = acc.filter(pl.col("level") == lv).sort("step")
        ax.plot(g["step"], g[value], color=colours[i % 10], label=f"accuracy L{lv}")
        ev = details.filter((pl.col("trial") == trial) & (pl.col("level") == lv)
                            & (pl.col("measure") == "accuracy"))["step"].drop_nulls()
        for e in ev:
            ax.axvline(e, color=colours[i % 10], ls="--", lw=1)
        mine = matched.filter((pl.col("trial") == trial) & (pl.col("level") == lv))
        for kind, y, marker in (("precursor", -0.08, "|"), ("approach", -0.16, "^")):
            s = mine.filter(pl.col("kind") == kind)["step"]
            if s.len():
                ax.scatter(s, [y] * s.len(), marker=marker, color=colours[i % 10], s=40,
                           label=f"{kind} alerts L{lv}")
    ax.plot([], [], color="grey", ls="--", label="emergence event (dashed)")
    ax.set_xlabel("training step")
    ax.set_ylabel("chance-corrected accuracy")
    ax.set_ylim(-0.22, 1.05)
    ax.set_title(f"{trial}: live alerts (below the axis, at detection) and events")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),  # off the data
              borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
