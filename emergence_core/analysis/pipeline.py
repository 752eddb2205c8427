"""The statistics stage end to end: metrics table in, every table of docs/methods.md §4 out.

``analyze`` reads the long table in two passes (an inventory of (trial, measure), then
only the rows the analysis needs: behaviour, each measure's final layer, and every layer
of the collapse measure pooled over levels) and hands them to the per-topic modules.
Works on training sweeps and on Pythia rows alike (revisions as steps, probe sets as
tasks, null levels, model names as scales), and on empty or partial tables: what cannot be
computed is an empty table and a line in ``missing``.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from emergence_core.analysis.collapse import (
    collapse_table,
    floor_spread,
    floor_summary,
    topdown,
    topdown_share,
    trial_floors,
)
from emergence_core.analysis.events import (
    CHANCE_MEASURES,
    behaviour_rows,
    chance_table,
    difficulty_classes,
    event_details,
    to_events_schema,
)
from emergence_core.analysis.frames import Metrics, as_lazy, unit_expr
from emergence_core.analysis.leads import grid_control, measure_leads
from emergence_core.analysis.prediction import event_signals, prediction_limits
from emergence_core.analysis.rates import hierarchy, precursor_rates
from emergence_core.analysis.settings import EXPECTED_MEASURES, AnalysisSettings
from emergence_core.analysis.variants import family, variants_table
from emergence_core.metrics import Measure

__all__ = ["Analysis", "analyze"]

_META = ["sweep", "task", "scale", "seed", "source"]


@dataclass(frozen=True)
class Analysis:
    """Every table of the statistics stage, plus the rows the figures draw from.

    Tables: ``inventory`` (trial, measure: final layer, per-level or not, rows, steps),
    ``trials``, ``scales`` (scale, n_layers: ordered by depth), ``chances`` (per trial and
    level: chance, logprob_chance, diag_size, diag_asked), ``events`` (EVENTS_SCHEMA),
    ``details`` (events with their probe interval), ``difficulty``, ``collapse`` (floor of
    every (trial, level, layer) of the collapse measure), ``floors`` (per trial level, final
    layer), ``floor_summary`` (task x level x scale), ``floor_spread`` (per task level, with
    a seed-bootstrap CV interval), ``topdown`` (task x scale, per-level series, layer
    counts), ``topdown_summary`` (k/n top-down with its interval), ``variants``
    (``variants.variants_table``), ``leads`` (event x measure, both onset
    rules), ``rule_agreement`` (per event and measure: how often the two onset rules agree),
    ``grid_control`` and ``grid_summary`` (``leads.grid_control``), ``changepoints``,
    ``rates`` (departure rule), ``rates_first`` (first change after the floor) and
    ``rates_nearest``, ``hierarchy`` and ``hierarchy_first`` (departure, first), ``signals``,
    ``prediction``. ``measures``: the measures analysed; ``missing``: what the table
    lacks, one sentence each.
    """

    settings: AnalysisSettings
    n_rows: int
    measures: tuple[str, ...]
    inventory: pl.DataFrame
    trials: pl.DataFrame
    scales: pl.DataFrame
    behaviour: pl.DataFrame
    chances: pl.DataFrame
    series: pl.DataFrame
    collapse_rows: pl.DataFrame
    events: pl.DataFrame
    details: pl.DataFrame
    difficulty: pl.DataFrame
    collapse: pl.DataFrame
    floors: pl.DataFrame
    floor_summary: pl.DataFrame
    floor_spread: pl.DataFrame
    topdown: pl.DataFrame
    topdown_summary: pl.DataFrame
    variants: pl.DataFrame
    leads: pl.DataFrame
    rule_agreement: pl.DataFrame
    grid_control: pl.DataFrame
    grid_summary: pl.DataFrame
    changepoints: pl.DataFrame
    onsets: pl.DataFrame
    rates: pl.DataFrame
    rates_first: pl.DataFrame
    rates_nearest: pl.DataFrame
    hierarchy: pl.DataFrame
    hierarchy_first: pl.DataFrame
    signals: pl.DataFrame
    prediction: pl.DataFrame
    missing: tuple[str, ...]

    @property
    def scale_order(self) -> list[str]:
        return self.scales["scale"].to_list()


# An estimate's convergence flag (1.0 converged, 0.0 not), logged beside it.
CONVERGENCE_FLAGS = {Measure.LLC: Measure.LLC_CONVERGED}


def drop_unconverged(series: pl.DataFrame, flags: pl.DataFrame
                     ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``series`` without the values whose convergence flag is 0, and a count of them.

    Returns (kept rows, one row per measure: n_dropped, n_estimates). A value without a
    flag row is kept (no check was made).
    """
    bad = []
    for measure, flag in CONVERGENCE_FLAGS.items():
        f = flags.filter((pl.col("measure") == flag) & (pl.col("value") < 0.5))
        bad.append(f.select("trial", "step", pl.lit(measure).alias("measure")))
    bad_rows = pl.concat(bad).unique()
    key = ["trial", "measure", "step"]
    kept = series.join(bad_rows, on=key, how="anti")
    counts = (series.filter(pl.col("measure").is_in(list(CONVERGENCE_FLAGS)))
              .join(bad_rows.with_columns(pl.lit(True).alias("_bad")), on=key, how="left")
              .group_by("measure").agg(pl.col("_bad").fill_null(False).sum().alias("n_dropped"),
                                       pl.len().alias("n_estimates")))
    return kept, counts


