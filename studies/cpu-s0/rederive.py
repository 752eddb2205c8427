"""Re-derive the committed tables that later analysis fixes change, from the committed ones.

    python studies/cpu-s0/rederive.py          # rewrite them in report/tables/
    python studies/cpu-s0/rederive.py --check  # exit 1 if a rewrite would change a table

The raw run folder of this study is not committed, but two of its intermediate tables are
what the fixes of issue 25 read, and they are deterministic functions of the run:

- ``collapse.csv`` (every (trial, level, layer) RankMe series' floor, depth and collapse
  step) gives ``topdown.csv`` and ``topdown_summary.csv`` under the current voting rule
  (only layers that collapse, never the embedding, at least three of them);
- ``leads.csv`` (each event's change points already chosen) and ``onsets.csv`` (each
  series' first change point after the collapse floor) give the onset rule ``first`` beside
  ``departure`` and ``nearest``: ``leads.csv`` with its columns, ``rates*.csv``,
  ``rule_agreement.csv``, ``hierarchy*.csv``;
- ``variants.csv``: its centred-RankMe rows are recomputed from ``collapse.csv``; the
  uncentred rows keep their floors (the floor definition did not change) and their
  precursor counts are recomputed from ``leads.csv``, but their top-down columns are left
  empty, because the uncentred per-layer collapse rows were not committed;
- ``signals.csv`` (each event's onset and floor depth) gives ``prediction.csv``, whose
  intervals follow the current rule (Wilson below ``bootstrap_min_seeds`` seeds).

Everything else in ``report/`` (report.md, figures, the other tables) is as the sweep's
``emerge analyze`` wrote it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl

from emergence_core.analysis.collapse import topdown, topdown_share
from emergence_core.analysis.leads import classify
from emergence_core.analysis.pipeline import rule_agreement, rule_rates
from emergence_core.analysis.prediction import prediction_limits
from emergence_core.analysis.rates import hierarchy, precursor_rates
from emergence_core.analysis.settings import AnalysisSettings
from emergence_core.analysis.variants import variants_table

HERE = Path(__file__).resolve().parent
TABLES = HERE / "report" / "tables"

# leads.csv's columns before classify() adds the derived ones, in measure_leads' order
_RAW = ["event", "trial", "level", "measure", "layer", "series_level", "event_step",
        "interval", "onset_step", "onset_first", "onset_nearest", "measure_spacing",
        "n_changepoints", "xcorr_lag", "xcorr_lag_steps", "xcorr_r"]
_META = ["task", "scale", "seed", "source", "unit", "difficulty"]


def _read(name: str, **schema: pl.DataType) -> pl.DataFrame:
    return pl.read_csv(TABLES / f"{name}.csv", schema_overrides=schema,
                       null_values=[""], infer_schema_length=100_000)


def settings() -> AnalysisSettings:
    """The study's settings (report.json) with the current defaults of the fixed fields."""
    kept = json.loads((HERE / "report" / "report.json").read_text())["settings"]
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kept.items()
              if k not in ("topdown_min_layers", "topdown_min_depth", "topdown_embedding")}
    return AnalysisSettings(**fields)


