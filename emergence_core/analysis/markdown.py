"""The report's text: every finding as a number with its count, from an ``Analysis``.

Wording convention: ``k/n events (p%, 95% CI lo-hi%)``; the CI is the seed-clustered
bootstrap of ``rates.py`` and is omitted (said so) where a split holds a single seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from emergence_core.analysis.pipeline import Analysis
from emergence_core.analysis.settings import LOGPROB_NORM
from emergence_core.analysis.summary import pct as _pct
from emergence_core.analysis.summary import summary_lines

__all__ = ["count_phrase", "render"]


def count_phrase(k: int, n: int, lo: float | None = None, hi: float | None = None,
                 level: float = 0.95, noun: str = "events") -> str:
    """``"17/24 events (71%, 95% CI 52-86%)"``; without the CI when ``lo`` is None."""
    if n == 0:
        return f"{k}/0 {noun}"
    ci = "" if lo is None or hi is None else \
        f", {100 * level:.0f}% CI {100 * lo:.0f}-{100 * hi:.0f}%"
    return f"{k}/{n} {noun} ({100 * k / n:.0f}%{ci})"


def _num(v: float) -> str:
    """3 significant digits, but whole numbers for steps (no ``2.35e+03``)."""
    return f"{v:.0f}" if abs(v) >= 1000 and np.isfinite(v) else f"{v:.3g}"


def _table(df: pl.DataFrame, columns: Sequence[str]) -> list[str]:
    if df.height == 0:
        return ["(none)"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in df.select(columns).rows():
        cells = [("" if v is None else _num(v) if isinstance(v, float) else str(v))
                 for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _events(a: Analysis) -> list[str]:
    out = ["## Emergence events", ""]
    s = a.settings
    for ev in s.event_measures:
        d = a.details.filter(pl.col("measure") == ev)
        k = d.filter(pl.col("step").is_not_null()).height
        what = ("chance-corrected accuracy (accuracy - chance) / (1 - chance)"
                if ev == "accuracy" else ev)
        out.append(f"- {ev}: {k}/{d.height} (trial, level) series emerge: the first probe at "
                   f"which {what} is >= {s.threshold} and stays so for the next "
                   f"{s.persistence} probes.")
    out.append("- chance = exact-match accuracy of the best constant answer on the level's "
               "diagnostic set (0.5 for pair-scored Pythia sets); per task level below and "
               "in tables/chances.csv, and with every event in tables/events.csv.")
    if LOGPROB_NORM in s.event_measures:
        out.append(f"- {LOGPROB_NORM} = 1 - logprob / logprob_chance, logprob_chance = the "
                   "log-prob of the answer under each answer position's token frequencies on "
                   "the diagnostic set (a prompt-blind predictor): 0 at that baseline, 1 when "
                   "the answer has probability 1. Where a trial logs no logprob_chance, the "
                   "first probe's logprob is the anchor.")
    hard = a.difficulty.filter(pl.col("difficulty") == "hard").height
    rule = "the list in settings.hard" if s.hard is not None else \
        "emergence step above the median over task levels at that scale"
    out += [f"- Difficulty: {hard}/{a.difficulty.height} (task level, scale) pairs are hard "
            f"({rule}).", ""]
    ch = (a.chances.join(a.trials.select("trial", "task"), on="trial", how="left")
          .group_by("task", "level").agg(
              pl.col("chance").median().alias("chance"),
              pl.col("logprob_chance").median().alias("logprob_chance"),
              pl.col("diag_size").min().alias("diag_size"),
              pl.col("diag_asked").max().alias("diag_asked"))
          .sort("task", "level", nulls_last=True))
    out += ["Chance per task level (median over trials):", "",
            *_table(ch, ["task", "level", "chance", "logprob_chance", "diag_size",
                         "diag_asked"]), ""]
    per_scale = (a.details.filter(pl.col("measure") == "accuracy").group_by("scale")
                 .agg(pl.len().alias("series"), pl.col("step").is_not_null().sum()
                      .alias("emerged"), pl.col("step").median().alias("median_step")))
    order = {s: i for i, s in enumerate(a.scale_order)}
    per_scale = per_scale.sort(pl.col("scale").replace_strict(order, default=len(order)))
    return out + _table(per_scale, ["scale", "emerged", "series", "median_step"]) + [""]


def _unit(task: str, level: int | None) -> str:
    return task if level is None else f"{task} L{level}"


def _collapse(a: Analysis) -> list[str]:
    s = a.settings
    out = ["## Collapse", "",
           f"Floor: minimum of the final-layer {s.collapse_measure} (running median of "
           f"{s.smooth_window} probes) over the first {100 * s.early_fraction:.0f}% of "
           f"training, before recovery ({100 * s.recovery_fraction:.0f}% of the drop regained), "
           f"per task level (the headline; pooled over levels is a variant, see Robustness). "
           f"{a.floors.height} (trial, level) series have a floor.", ""]
    for task, level, n, cv, ratio, lo, hi, method in a.floor_spread.select(
            "task", "level", "n_scales", "cv", "max_min_ratio", "cv_lo", "cv_hi",
            "ci_method").rows():
        sub = a.floor_summary.filter((pl.col("task") == task)
                                     & pl.col("level").eq_missing(level))
        flo, fhi = sub["floor"].min(), sub["floor"].max()
        ci = f", {100 * s.ci_level:.0f}% CI {lo:.2f}-{hi:.2f} ({method})" \
            if lo is not None else f", no interval ({method})"
        spread = "one scale only, no spread" if cv is None else \
            (f"CV {cv:.2f}{ci}" + (f", max/min {ratio:.2f}" if ratio is not None else ""))
        out.append(f"- {_unit(task, level)}: floor {flo:.3g} to {fhi:.3g} across {n} scales "
                   f"({spread}).")
    out += ["", *_table(a.floor_summary, ["task", "level", "scale", "floor", "floor_min",
                                          "floor_max", "n_seeds"]), ""]
    td = a.topdown
    counts = {v: td.filter(pl.col("verdict") == v).height
              for v in ("top-down", "bottom-up", "mixed", "undetermined")}
    share = a.topdown_summary.row(0, named=True) if a.topdown_summary.height else None
    ci = "" if share is None or share["lo"] is None else \
        (f" ({100 * s.ci_level:.0f}% CI {100 * share['lo']:.0f}-{100 * share['hi']:.0f}%, "
         f"{share['ci_method']})")
    layers = td["n_layers"]
    rests = "" if td.height == 0 else (
        " Only layers that collapse vote: "
        + (f"{layers.min()}" if layers.min() == layers.max()
           else f"{layers.min()} to {layers.max()}")
        + " per combination (column n_layers); left out were "
        + f"{int(td['n_constant'].sum())} constant layers (no variance at the read position), "
        + f"{int(td['n_shallow'].sum())} whose drop depth (1 - floor / initial) is below "
        + f"{s.topdown_min_depth:g} (n_shallow) and "
        + f"{int(td['n_embedding'].sum())} embedding layers (n_embedding). A verdict needs "
        + f"{s.topdown_min_layers} voting layers, else it is undetermined.")
    n_verdicts = td.height - counts["undetermined"]
    out += [f"Top-down: {counts['top-down']}/{n_verdicts} (task, scale) combinations with a "
            f"verdict are top-down{ci} (Spearman rho between layer index and per-level "
            f"collapse time, median over seeds and levels, <= -{s.topdown_rho}); "
            f"{counts['bottom-up']} bottom-up, {counts['mixed']} mixed; "
            f"{counts['undetermined']} of {td.height} undetermined.{rests}", ""]
    return out + _table(td, ["task", "scale", "n_layers", "n_constant", "n_shallow", "rho",
                             "verdict", "collapse_steps", "depths"])


def _variants(a: Analysis) -> list[str]:
    v = a.variants
    out = ["## Robustness: how RankMe is measured", "",
           "Every RankMe headline recomputed for each collapse-family measure in the run "
           "(centred and uncentred RankMe, each read position) and per level or pooled over "
           "levels. floor_ratio: median over (task, scale) of the variant's floor over the "
           "headline's; topdown_changed: combinations whose verdict differs from the "
           "headline's; precursor: accuracy events (departure rule; precursor_first_k: "
           "the same events under the first-change-after-the-floor rule); changes: the "
           "conclusions that differ from the headline's (floors differing by more than 10%, "
           "top-down verdicts).", ""]
    if v.height == 0:
        return [*out, "No collapse-family measure in the table: no variants.", ""]
    shown = v.with_columns(
        pl.format("{}/{}", "topdown_k", "topdown_n").alias("top-down"),
        pl.when(pl.col("precursor_n").is_not_null())
        .then(pl.format("{}/{}", "precursor_k", "precursor_n")).alias("precursor"))
    return [*out, *_table(shown, ["variant", "n_floors", "floor_median", "floor_ratio",
                                  "cv_median", "top-down", "topdown_lo", "topdown_hi",
                                  "layers_median", "topdown_changed", "precursor",
                                  "precursor_lo", "precursor_hi", "precursor_first_k",
                                  "hierarchy_rank", "changes"]),
            "", f"Intervals: topdown_lo/hi and precursor_lo/hi: {_ci_rule(a)} "
            "(tables/variants.csv names the method).",
            ""]


def _ci_rule(a: Analysis) -> str:
    m = a.settings.bootstrap_min_seeds
    return (f"a seed bootstrap with {m} or more seeds; with fewer, or where every resample "
            "gives the same share, a Wilson score interval on k/n (which treats the events "
            "as independent)")


def _precursors(a: Analysis, event: str) -> list[str]:
    rates = a.rates.filter(pl.col("event") == event)
    hier = a.hierarchy.filter(pl.col("event") == event)
    lvl = a.settings.ci_level
    tol = ("the wider of the event's probe interval and the measure's own probe spacing at "
           "the event" if a.settings.measure_grid_tolerance else
           "the event's probe interval")
    out = [f"## Precursors of the {event} event", "",
           "Onset (headline, departure rule): the change point of the smoothed final-layer "
           "series that opens the regime the measure is in at the event (the last one at or "
           "before event + tolerance, past the collapse when the event comes after it and, in a "
           "series pooled over levels, "
           "nearer this event than another; else the first after). Second rule (first): the "
           "series' first change point after the trial's collapse floor, whatever the event "
           "(on a gradual recovery departure lands on the staircase's last step, near the "
           "event; first, on when the measure left its floor). Variant: the change "
           "point nearest the event. Lead = event step - onset step. Tolerance, per measure "
           f"and event (column tolerance of tables/leads.csv): {tol}. Precursor when lead > "
           "tolerance, lagging when lead < -tolerance; within it synchronous when the "
           "tolerance is the event's own interval, unresolved when the measure's coarser grid "
           f"makes it wider. Intervals: {_ci_rule(a)} "
           "(column ci_method of tables/rates.csv).", ""]
    if rates.height == 0:
        return [*out, "No events with measure series: no precursor rates.", ""]
    order = hier["measure"].to_list() + sorted(set(rates["measure"].to_list())
                                               - set(hier["measure"].to_list()))
    leads = a.leads.filter(pl.col("event") == event)
    for m in order:
        r = rates.filter((pl.col("measure") == m) & (pl.col("split_kind") == "all")).row(
            0, named=True)
        h = hier.filter(pl.col("measure") == m)
        lead = "" if h.height == 0 else (
            f"; median lead {h['median_lead'][0]:.0f} steps "
            f"({h['median_lead_intervals'][0]:.1f} probe intervals)")
        tols = leads.filter(pl.col("measure") == m)["tolerance"].drop_nulls()
        tol_txt = "" if tols.len() == 0 else (
            f"; tolerance {tols.min():.0f}" + ("" if tols.min() == tols.max()
                                               else f" to {tols.max():.0f}") + " steps")
        lag = h["median_xcorr_lag"][0] if h.height else None
        xc = "" if lag is None else f"; median cross-correlation lag {round(lag):+d} probes"
        pre = count_phrase(r["precursor_k"], r["n"], r["precursor_lo"], r["precursor_hi"], lvl)
        out.append(
            f"- {m} is a precursor in {pre} ({r['ci_method']}), synchronous in "
            f"{count_phrase(r['synchronous_k'], r['n'])}, unresolved in "
            f"{count_phrase(r['unresolved_k'], r['n'])}, lagging in "
            f"{count_phrase(r['lagging_k'], r['n'])}, no onset in {r['no_onset_k']}"
            f"{lead}{tol_txt}{xc}.")
    agree = a.rule_agreement.filter(pl.col("event") == event)
    out += ["", "Onset rules side by side (departure = headline, first = first change after "
            "the floor, nearest = variant; agree_first_k / agree_k: events classed alike by "
            "departure and first / nearest; tables/rates_first.csv and "
            "tables/rates_nearest.csv have their rates, tables/hierarchy_first.csv the "
            "first rule's hierarchy):", "",
            *_table(agree, ["measure", "n", "departure_precursor_k", "first_precursor_k",
                            "nearest_precursor_k", "agree_first_k", "agree_k"]), ""]
    differ = leads.filter(~pl.col("rules_agree"))
    if differ.height:
        out += [f"{differ.height}/{leads.height} (event, measure) pairs are classed "
                "differently by the two rules:", "",
                *_table(differ.head(20), ["trial", "level", "measure", "event_step",
                                          "onset_step", "class", "onset_nearest",
                                          "class_nearest"]),
                *([f"(first 20 of {differ.height}; all in tables/leads.csv)"]
                  if differ.height > 20 else []), ""]
    grid = a.grid_summary.filter(pl.col("event") == event) if a.grid_summary.height else \
        a.grid_summary
    if grid.height:
        out += ["Same-grid control: each coarse measure's verdicts (first row of each grid), "
                "then each cheap measure read only at that measure's probe steps and judged "
                "with that grid's tolerance (full_*: the same events on the cheap measure's "
                "own grid). Where a cheap measure turns unresolved or synchronous on the "
                "coarse grid, the grid alone explains that verdict.", "",
                *_table(grid, ["grid", "measure", "n", "precursor_k", "synchronous_k",
                               "unresolved_k", "lagging_k", "full_precursor_k"]), ""]
        ctrl = a.grid_control.filter((pl.col("event") == event)
                                     & (pl.col("class_full") == "precursor"))
        for g, sub in sorted(ctrl.group_by("grid"), key=lambda kv: str(kv[0][0])):
            kept = sub.filter(pl.col("class") == "precursor").height
            out.append(f"- On {g[0]}'s grid, cheap measures keep {kept}/{sub.height} of their "
                       "own-grid precursor verdicts; the rest the grid alone turns into "
                       "synchronous, unresolved or lagging.")
        out.append("")
    splits = rates.filter(pl.col("split_kind").is_in(["difficulty", "scale"]))
    wide = splits.with_columns(pl.format("{}/{}", "precursor_k", "n").alias("k/n")).pivot(
        "split", index="measure", values="k/n")
    out += ["", "Precursor k/n by difficulty class and scale:", "",
            *_table(wide, wide.columns), ""]
    least = a.settings.rank_min_onsets
    if hier.height:
        out.append("Geometric hierarchy (median lead in probe intervals, earliest first; the "
                   "order of the list above and of figures/leads.png; a measure is ranked "
                   f"over at least {least} onsets): " + _order(hier, least, first=False))
    first = a.hierarchy_first.filter(pl.col("event") == event)
    if first.height:
        out += ["", "The same under the first-change-after-the-floor rule: "
                + _order(first, least, first=True)]
    return [*out, ""]


def _order(hier: pl.DataFrame, least: int, first: bool) -> str:
    """The ranked measures joined by '>', then the unranked ones with their onset counts."""
    def one(r: dict) -> str:
        i = r["median_lead_intervals"]
        extra = f"; precursor {r['precursor_k']}/{r['n']}" if first else ""
        return (f"{r['measure']} ({_num(i) if i is not None else 'n/a'} intervals, "
                f"{r['median_lead']:.0f} steps{extra})")

    rows = list(hier.iter_rows(named=True))
    ranked = [one(r) for r in rows if r["rank"] is not None]
    rest = [f"{r['measure']} ({r['n_onsets']})" for r in rows if r["rank"] is None]
    text = " > ".join(ranked) if ranked else f"no measure has {least} onsets"
    if rest:
        text += f"; not ranked, fewer than {least} onsets: " + ", ".join(rest)
    return text + "."


def _prediction(a: Analysis) -> list[str]:
    p = a.prediction
    out = ["## Prediction limits", "",
           f"Signals: onset = first change point of {a.settings.signal_measure} after the "
           "final layer reaches its collapse floor; floor_depth = 1 - floor / initial of the "
           "final-layer collapse measure.", ""]
    for signal in p["signal"].unique(maintain_order=True).to_list():
        q = p.filter((pl.col("signal") == signal) & (pl.col("scope") == "all"))
        sp = q.filter(pl.col("statistic") == "spearman").row(0, named=True)
        rho = "n/a" if sp["value"] is None else f"{sp['value']:.2f} (p = {sp['p_value']:.2g})"
        line = f"- {signal}: Spearman rho with emergence step {rho} over {sp['n']} events"
        for stat, what in (("concordance", "within-class concordance"),
                           ("reversal", "ordering reversals predicted")):
            r = q.filter(pl.col("statistic") == stat)
            if r.height and r["n"][0]:
                ci = "" if r["lo"][0] is None else (
                    f", {100 * a.settings.ci_level:.0f}% CI {_pct(r['lo'][0])}-"
                    f"{_pct(r['hi'][0])} {r['ci_method'][0]}")
                line += (f"; {what} {r['k'][0]:g}/{r['n'][0]} pairs "
                         f"({_pct(r['value'][0])}{ci})")
            else:
                line += f"; {what}: no pairs"
        out.append(line + ".")
    return [*out, "", *_table(p, ["signal", "statistic", "scope", "n", "k", "value", "lo", "hi",
                                  "ci_method"]), ""]


def _figure(rel: str, caption: str) -> list[str]:
    """A figure shown in the report (not a link to it), its caption on the line below."""
    return [f"![{Path(rel).stem.replace('_', ' ')}]({rel})", f"*{caption or rel}*", ""]


def render(a: Analysis, figures: Sequence[str], skipped_trials: Sequence[str],
           tables: Sequence[str], notes: Sequence[str] = (),
           captions: Mapping[str, str] | None = None) -> str:
    """The whole Markdown report; ``captions``: one line per figure path."""
    inv = a.trials
    head = ["# emerge: analysis report", "",
            f"{a.n_rows} metric rows, {inv.height} trials "
            f"({inv['task'].n_unique()} tasks, {inv['scale'].n_unique()} scales, "
            f"{inv['seed'].n_unique()} seeds; sources: "
            f"{', '.join(sorted(set(inv['source'].to_list()))) or 'none'}). "
            f"Settings hash {a.settings.config_hash()}. "
            f"Measures analysed ({len(a.measures)}): {', '.join(a.measures) or 'none'}; "
            "per-layer measures at their final layer.", "", *summary_lines(a),
            "## What is missing", ""]
    missing = [*a.missing, *notes]
    head += [f"- {m}" for m in missing] or ["- Nothing: every expected table could be computed."]
    body = [*head, "", *_events(a), *_collapse(a), "", *_variants(a)]
    for ev in a.settings.event_measures:
        body += _precursors(a, ev)
    body += _prediction(a)
    body += ["## Figures", ""]
    for f in figures:
        body += _figure(f, (captions or {}).get(f, ""))
    if skipped_trials:
        body.append(f"- Per-trial figures drawn for {a.trials.height - len(skipped_trials)}/"
                    f"{a.trials.height} trials (max_trial_figures = "
                    f"{a.settings.max_trial_figures}); not drawn: {len(skipped_trials)} trials.")
    body += ["", "## Tables", ""] + [f"- [{t}]({t})" for t in tables]
    return "\n".join(body) + "\n"