def _unconverged_notes(dropped: pl.DataFrame) -> list[str]:
    return [f"{m}: {k}/{n} estimates flagged not converged, left out of onsets."
            for m, k, n in dropped.select("measure", "n_dropped", "n_estimates").rows() if k]


def rule_agreement(leads: pl.DataFrame) -> pl.DataFrame:
    """Per (event, measure): events, how many departure and nearest class alike
    (``agree_k``), departure and first (``agree_first_k``), and each rule's precursor
    count."""
    return (leads.group_by("event", "measure").agg(
        pl.len().alias("n"), pl.col("rules_agree").sum().alias("agree_k"),
        (pl.col("class") == "precursor").sum().alias("departure_precursor_k"),
        (pl.col("class_nearest") == "precursor").sum().alias("nearest_precursor_k"),
        pl.col("rules_agree_first").sum().alias("agree_first_k"),
        (pl.col("class_first") == "precursor").sum().alias("first_precursor_k"))
        .sort("event", "measure"))


def rule_rates(leads: pl.DataFrame, settings: AnalysisSettings, suffix: str) -> pl.DataFrame:
    """``precursor_rates`` under the onset rule whose columns end in ``suffix``."""
    return precursor_rates(leads.with_columns(pl.col(f"class{suffix}").alias("class")),
                           settings)


def _inventory(lf: pl.LazyFrame) -> pl.DataFrame:
    return (lf.group_by(["trial", "measure"]).agg(
        *[pl.col(c).first() for c in _META],
        pl.col("layer").max().alias("final_layer"),
        pl.col("level").is_not_null().any().alias("has_levels"),
        pl.len().alias("n_rows"),
        pl.col("step").n_unique().alias("n_steps"))
        .collect().sort(["trial", "measure"]))


def _chance_notes(trials: pl.DataFrame, chances: pl.DataFrame,
                  details: pl.DataFrame) -> list[str]:
    notes = []
    acc = details.filter(pl.col("measure") == Measure.ACCURACY)
    unknown = sorted(set(acc.filter(~pl.col("chance_known"))["trial"].to_list()))
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        notes.append(f"{len(unknown)}/{trials.height} trials log no chance rate (written "
                     f"before chance rows existed): their accuracy events use raw accuracy "
                     f"(chance 0): {shown}.")
    short = (chances.filter(pl.col("diag_size") < pl.col("diag_asked"))
             .join(trials.select("trial", "task"), on="trial", how="left")
             .group_by("task", "level").agg(pl.col("diag_size").min(),
                                            pl.col("diag_asked").max())
             .sort("task", "level"))
    if short.height:
        notes.append("Diagnostic sets smaller than asked (the level's universe is too small): "
                     + ", ".join(f"{t} L{lv} {n:.0f} of {a:.0f}"
                                 for t, lv, n, a in short.rows()) + ".")
    return notes