def rederive() -> dict[str, pl.DataFrame]:
    s = settings()
    collapse = _read("collapse", level=pl.Int8, layer=pl.Int16, seed=pl.Int64,
                     recovery_step=pl.Int64, depth=pl.Float64)
    td = topdown(collapse, s)
    share = pl.DataFrame([topdown_share(collapse, td, s)])
    old = _read("leads", level=pl.Int8, series_level=pl.Int8, layer=pl.Int16,
                xcorr_lag=pl.Int64, xcorr_lag_steps=pl.Int64, xcorr_r=pl.Float64,
                onset_step=pl.Int64, onset_nearest=pl.Int64)
    onsets = _read("onsets", level=pl.Int8, first_onset=pl.Int64)
    if "onset_first" not in old.columns:
        old = old.join(onsets.rename({"level": "series_level", "first_onset": "onset_first"}),
                       on=["trial", "measure", "series_level"], how="left", nulls_equal=True)
    leads = classify(old.select(_RAW), s.measure_grid_tolerance).join(
        old.select(["event", "trial", "level", "measure", *_META]).unique(),
        on=["event", "trial", "level", "measure"], how="left", nulls_equal=True)
    rates = precursor_rates(leads, s)
    signals = _read("signals", level=pl.Int8, seed=pl.Int64, event_step=pl.Int64,
                    onset=pl.Float64, floor_depth=pl.Float64)
    rates_first = rule_rates(leads, s, "_first")
    hier = hierarchy(leads, rates, min_onsets=s.rank_min_onsets)
    scales = collapse.group_by("scale").agg(pl.col("layer").max().cast(pl.Int64)
                                            .alias("n_layers"))
    variants = variants_table(collapse, scales, rates, hier, s, rates_first)
    committed = _read("variants")
    uncentred = committed.filter(pl.col("measure") != s.collapse_measure)
    if uncentred.height:  # floors as committed, precursors recomputed, top-down unknown
        acc = rates.filter((pl.col("event") == "accuracy") & (pl.col("split_kind") == "all"))
        first = rates_first.filter((pl.col("event") == "accuracy")
                                   & (pl.col("split_kind") == "all"))
        rows = []
        for r in uncentred.iter_rows(named=True):
            r = {**r, **{k: None for k in ("topdown_k", "topdown_n", "topdown_lo",
                                           "topdown_hi", "layers_median", "n_constant",
                                           "topdown_changed")},
                 "topdown_ci": "not re-derived (per-layer rows not committed)"}
            if r["scope"] == "per level":
                a = acc.filter(pl.col("measure") == r["measure"])
                f = first.filter(pl.col("measure") == r["measure"])
                if a.height:
                    a0 = a.row(0, named=True)
                    r |= {"precursor_k": a0["precursor_k"], "precursor_n": a0["n"],
                          "precursor_lo": a0["precursor_lo"],
                          "precursor_hi": a0["precursor_hi"], "precursor_ci": a0["ci_method"]}
                if f.height:
                    f0 = f.row(0, named=True)
                    r |= {"precursor_first_k": f0["precursor_k"],
                          "precursor_first_lo": f0["precursor_lo"],
                          "precursor_first_hi": f0["precursor_hi"]}
                h = hier.filter((pl.col("event") == "accuracy")
                                & (pl.col("measure") == r["measure"]))
                r["hierarchy_rank"] = int(h["rank"][0]) if h.height \
                    and h["rank"][0] is not None else None
            r["changes"] = "; ".join(p for p in str(r["changes"]).split("; ")
                                     if "top-down" not in p) or "none"
            rows.append({k: r.get(k) for k in variants.columns})
        variants = pl.concat([variants, pl.DataFrame(rows, schema=variants.schema)])
    return {"topdown": td, "topdown_summary": share, "leads": leads, "rates": rates,
            "rates_first": rates_first, "rates_nearest": rule_rates(leads, s, "_nearest"),
            "rule_agreement": rule_agreement(leads), "hierarchy": hier,
            "hierarchy_first": hierarchy(leads, rates_first, "_first", s.rank_min_onsets),
            "variants": variants, "prediction": prediction_limits(
                signals, sorted(signals["scale"].unique().to_list()), s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    args = ap.parse_args()
    stale = []
    for name, table in rederive().items():
        path = TABLES / f"{name}.csv"
        text = table.write_csv()
        if not path.exists() or path.read_text() != text:
            stale.append(name)
            if not args.check:
                path.write_text(text)
    print(("stale: " if args.check else "rewritten: ") + (", ".join(stale) or "none"))
    sys.exit(1 if args.check and stale else 0)


if __name__ == "__main__":
    main()
