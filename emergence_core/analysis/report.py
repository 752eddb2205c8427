"""``emerge analyze``'s output: a Markdown report, CSV tables and PNG figures, atomically.

Everything is written into a hidden sibling folder, which then replaces ``out_dir`` by
rename, ``report.json`` (settings, their hash, schema version, headline numbers) written
last inside it, so a reader sees the old report or the whole new one, never half.
An empty or partial table yields a report of what is there and what is missing; a figure
that cannot be drawn becomes a line under "What is missing", not a traceback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from emergence_core.analysis import figures
from emergence_core.analysis.alert_scores import (
    alert_summary,
    alerts_caption,
    alerts_figure,
    alerts_section,
    baseline_precision,
    match_alerts,
)
from emergence_core.analysis.calibration import calibration_section
from emergence_core.analysis.frames import Metrics, empty_metrics
from emergence_core.analysis.html import report_html
from emergence_core.analysis.markdown import render
from emergence_core.analysis.pipeline import Analysis, analyze
from emergence_core.analysis.settings import AnalysisSettings
from emergence_core.metrics import SCHEMA_VERSION

__all__ = ["CARRIED", "ReportSummary", "ReportTargetError", "check_report_target",
           "headline_numbers", "write_report"]

_TABLES = ("events", "chances", "details", "difficulty", "leads", "rule_agreement",
           "grid_control", "grid_summary", "rates", "rates_first", "rates_nearest", "hierarchy",
           "hierarchy_first", "floors",
           "floor_summary", "floor_spread", "topdown", "topdown_summary", "variants",
           "collapse", "changepoints", "onsets", "signals", "prediction", "inventory")


@dataclass(frozen=True)
class ReportSummary:
    """What ``write_report`` wrote (paths relative to ``out_dir``) and its headline numbers
    (flat name -> float, ready for ``mlflow.log_metrics``)."""

    out_dir: Path
    files: tuple[str, ...]
    headline: Mapping[str, float]
    missing: tuple[str, ...]
    analysis: Analysis


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def headline_numbers(a: Analysis) -> dict[str, float]:
    """Counts and rates worth logging: events, top-down count, floor CVs, precursor rates."""
    acc = a.details.filter(pl.col("measure") == "accuracy")
    out = {"rows": float(a.n_rows), "trials": float(a.trials.height),
           "events/accuracy/series": float(acc.height),
           "events/accuracy/emerged": float(acc["step"].is_not_null().sum()),
           "topdown/count": float((a.topdown["verdict"] == "top-down").sum()),
           "topdown/combinations": float(a.topdown.height),
           "topdown/undetermined": float((a.topdown["verdict"] == "undetermined").sum())}
    for task, level, cv in a.floor_spread.select("task", "level", "cv").drop_nulls(
            "cv").rows():
        out[f"floor_cv/{_safe(task)}" + ("" if level is None else f"_L{level}")] = float(cv)
    for m, r in (a.rates.filter((pl.col("split_kind") == "all")
                                & (pl.col("event") == "accuracy"))
                 .select("measure", "precursor_rate").rows()):
        out[f"precursor_rate/{_safe(m)}"] = float(r)
    return out


def _pick_trials(a: Analysis, limit: int) -> tuple[list[str], list[str]]:
    """At most ``limit`` trials for per-trial figures: the lowest seed first, spread evenly
    over its trials sorted by (task, scale); the rest are listed, not drawn."""
    chosen: list[str] = []
    for _, g in a.trials.sort(["seed", "task", "scale"]).group_by("seed", maintain_order=True):
        names, need = g["trial"].to_list(), limit - len(chosen)
        if need <= 0:
            break
        # spacing >= 1 when need <= len(names), so the rounded picks are distinct
        chosen += names if len(names) <= need else [
            names[int(i)] for i in np.linspace(0, len(names) - 1, need).round()]
    return chosen, [t for t in a.trials["trial"].to_list() if t not in set(chosen)]


def _draw(a: Analysis, tmp: Path, notes: list[str], scale_params: Mapping[str, float]
          ) -> tuple[list[str], list[str]]:
    (tmp / "figures").mkdir()
    drawn: list[str] = []
    chosen, skipped = _pick_trials(a, a.settings.max_trial_figures)
    jobs = [("figures/leads.png", figures.lead_distributions, ()),
            ("figures/floors_vs_scale.png", partial(figures.floors_vs_scale,
                                                    params=scale_params), ())]
    for trial in chosen:
        jobs.append((f"figures/curves_{_safe(trial)}.png", figures.trial_curves, (trial,)))
        jobs.append((f"figures/heatmap_{_safe(trial)}.png", figures.rankme_heatmap, (trial,)))
    for rel, fn, args in jobs:
        try:
            fn(a, *args, tmp / rel)
            drawn.append(rel)
        except Exception as err:  # a figure is never worth losing the report for
            notes.append(f"Figure {rel} not drawn: {type(err).__name__}: {err}")
    return drawn, skipped


# Folders other commands write inside a report folder, which a new report carries over
# whole: each is recognised by its own index, ``<name>.md`` inside it (emerge multiverse
# writes its tables and curves, with their index multiverse.md, to the report's multiverse/).
CARRIED: tuple[str, ...] = ("multiverse",)


class ReportTargetError(ValueError):
    """A report folder that may not be written: it would replace what the report did not
    write. The message is one line naming the path and what to do."""


def _own_files(out_dir: Path) -> set[str] | None:
    """The files an earlier report in ``out_dir`` wrote (its ``report.json`` lists them), or
    None when ``out_dir`` holds no report of emerge's."""
    try:
        record = json.loads((out_dir / "report.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or "schema_version" not in record:
        return None
    listed = record.get("contents") or record.get("files") or ()
    return {str(f) for f in listed if isinstance(f, str)} | {"report.json"}


def check_report_target(out_dir: str | Path) -> None:
    """Refuse a report folder whose replacement would delete or rename what no report wrote:
    an existing file, or a folder holding anything but an earlier report (every file of it
    listed in its ``report.json``). A new or empty folder, or an earlier report, is fine."""
    out_dir = Path(out_dir)
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise ReportTargetError(f"--out {out_dir} is an existing file; the report is a folder "
                                "and replaces what is there: choose a new folder")
    carried = _carried_files(out_dir)  # kept: the next report carries them over
    present = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*")
                     if (not p.is_dir() or p.is_symlink())
                     and str(p.relative_to(out_dir)) not in carried)
    if not present:
        return  # an empty folder (empty subfolders included) loses nothing
    own = _own_files(out_dir)
    if own is None:
        raise ReportTargetError(
            f"--out {out_dir} already holds files that are not an emerge report "
            f"({', '.join(present[:3])}{', ...' if len(present) > 3 else ''}); the report "
            "replaces its folder whole: choose a new or empty folder")
    foreign = [f for f in present if f not in own]
    if foreign:
        raise ReportTargetError(
            f"--out {out_dir} holds an earlier report and files it did not write "
            f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); the report "
            "replaces its folder whole: move them out, or choose a new folder")