def _missing(inv: pl.DataFrame, trials: pl.DataFrame, details: pl.DataFrame,
             measures: tuple[str, ...], settings: AnalysisSettings,
             chances: pl.DataFrame) -> tuple[str, ...]:
    if inv.height == 0:
        return ("The metrics table is empty: no trials, no measures, nothing to analyse.",)
    notes = _chance_notes(trials, chances, details)
    dtypes = (inv.filter(pl.col("measure").str.starts_with(f"{Measure.MODEL_DTYPE}."))
              .group_by("trial").agg(pl.col("measure").sort(),
                                     pl.col("n_steps").sort_by("measure")).sort("trial"))
    for trial, names, steps in dtypes.filter(pl.col("measure").list.len() > 1).rows():
        notes.append(f"{trial}: revisions measured in different dtypes ("
                     + ", ".join(f"{d.split('.', 1)[1]} {n}"
                                 for d, n in zip(names, steps, strict=True))
                     + "): RankMe of one checkpoint depends on the dtype its forward ran in.")
    present = set(inv["measure"].to_list())
    sources = set(inv["source"].to_list())
    expected = EXPECTED_MEASURES if sources - {"pythia"} else (Measure.RANKME,)
    absent = [m for m in expected if m not in present]
    if absent:
        notes.append(f"Measures absent from the whole table: {', '.join(absent)}.")
    n_trials = trials.height
    for m in measures:
        k = inv.filter(pl.col("measure") == m).height
        if k < n_trials:
            notes.append(f"{m} is logged in {k}/{n_trials} trials only.")
    for m in (Measure.ACCURACY, settings.collapse_measure):
        lacking = sorted(set(trials["trial"].to_list())
                         - set(inv.filter(pl.col("measure") == m)["trial"].to_list()))
        if lacking:
            shown = ", ".join(lacking[:10]) + (" ..." if len(lacking) > 10 else "")
            notes.append(f"{len(lacking)}/{n_trials} trials have no {m} rows: {shown}.")
    for ev in settings.event_measures:
        d = details.filter(pl.col("measure") == ev)
        if d.height == 0:
            notes.append(f"No {ev} series: no {ev} events.")
            continue
        none = d.filter(pl.col("step").is_null())
        if none.height:
            shown = ", ".join(f"{t}/L{lv}" if lv is not None else t
                              for t, lv in none.select("trial", "level").rows()[:10])
            notes.append(f"{none.height}/{d.height} (trial, level) series never reach the "
                         f"{ev} threshold (no event): {shown}"
                         f"{' ...' if none.height > 10 else ''}.")
    if settings.signal_measure not in present:
        notes.append(f"Signal measure {settings.signal_measure} absent: no onset signal.")
    return tuple(notes)


