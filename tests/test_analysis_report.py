"""The report: files, planted numbers in the Markdown, partial and empty data, atomicity."""

from __future__ import annotations

import json

import polars as pl
import pytest

from emergence_core.analysis import (
    AnalysisSettings,
    SyntheticConfig,
    empty_metrics,
    generate,
    write_report,
)
from emergence_core.metrics import Measure

SETTINGS = AnalysisSettings(max_trial_figures=2, n_bootstrap=200)


@pytest.fixture(scope="module")
def planted():
    cfg = SyntheticConfig(tasks=("COPY", "ADD"), scales=(("s0", 2), ("s1", 4)), seeds=(0, 1),
                          positions=("sep",), expensive=(Measure.LLC, Measure.FISHER_ERANK))
    return generate(cfg)


def test_report_on_planted_data_states_the_planted_numbers(planted, tmp_path) -> None:
    df, _ = planted
    s = write_report(df.lazy(), tmp_path / "report", SETTINGS)
    md = (tmp_path / "report" / "report.md").read_text()
    for rel in s.files:
        assert (tmp_path / "report" / rel).is_file(), rel
    assert "figures/leads.png" in s.files and "figures/floors_vs_scale.png" in s.files
    assert sum(f.startswith("figures/curves_") for f in s.files) == 2
    # planted: 8 trials x 3 levels, all emerge; RankMe leads by 6 probes, LLC lags by 12,
    # the linear probe is synchronous; every layer order top-down; 2 seeds -> a CI
    assert "accuracy: 24/24 (trial, level) series emerge" in md
    assert "rankme is a precursor in 24/24 events (100%, 95% CI 100-100%)" in md
    assert "llc is a precursor in 0/24 events (0%, 95% CI 0-0%)" in md
    assert "lagging in 24/24 events (100%)" in md
    assert "linear_probe is a precursor in 0/24 events" in md
    assert "synchronous in 24/24 events (100%)" in md
    assert "Top-down: 4/4 (task, scale) combinations are top-down" in md
    assert "Per-trial figures drawn for 2/8 trials (max_trial_figures = 2)" in md
    assert "- Nothing: every expected table could be computed." not in md  # 3 measures absent
    assert "hessian_lambda_max" in md and "absent from the whole table" in md
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert summary["headline"]["topdown/count"] == 4.0
    assert s.headline["precursor_rate/rankme"] == 1.0
    assert s.headline["events/accuracy/emerged"] == 24.0
    rates = pl.read_csv(tmp_path / "report" / "tables" / "rates.csv")
    assert rates.filter((pl.col("measure") == "llc") & (pl.col("split_kind") == "all")
                        & (pl.col("event") == "accuracy"))["lagging_k"][0] == 24
    # issue 11: chance rates, both onset rules, the stated tolerance, the same-grid control,
    # the variants table and an interval (and its method) on every rate
    assert "chance-corrected accuracy (accuracy - chance) / (1 - chance)" in md
    assert "Chance per task level" in md and "| COPY | 1 | 0.1 |" in md
    assert "Onset rules side by side" in md and "Variant: the change point nearest" in md
    assert "tolerance 13 to 88 steps" in md  # rankme: stated per event, in steps
    assert "Same-grid control" in md
    assert "## Robustness: how RankMe is measured" in md
    assert "| rankme / per level |" in md and "| rankme_uncentred / pooled |" in md
    assert "(seed bootstrap)" in md
    assert "4/4 (task, scale) combinations are top-down (95% CI" in md
    assert "rests on the non-constant layers only: 2 to 4 layers" in md
    for name in ("chances", "variants", "rule_agreement", "grid_summary", "rates_nearest"):
        assert f"tables/{name}.csv" in s.files
    leads = pl.read_csv(tmp_path / "report" / "tables" / "leads.csv")
    assert {"tolerance", "class", "class_nearest", "onset_nearest"} <= set(leads.columns)


def test_report_on_an_empty_table_says_so(tmp_path) -> None:
    s = write_report(empty_metrics(), tmp_path / "r", SETTINGS)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "The metrics table is empty" in md
    assert "0 metric rows, 0 trials" in md
    assert (tmp_path / "r" / "tables" / "events.csv").is_file()
    assert s.headline["rows"] == 0.0


def test_report_on_unreadable_metrics_is_a_report_not_a_traceback(tmp_path) -> None:
    s = write_report(pl.scan_parquet(str(tmp_path / "none" / "**" / "*.parquet")),
                     tmp_path / "r", SETTINGS)
    assert any("could not be read" in m for m in s.missing)
    assert "could not be read" in (tmp_path / "r" / "report.md").read_text()


def test_report_missing_whole_measures_lists_them(planted, tmp_path) -> None:
    df, _ = planted
    partial = df.filter(~pl.col("measure").is_in([Measure.RANKME, Measure.LOGPROB]))
    write_report(partial, tmp_path / "r", SETTINGS)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Measures absent from the whole table: rankme" in md
    assert "8/8 trials have no rankme rows" in md
    assert "No logprob_norm series: no logprob_norm events." in md
    assert "0 (trial, level) series have a floor." in md
    assert "rankme_uncentred is a precursor in 24/24 events" in md
    assert ".png not drawn: ValueError: no pooled per-layer rankme rows for" in md


def test_a_new_report_replaces_the_old_one_whole(planted, tmp_path) -> None:
    df, _ = planted
    out = tmp_path / "report"
    write_report(empty_metrics(), out, SETTINGS)
    (out / "stale.txt").write_text("from the old report")
    write_report(df.filter(pl.col("trial").str.starts_with("COPY-s0")), out, SETTINGS)
    assert not (out / "stale.txt").exists()
    assert "4 trials" not in (out / "report.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temp folders left