def _carried(out_dir: Path) -> list[str]:
    """The folders of ``CARRIED`` present in ``out_dir``, each with its own index."""
    return [name for name in CARRIED if not (out_dir / name).is_symlink()
            and (out_dir / name / f"{name}.md").is_file()]


def _carried_files(out_dir: Path) -> set[str]:
    """The files of the carried folders in ``out_dir``, relative to it."""
    return {str(p.relative_to(out_dir)) for name in _carried(out_dir)
            for p in (out_dir / name).rglob("*") if p.is_file()}


def _replace(tmp: Path, out_dir: Path) -> None:
    """Swap ``tmp`` in as ``out_dir`` by renames; the old report is removed afterwards."""
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def write_report(metrics: Metrics, out_dir: str | Path,
                 settings: AnalysisSettings | None = None, *,
                 analysis: Analysis | None = None,
                 calibrations: Sequence[Mapping[str, Any]] = (),
                 scale_params: Mapping[str, float] | None = None,
                 alerts: pl.DataFrame | None = None,
                 sections: Sequence[str] = ()) -> ReportSummary:
    """Analyse ``metrics`` and write the report folder ``out_dir``; return what was written.

    ``metrics``: for a run folder ``frames.load_metrics(run_dir)`` (a bare glob over
    ``metrics/**`` would also read parts a compaction superseded). ``analysis``: an
    ``analyze`` result already computed from ``metrics`` (then ``settings`` are its settings).
    ``scale_params``: parameter count per scale name, shown beside the scale in the figures
    (the caller's: the model registry needs torch, which the analysis does not import).
    ``calibrations`` and ``alerts``: the run folder's calibration records and live alerts
    (``store.read_alerts``), each a section of the report when there are any.
    ``sections``: Markdown lines appended to ``report.md`` (the caller's summary of a carried
    folder, e.g. the definition multiverse). The folders of ``CARRIED`` already in ``out_dir``
    are copied into the new report whole.
    """
    settings = analysis.settings if analysis is not None else settings or AnalysisSettings()
    out_dir = Path(out_dir)
    check_report_target(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    a = analysis
    if a is None:
        try:
            a = analyze(metrics, settings)
        except (pl.exceptions.ComputeError, FileNotFoundError, OSError) as err:
            notes.append(f"The metrics could not be read ({type(err).__name__}: {err}); "
                         "reporting an empty table.")
            a = analyze(empty_metrics(), settings)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        (tmp / "tables").mkdir()
        tables = []
        for name in _TABLES:
            rel = f"tables/{name}.csv"
            getattr(a, name).write_csv(tmp / rel)
            tables.append(rel)
        drawn, skipped = _draw(a, tmp, notes, scale_params or {})
        captions = {rel: figures.caption(a, rel) for rel in drawn}
        live: list[str] = []
        if alerts is not None:
            horizon = a.settings.alert_horizon
            matched = match_alerts(alerts, a.details, horizon)
            grid = a.behaviour.filter((pl.col("measure") == "accuracy")
                                      & pl.col("level").is_not_null())
            summary = alert_summary(matched, a.details, a.leads,
                                    baseline_precision(grid, a.details, horizon))
            for name, table in (("alerts", matched), ("alert_summary", summary)):
                table.write_csv(tmp / f"tables/{name}.csv")
                tables.append(f"tables/{name}.csv")
            live = alerts_section(summary, a.trials.height, horizon)
            chosen, _ = _pick_trials(a, a.settings.max_trial_figures)
            for trial in sorted(set(matched["trial"].to_list()) & set(chosen)):
                rel = f"figures/alerts_{_safe(trial)}.png"
                try:
                    alerts_figure(a, matched, trial, tmp / rel)
                    drawn.append(rel)
                    captions[rel] = alerts_caption(trial)
                except Exception as err:  # a figure is never worth losing the report for
                    notes.append(f"Figure {rel} not drawn: {type(err).__name__}: {err}")
        for name in _carried(out_dir):  # copied, not moved: the old report stays whole
            shutil.copytree(out_dir / name, tmp / name)  # until the swap
        text = (render(a, drawn, skipped, tables, notes, captions)
                + "\n".join([*live, *calibration_section(calibrations), *sections]))
        (tmp / "report.md").write_text(text)
        (tmp / "report.html").write_text(report_html(text, tmp))
        headline = headline_numbers(a)
        files = ("report.md", "report.html", *tables, *drawn, "report.json")
        # every file in the folder, those of figures that failed half-drawn included: the
        # next report may replace exactly these (check_report_target)
        contents = sorted({*files, *(str(p.relative_to(tmp)) for p in tmp.rglob("*")
                                     if p.is_file())})
        (tmp / "report.json").write_text(json.dumps({
            "schema_version": SCHEMA_VERSION, "config_hash": settings.config_hash(),
            "settings": asdict(settings), "headline": headline, "files": files,
            "contents": contents,
            "missing": [*a.missing, *notes], "trials_without_figures": skipped,
        }, indent=2, default=list))
        _replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ReportSummary(out_dir=out_dir, files=files, headline=headline,
                         missing=(*a.missing, *notes), analysis=a)
