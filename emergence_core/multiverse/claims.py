"""Each claim's statistic and verdict under every combination of the stated choices.

A *specification* fixes the collapse measure's definition (``definitions.Definition``: formula,
centring, position, reading point, samples), the scope (per level or pooled over levels),
the onset rule (``departure`` or ``first``) and the emergence threshold. For each definition
and threshold the statistics stage runs as it runs on the headline (``analyze`` with that
definition as its collapse and signal measure), and each claim reads its statistic from
the result exactly as the report does; the claims that do not involve the collapse measure
(the LLC's and the Hessian's) vary with the onset rule and threshold only. A choice that a
claim does not depend on is not varied for it (floors and top-down do not depend on the
events, so not on the threshold or the onset rule), so no specification is counted twice.

The verdict is the studies' rule: *reproduced* when the spec's interval overlaps the
published figure (``CLAIMS``' reference, from the study), *not reproduced* when it does not,
*not measurable* without an interval (one scale, no verdict, fewer than ``MIN_ONSETS``
events with an onset of the measure).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import polars as pl

from emergence_core.analysis.collapse import topdown, topdown_share, trial_floors
from emergence_core.analysis.settings import BEHAVIOUR_MEASURES, AnalysisSettings
from emergence_core.metrics import Measure
from emergence_core.multiverse.definitions import parse_definition

if TYPE_CHECKING:
    from emergence_core.analysis.pipeline import Analysis

__all__ = ["CLAIMS", "MIN_ONSETS", "SCHEMA", "Claim", "multiverse_table"]

MIN_ONSETS = 5  # a rate over events at which fewer have an onset says nothing
RULES = ("departure", "first")


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    reference: tuple[float, float] | None  # the published figure as a range
    study: str  # the published figure in words
    uses_definition: bool  # False: the LLC's and Hessian's claims
    uses_events: bool  # True: varies with the threshold and (rates) the onset rule
    scopes: tuple[str, ...] = ("per level",)
    rules: tuple[str, ...] = ("-",)


CLAIMS = (
    Claim("mod_floor", "MOD's collapse measure reaches a floor of about 2.0", (1.5, 2.5),
          "about 2.0 (taken as 1.5-2.5)", True, False, ("per level", "pooled")),
    Claim("topdown", "Collapse runs top-down (output layers first)", (28 / 32, 1.0),
          "28-32 of 32", True, False, ("per level", "pooled")),
    Claim("precursor_hard", "The collapse measure is a precursor of hard-task emergence",
          (0.75, 1.0), "75-100%", True, True, rules=RULES),
    Claim("concordance", "Within-class concordance of the measure's onsets with emergence "
          "order", (0.52, 0.69), "52-69%", True, True),
    Claim("llc_precursor", "The LLC moves with emergence, not before it (precursor rate)",
          (0.0, 0.0), "0 of 24", False, True, rules=RULES),
    Claim("hessian_lag", "Hessian measures lag emergence (lagging rate, top eigenvalue)",
          (0.5, 1.0), "lagging (taken as a majority: 50-100%)", False, True, rules=RULES),
)

SCHEMA = {"claim": pl.String, "definition": pl.String, "formula": pl.String,
          "centre": pl.Boolean, "position": pl.String, "reading": pl.String,
          "samples": pl.Int64, "scope": pl.String, "rule": pl.String,
          "threshold": pl.Float64, "value": pl.Float64, "k": pl.Float64, "n": pl.Int64,
          "lo": pl.Float64, "hi": pl.Float64, "verdict": pl.String, "headline": pl.Boolean}


def _verdict(claim: Claim, lo: float | None, hi: float | None) -> str:
    if claim.reference is None or lo is None or hi is None:
        return "not measurable"
    return "reproduced" if lo <= claim.reference[1] and hi >= claim.reference[0] \
        else "not reproduced"


def _rate(rates: pl.DataFrame, measure: str, cls: str, split_kind: str, split: str
          ) -> dict | None:
    r = rates.filter((pl.col("event") == "accuracy") & (pl.col("measure") == measure)
                     & (pl.col("split_kind") == split_kind) & (pl.col("split") == split))
    if r.height == 0:
        return None
    r = r.row(0, named=True)
    enough = r["n"] - r["no_onset_k"] >= MIN_ONSETS
    return {"value": r[f"{cls}_rate"], "k": float(r[f"{cls}_k"]), "n": r["n"],
            "lo": r[f"{cls}_lo"] if enough else None, "hi": r[f"{cls}_hi"] if enough else None}


def _floor(a: Analysis, scope: str) -> dict | None:
    f = trial_floors(a.collapse, scope == "pooled").filter(pl.col("task") == "MOD")
    if f.height == 0:
        return None
    return {"value": f["floor"].median(), "k": None, "n": f.height, "lo": f["floor"].min(),
            "hi": f["floor"].max()}


def _topdown(a: Analysis, scope: str) -> dict | None:
    pooled = scope == "pooled"
    s = topdown_share(a.collapse, topdown(a.collapse, a.settings, pooled), a.settings, pooled)
    if not s["n"]:
        return {"value": None, "k": 0.0, "n": 0, "lo": None, "hi": None}
    return {"value": s["k"] / s["n"], "k": float(s["k"]), "n": s["n"], "lo": s["lo"],
            "hi": s["hi"]}


def _concordance(a: Analysis) -> dict | None:
    p = a.prediction.filter((pl.col("signal") == "onset") & (pl.col("statistic") ==
                                                              "concordance")
                            & (pl.col("scope") == "all"))
    if p.height == 0 or not p["n"][0]:
        return None
    r = p.row(0, named=True)
    return {"value": r["value"], "k": r["k"], "n": r["n"], "lo": r["lo"], "hi": r["hi"]}


def _statistic(claim: Claim, a: Analysis, measure: str, scope: str, rule: str) -> dict | None:
    rates = a.rates if rule in ("departure", "-") else a.rates_first
    if claim.key == "mod_floor":
        return _floor(a, scope)
    if claim.key == "topdown":
        return _topdown(a, scope)
    if claim.key == "precursor_hard":
        return _rate(rates, measure, "precursor", "difficulty", "hard")
    if claim.key == "concordance":
        return _concordance(a)
    if claim.key == "llc_precursor":
        return _rate(rates, Measure.LLC, "precursor", "all", "all")
    if claim.key == "hessian_lag":
        return _rate(rates, Measure.HESSIAN_LAMBDA_MAX, "lagging", "all", "all")
    raise ValueError(f"unknown claim {claim.key!r}")


def multiverse_table(metrics: pl.DataFrame, multiverse: pl.DataFrame,
                     settings: AnalysisSettings, thresholds: Iterable[float],
                     headline: str, claims: Iterable[Claim] = CLAIMS,
                     analyze: Callable | None = None, progress=None) -> pl.DataFrame:
    """One row per (claim, specification): ``SCHEMA``.

    ``metrics``: the run's own rows (the behaviour, and the LLC and Hessian for their
    claims); ``multiverse``: the recomputed definitions' rows (``recompute``); ``headline``:
    the definition name that is the study's own (marked ``headline`` at the settings'
    threshold, per level, departure rule).
    """
    if analyze is None:
        from emergence_core.analysis.pipeline import analyze
    claims = tuple(claims)
    thresholds = tuple(dict.fromkeys(float(t) for t in thresholds))
    behaviour = metrics.filter(pl.col("measure").is_in(list(BEHAVIOUR_MEASURES)))
    others = metrics.filter(pl.col("measure").is_in([Measure.LLC, Measure.LLC_CONVERGED,
                                                      Measure.HESSIAN_LAMBDA_MAX]))
    parts = {k[0]: v for k, v in multiverse.partition_by("measure", as_dict=True).items()}
    rows: list[dict] = []
    jobs = [(t, name) for t in thresholds for name in sorted(parts)]
    for i, (t, name) in enumerate(jobs):
        s = replace(settings, threshold=t, collapse_measure=name, signal_measure=name,
                    measures=(name,))
        a = analyze(pl.concat([behaviour, parts[name]], how="vertical_relaxed"), s)
        d = parse_definition(name)
        for c in claims:
            if not c.uses_definition or (not c.uses_events and t != thresholds[0]):
                continue
            for scope in c.scopes:
                for rule in c.rules:
                    rows.append(_row(c, a, name, d, scope, rule, t, settings, headline))
        if progress is not None:
            progress(i + 1, len(jobs))
    for t in thresholds:  # the claims without the collapse measure: threshold and rule only
        fixed = [c for c in claims if not c.uses_definition]
        if not fixed or others.height == 0:
            continue
        s = replace(settings, threshold=t, measures=(Measure.LLC, Measure.HESSIAN_LAMBDA_MAX))
        a = analyze(pl.concat([behaviour, others], how="vertical_relaxed"), s)
        for c in fixed:
            for rule in c.rules:
                rows.append(_row(c, a, None, None, "-", rule, t, settings, headline))
    return pl.DataFrame(rows, schema=SCHEMA)


def _row(c: Claim, a: Analysis, name: str | None, d, scope: str, rule: str, t: float,
         settings: AnalysisSettings, headline: str) -> dict:
    stat = _statistic(c, a, name or "", scope, rule) or {}
    head = (t == settings.threshold and scope in ("per level", "-")
            and rule in ("departure", "-") and (name is None or name == headline))
    return {"claim": c.key, "definition": name or "-",
            "formula": d.formula if d else None, "centre": d.centre if d else None,
            "position": d.position if d else None, "reading": d.reading if d else None,
            "samples": d.samples if d else None, "scope": scope, "rule": rule,
            "threshold": t if c.uses_events else None, "value": stat.get("value"),
            "k": stat.get("k"), "n": stat.get("n"), "lo": stat.get("lo"),
            "hi": stat.get("hi"), "verdict": _verdict(c, stat.get("lo"), stat.get("hi")),
            "headline": head}
