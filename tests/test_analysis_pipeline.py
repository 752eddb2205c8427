"""The whole stage: Pythia rows, partial and empty tables, settings, purity."""

from __future__ import annotations

import subprocess
import sys

import polars as pl
import pytest

from emergence_core.analysis import AnalysisSettings, analyze, empty_metrics, load_metrics
from emergence_core.metrics import Measure
from emergence_core.testing import SyntheticConfig, generate, pythia_steps, write_synthetic

PYTHIA = SyntheticConfig(
    tasks=("grammar", "arithmetic", "icl"), levels=(None,), seeds=(0,),
    scales=(("EleutherAI/pythia-160m", 12), ("EleutherAI/pythia-410m", 24)),
    steps=tuple(int(s) for s in pythia_steps()), per_layer=(Measure.RANKME,), expensive=(),
    leads=((Measure.RANKME, 6),), collapse_index=8, layer_gap=1, source="pythia",
    sweep="pythia", extras=False)


def test_pythia_rows_get_events_floors_topdown_and_leads() -> None:
    df, truth = generate(PYTHIA)
    assert df["level"].null_count() == df.height and set(df["source"]) == {"pythia"}
    a = analyze(df)
    acc = a.events.filter(pl.col("measure") == "accuracy").join(truth.events, on="trial")
    assert acc.height == 6 and (acc["step"] == acc["step_right"]).all()
    assert a.scale_order == ["EleutherAI/pythia-160m", "EleutherAI/pythia-410m"]
    assert a.floors.height == 6
    assert set(a.topdown["verdict"]) == {"top-down"}
    assert set(a.leads.filter(pl.col("event") == "accuracy")["class"]) == {"precursor"}
    assert a.difficulty["unit"].to_list()[:3] == ["arithmetic", "grammar", "icl"]
    assert not any("absent from the whole table" in m for m in a.missing)


def test_a_table_missing_whole_measures_says_so_and_still_runs() -> None:
    df, _ = generate(SyntheticConfig(tasks=("COPY",), seeds=(0,)))
    partial = df.filter(~pl.col("measure").is_in([Measure.LLC, Measure.HESSIAN_LAMBDA_MAX,
                                                  Measure.RANKME]))
    a = analyze(partial)
    assert Measure.LLC not in a.measures and Measure.RANKME not in a.measures
    assert any("llc" in m and "hessian_lambda_max" in m and "rankme" in m for m in a.missing)
    assert a.floors.height == 0 and a.topdown.height == 0
    assert a.leads.height > 0  # the other measures are still analysed


def test_trials_without_accuracy_or_events_are_listed() -> None:
    df, _ = generate(SyntheticConfig(tasks=("COPY", "ADD"), seeds=(0,),
                                     never=(("ADD", 2, "s0"),)))
    a = analyze(df.filter(~((pl.col("trial") == "COPY-s1-seed0")
                            & (pl.col("measure") == Measure.ACCURACY))))
    assert any("no accuracy rows: COPY-s1-seed0" in m for m in a.missing)
    assert any("never reach the accuracy threshold" in m and "ADD-s0-seed0/L2" in m
               for m in a.missing)


def test_an_empty_table_gives_empty_tables() -> None:
    a = analyze(empty_metrics())
    assert a.n_rows == 0 and a.events.height == 0 and a.leads.height == 0
    assert a.rates.height == 0 and a.floors.height == 0
    assert a.missing == ("The metrics table is empty: no trials, no measures, nothing to analyse.",)


def test_parquet_on_disk_scans_lazily_to_the_same_answer(tmp_path) -> None:
    cfg = SyntheticConfig(tasks=("COPY",), seeds=(0,), expensive=(), per_layer=("rankme",))
    truth, rows = write_synthetic(cfg, tmp_path)
    lf = load_metrics(tmp_path)
    assert isinstance(lf, pl.LazyFrame)
    a = analyze(lf)
    assert a.n_rows == rows
    acc = a.events.filter(pl.col("measure") == "accuracy").join(truth.events,
                                                                 on=["trial", "level"])
    assert (acc["step"] == acc["step_right"]).all()
    assert load_metrics(tmp_path / "nothing").collect().height == 0


def test_settings_refuse_bad_values_naming_the_field() -> None:
    with pytest.raises(ValueError, match="smooth_window"):
        AnalysisSettings(smooth_window=4)
    with pytest.raises(ValueError, match="threshold"):
        AnalysisSettings(threshold=1.5)
    with pytest.raises(ValueError, match="hard"):
        AnalysisSettings(hard="ADD:3")  # type: ignore[arg-type]
    assert AnalysisSettings().config_hash() != AnalysisSettings(threshold=0.6).config_hash()


def test_the_analysis_package_imports_neither_ray_nor_mlflow() -> None:
    code = ("import sys, emergence_core.analysis, emergence_core.analysis.report; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