def analyze(metrics: Metrics, settings: AnalysisSettings | None = None) -> Analysis:
    """Run every analysis of docs/methods.md §4 over ``metrics`` (polars Lazy/DataFrame, Arrow).

    For a run folder: ``analyze(frames.load_metrics(run_dir))``.
    """
    settings = settings or AnalysisSettings()
    lf = as_lazy(metrics)
    inv = _inventory(lf)
    trials = (inv.group_by("trial").agg(*[pl.col(c).first() for c in _META],
                                        pl.col("n_rows").sum(), pl.len().alias("n_measures"))
              .sort("trial"))
    scales = (inv.group_by("scale").agg(pl.col("final_layer").max().cast(pl.Int64)
                                        .alias("n_layers"))
              .sort(["n_layers", "scale"], nulls_last=True))
    present = set(inv["measure"].to_list())
    keep = set(settings.measures) if settings.measures is not None else present
    # a level's baselines and the dtype rows describe the run, never a candidate precursor
    measures = tuple(sorted(m for m in (present & keep) - set(settings.exclude_measures)
                            - set(CHANCE_MEASURES)
                            if not m.startswith(f"{Measure.MODEL_DTYPE}.")))

    final = inv.select("trial", "measure", "final_layer").lazy()
    at_final = pl.col("layer").is_null() | (pl.col("layer") == pl.col("final_layer"))
    is_series = pl.col("measure").is_in(list(measures)) & at_final
    # every layer and level of each collapse-family measure (the variants table needs them)
    fam = family(present, settings)
    is_collapse = pl.col("measure").is_in(fam)
    is_behaviour = pl.col("measure").is_in([Measure.ACCURACY, Measure.LOGPROB])
    is_flag = pl.col("measure").is_in(list(CONVERGENCE_FLAGS.values()))
    needed = (lf.join(final, on=["trial", "measure"], how="left")
              .filter(is_series | is_collapse | is_behaviour | is_flag).collect())
    chances = chance_table(lf)
    behaviour = behaviour_rows(needed.lazy().drop("final_layer"), chances)
    series, dropped = drop_unconverged(
        needed.filter(is_series).select("trial", "measure", "level", "layer", "step", "value"),
        needed.filter(is_flag))
    collapse_all_rows = needed.filter(is_collapse).drop("final_layer")
    collapse_rows = collapse_all_rows.filter(pl.col("measure") == settings.collapse_measure)
    del needed

    details = event_details(behaviour, settings, chances)
    events = to_events_schema(details)
    difficulty = difficulty_classes(events, settings)
    collapse_all = collapse_table(collapse_all_rows, settings)
    del collapse_all_rows
    collapse = collapse_all.filter(pl.col("measure") == settings.collapse_measure)
    floors = trial_floors(collapse)
    summary = floor_summary(floors, scales)
    ends = collapse.filter(pl.col("is_final") & pl.col("level").is_null())
    found = measure_leads(series, behaviour, details, settings,
                          dict(ends.select("trial", "collapse_step").iter_rows()))
    meta = trials.select("trial", "task", "scale", "seed", "source")
    leads = (found.leads.join(meta, on="trial", how="left").with_columns(unit_expr())
             .join(difficulty.select("unit", "scale", "difficulty"), on=["unit", "scale"],
                   how="left"))
    rates = precursor_rates(leads, settings)
    rates_first = rule_rates(leads, settings, "_first")
    rates_nearest = rule_rates(leads, settings, "_nearest")
    control, control_summary = grid_control(
        series, behaviour, details, found.leads, settings,
        dict(ends.select("trial", "collapse_step").iter_rows()))
    td = topdown(collapse, settings)
    hier = hierarchy(leads, rates, min_onsets=settings.rank_min_onsets)
    hier_first = hierarchy(leads, rates_first, "_first", settings.rank_min_onsets)
    signals = event_signals(details, found.onsets, collapse, difficulty, inv, settings)
    return Analysis(
        settings=settings, n_rows=int(inv["n_rows"].sum()) if inv.height else 0,
        measures=measures, inventory=inv, trials=trials, scales=scales, behaviour=behaviour,
        chances=chances,
        series=series, collapse_rows=collapse_rows, events=events, details=details,
        difficulty=difficulty, collapse=collapse, floors=floors, floor_summary=summary,
        floor_spread=floor_spread(summary, floors, settings), topdown=td, leads=leads,
        topdown_summary=pl.DataFrame([topdown_share(collapse, td, settings)]),
        variants=variants_table(collapse_all, scales, rates, hier, settings, rates_first),
        rule_agreement=rule_agreement(leads), grid_control=control,
        grid_summary=control_summary,
        changepoints=found.changepoints, onsets=found.onsets, rates=rates,
        rates_first=rates_first, rates_nearest=rates_nearest,
        hierarchy=hier, hierarchy_first=hier_first,
        signals=signals,
        prediction=prediction_limits(signals, scales["scale"].to_list(), settings),
        missing=(*_missing(inv, trials, details, measures, settings, chances),
                 *_unconverged_notes(dropped)))
