"""Onsets, leads and classes: planted exactly, boundaries of the synchronous band."""

from __future__ import annotations

import polars as pl
import pytest

from emergence_core.analysis import AnalysisSettings, analyze, as_lazy
from emergence_core.metrics import Measure
from emergence_core.testing import SyntheticConfig, generate


@pytest.fixture(scope="module")
def planted():
    cfg = SyntheticConfig(tasks=("COPY", "ADD"), scales=(("s0", 2), ("s1", 4)), seeds=(0, 1))
    df, truth = generate(cfg)
    return analyze(df), truth


def test_every_planted_onset_lead_and_class_is_recovered(planted) -> None:
    a, truth = planted
    got = (a.leads.filter(pl.col("event") == "accuracy")
           .join(truth.onsets, on=["trial", "level", "measure"], how="full", nulls_equal=True))
    assert got.height == truth.onsets.height == 24 * 8
    assert got.filter(pl.col("onset_step").ne_missing(pl.col("onset_step_right"))).height == 0
    assert got.filter(pl.col("lead").ne_missing(pl.col("lead_right"))).height == 0
    assert got.filter(pl.col("class").ne_missing(pl.col("class_right"))).height == 0
    assert set(got["class"]) == {"precursor", "synchronous", "unresolved", "lagging"}
    # on these series (one change per event) both onset rules agree everywhere
    assert got["rules_agree"].all()


def test_headline_series_are_the_final_layer_and_the_events_level(planted) -> None:
    a, _ = planted
    rank = a.leads.filter((pl.col("measure") == Measure.RANKME) & (pl.col("event") == "accuracy"))
    assert (rank["layer"] == rank["scale"].replace_strict({"s0": 2, "s1": 4})).all()
    assert (rank["series_level"] == rank["level"]).all()
    pooled = a.leads.filter(pl.col("measure") == Measure.LLC)
    assert pooled["series_level"].null_count() == pooled.height and pooled["layer"].is_null().all()


def test_dense_cross_correlation_lag_equals_the_planted_lead(planted) -> None:
    a, _ = planted
    acc = a.leads.filter(pl.col("event") == "accuracy")
    assert set(acc.filter(pl.col("measure") == Measure.RANKME)["xcorr_lag"]) == {6}
    assert set(acc.filter(pl.col("measure") == Measure.LINEAR_PROBE)["xcorr_lag"]) == {0}


@pytest.mark.parametrize(("lead", "expected"), [(2, "precursor"), (1, "synchronous"),
                                                (0, "synchronous"), (-1, "synchronous"),
                                                (-2, "lagging")])
def test_one_probe_interval_is_the_edge_of_the_synchronous_band(lead: int, expected: str) -> None:
    cfg = SyntheticConfig(tasks=("COPY",), scales=(("s0", 2),), seeds=(0,), expensive=(),
                          per_layer=(Measure.RANKME,), leads=((Measure.RANKME, lead),),
                          steps=tuple(range(0, 20_000, 100)))  # spacing 100 everywhere
    a = analyze(generate(cfg)[0], AnalysisSettings(event_measures=("accuracy",)))
    assert set(a.leads["lead"]) == {100 * lead}
    assert set(a.leads["tolerance"]) == {100.0}
    assert set(a.leads["class"]) == {expected}


def test_a_sparse_measure_is_judged_on_its_own_grid_unless_told_otherwise() -> None:
    cfg = SyntheticConfig(tasks=("COPY",), scales=(("s0", 2),), seeds=(0,), per_layer=(),
                          expensive=(Measure.LLC,), leads=((Measure.LLC, 3),),
                          steps=tuple(range(0, 20_000, 100)), expensive_every=4)
    df, _truth = generate(cfg)
    wide = analyze(df, AnalysisSettings(event_measures=("accuracy",)))
    narrow = analyze(df, AnalysisSettings(event_measures=("accuracy",),
                                          measure_grid_tolerance=False))
    # events at probes 59, 89, 119; changes planted at the last checkpoint (every 4th probe)
    # at or before 56, 86, 116: 56, 84, 116
    assert wide.leads.sort("level")["lead"].to_list() == [300, 500, 300]
    assert set(wide.leads["tolerance"]) == {400.0}  # checkpoints every 4th probe
    # within a tolerance wider than the event's own interval: unresolved, not synchronous
    assert wide.leads.sort("level")["class"].to_list() == ["unresolved", "precursor",
                                                            "unresolved"]
    assert set(narrow.leads["tolerance"]) == {100.0}
    assert set(narrow.leads["class"]) == {"precursor"}


def test_a_flat_measure_has_no_onset_and_counts_in_the_denominator() -> None:
    cfg = SyntheticConfig(tasks=("COPY",), scales=(("s0", 2),), seeds=(0, 1), per_layer=(),
                          expensive=(Measure.FISHER_ERANK,), noise=0.0)
    df, _ = generate(cfg)
    flat = df.with_columns(pl.when(pl.col("measure") == Measure.FISHER_ERANK).then(7.0)
                           .otherwise(pl.col("value")).alias("value"))
    a = analyze(flat, AnalysisSettings(event_measures=("accuracy",)))
    assert set(a.leads["class"]) == {"no_onset"}
    r = a.rates.filter(pl.col("split_kind") == "all").row(0, named=True)
    assert (r["n"], r["precursor_k"], r["no_onset_k"]) == (6, 0, 6)


def _one_trial(leads: tuple, **kw) -> SyntheticConfig:
    return SyntheticConfig(tasks=("COPY",), scales=(("s0", 2),), seeds=(0,), leads=leads,
                           steps=tuple(range(0, 20_000, 100)), **kw)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_a_change_k_intervals_before_the_event_is_a_precursor_under_both_rules(k: int) -> None:
    cfg = _one_trial(((Measure.RANKME, k),), expensive=(), per_layer=(Measure.RANKME,))
    a = analyze(generate(cfg)[0], AnalysisSettings(event_measures=("accuracy",)))
    assert set(a.leads["lead"]) == set(a.leads["lead_nearest"]) == {100 * k}
    assert set(a.leads["class"]) == set(a.leads["class_nearest"]) == {"precursor"}
    assert set(a.leads["tolerance"]) == {100.0}


def test_a_later_unrelated_change_flips_the_nearest_rule_but_not_departure() -> None:
    """The measure departs 6 intervals before each event, then changes again 3 intervals
    after it (unrelated): nearest picks the later change and calls it lagging."""
    cfg = _one_trial(((Measure.RANKME, 6),), expensive=(), per_layer=(Measure.RANKME,),
                     noise=0.0)
    df, truth = generate(cfg)
    ev = truth.events.select("trial", "level", pl.col("step").alias("e"))
    later = (pl.col("measure") == Measure.RANKME) & pl.col("level").is_not_null()
    bumped = (df.join(ev, on=["trial", "level"], how="left", nulls_equal=True)
              .with_columns(pl.when(later & (pl.col("step") >= pl.col("e") + 300))
                            .then(pl.col("value") + 40.0).otherwise(pl.col("value"))
                            .alias("value")).drop("e"))
    a = analyze(bumped, AnalysisSettings(event_measures=("accuracy",)))
    per_level = a.leads.filter(pl.col("series_level").is_not_null())
    assert set(per_level["lead"]) == {600} and set(per_level["class"]) == {"precursor"}
    assert set(per_level["lead_nearest"]) == {-300}
    assert set(per_level["class_nearest"]) == {"lagging"}
    assert not per_level["rules_agree"].any()
    agree = a.rule_agreement.filter(pl.col("measure") == Measure.RANKME).row(0, named=True)
    assert agree["agree_k"] == 0 and agree["departure_precursor_k"] == agree["n"]


def test_a_ten_times_coarser_measure_is_judged_with_its_stated_tolerance_and_controlled() -> None:
    """Same true lead (5 probe intervals) for a cheap measure and for one probed every 10th
    step: the cheap one is a precursor; the coarse one is unresolved within its stated
    tolerance of 10 intervals, and the cheap measure read on the coarse grid is too."""
    cfg = _one_trial(((Measure.RANKME, 5), (Measure.LLC, 5)), per_layer=(Measure.RANKME,),
                     expensive=(Measure.LLC,), expensive_every=10)
    a = analyze(generate(cfg)[0], AnalysisSettings(event_measures=("accuracy",)))
    llc = a.leads.filter(pl.col("measure") == Measure.LLC)
    assert set(llc["tolerance"]) == {1000.0} and set(llc["interval"]) == {100.0}
    assert set(llc["class"]) == {"unresolved"}
    rk = a.leads.filter(pl.col("measure") == Measure.RANKME)
    assert set(rk["class"]) == {"precursor"} and set(rk["tolerance"]) == {100.0}
    ctrl = a.grid_control.filter(pl.col("measure") == Measure.RANKME)
    assert set(ctrl["grid"]) == {Measure.LLC} and ctrl.height == 3
    assert set(ctrl["tolerance"]) == {1000.0}
    assert set(ctrl["class"]) == {"unresolved"} and set(ctrl["class_full"]) == {"precursor"}
    s = a.grid_summary.filter(pl.col("measure") == Measure.RANKME).row(0, named=True)
    assert (s["n"], s["unresolved_k"], s["full_precursor_k"]) == (3, 3, 3)
    own = a.grid_summary.filter(pl.col("measure") == Measure.LLC).row(0, named=True)
    assert (own["n"], own["unresolved_k"]) == (3, 3)
    from emergence_core.analysis.markdown import render

    md = render(a, [], [], [])
    assert "llc is a precursor in 0/3 events" in md and "unresolved in 3/3 events" in md
    assert "tolerance 1000 steps" in md and "tolerance 100 steps" in md  # as in the table
    assert "On llc's grid, cheap measures keep 0/3 of their own-grid precursor verdicts" in md


def test_estimates_flagged_not_converged_are_left_out_of_onsets_and_counted() -> None:
    cfg = _one_trial(((Measure.LLC, 12),), per_layer=(), expensive=(Measure.LLC,),
                     expensive_every=2)
    df, _ = generate(cfg)
    # flag every LLC estimate after the first third as not converged
    cut = 20_000 // 3
    df = df.with_columns(pl.when((pl.col("measure") == Measure.LLC_CONVERGED)
                                 & (pl.col("step") > cut)).then(0.0)
                         .otherwise(pl.col("value")).alias("value"))
    a = analyze(df, AnalysisSettings(event_measures=("accuracy",)))
    assert a.series.filter((pl.col("measure") == Measure.LLC)
                           & (pl.col("step") > cut)).height == 0
    n_llc = df.filter(pl.col("measure") == Measure.LLC).height
    n_bad = df.filter((pl.col("measure") == Measure.LLC) & (pl.col("step") > cut)).height
    assert any(f"llc: {n_bad}/{n_llc} estimates flagged not converged" in m for m in a.missing)


def test_an_event_inside_the_collapse_keeps_the_collapse_change_points() -> None:
    """An event before the final layer reaches its floor: the collapse is the regime the
    measure departs in, so its change points stay candidates (not a spurious no_onset)."""
    from emergence_core.analysis import behaviour_rows, event_details, measure_leads

    cfg = _one_trial(((Measure.RANKME, 4),), expensive=(), per_layer=(Measure.RANKME,))
    df = generate(cfg)[0]
    lf = as_lazy(df)
    settings = AnalysisSettings(event_measures=("accuracy",))
    beh = behaviour_rows(lf)
    det = event_details(beh, settings)
    series = (lf.filter((pl.col("measure") == Measure.RANKME) & (pl.col("layer") == 2)
                        & pl.col("level").is_not_null()).collect())
    late = {"COPY-s0-seed0": 19_000}  # a collapse that ends after every event
    got = measure_leads(series, beh, det, settings, late).leads
    assert got["onset_step"].null_count() == 0
    assert set(got["lead"]) == {400} and set(got["class"]) == {"precursor"}


def test_a_measure_dense_only_around_events_is_judged_on_its_local_spacing() -> None:
    """Adaptive density's grid: the LLC every 10th probe, plus every probe within 3 of each
    event. A change 2 intervals before the event is then resolved (tolerance: the local
    spacing, 1 interval) where the uniform every-10th grid leaves it unresolved."""
    cfg = _one_trial(((Measure.LLC, 2),), per_layer=(Measure.RANKME,),
                     expensive=(Measure.LLC,), expensive_every=1)
    df, truth = generate(cfg)
    events = truth.events["step"].drop_nulls().to_list()
    is_llc = pl.col("measure") == Measure.LLC
    coarse = pl.col("step") % 1000 == 0
    near = pl.any_horizontal([(pl.col("step") - e).abs() <= 300 for e in events])
    settings = AnalysisSettings(event_measures=("accuracy",))
    dense = analyze(df.filter(~is_llc | coarse | near), settings)
    uniform = analyze(df.filter(~is_llc | coarse), settings)
    llc = dense.leads.filter(pl.col("measure") == Measure.LLC)
    assert llc.height == len(events) and set(llc["measure_spacing"]) == {100.0}
    assert set(llc["tolerance"]) == {100.0} and set(llc["lead"]) == {200}
    assert set(llc["class"]) == {"precursor"}
    coarse_llc = uniform.leads.filter(pl.col("measure") == Measure.LLC)
    assert set(coarse_llc["tolerance"]) == {1000.0}
    assert set(coarse_llc["class"]) == {"unresolved"}


def _recovery_table(noise: float = 0.05) -> pl.DataFrame:
    """One trial, one level: RankMe falls from 20 to its floor 5 by step 200, stays there,
    leaves it at step 600 and climbs slowly to 15 at step 1500, where accuracy jumps from 0
    to 1 (chance 0): the gradual recovery of MOD's centred RankMe."""
    import numpy as np

    steps = np.arange(0, 2001, 10)
    rng = np.random.default_rng(0)
    rank = np.interp(steps, [0, 200, 600, 1500, 2000], [20, 5, 5, 15, 15])
    rows = [("accuracy", 1, None, int(t), float(t >= 1500)) for t in steps]
    rows.append(("chance", 1, None, 0, 0.0))
    for layer in (0, 1, 2):
        for level in (1, None):  # per level and pooled (the trial's collapse end)
            values = np.zeros(steps.size) if layer == 0 else \
                rank * layer / 2 + noise * rng.standard_normal(steps.size)
            rows += [("rankme", level, layer, int(t), float(v)) for t, v in
                     zip(steps, values, strict=True)]
    df = pl.DataFrame(rows, schema={"measure": pl.String, "level": pl.Int8, "layer": pl.Int16,
                                    "step": pl.Int64, "value": pl.Float64}, orient="row")
    return df.with_columns(pl.lit("rec").alias("sweep"), pl.lit("MOD-s0-0").alias("trial"),
                           pl.lit("MOD").alias("task"), pl.lit("s0").alias("scale"),
                           pl.lit(0).cast(pl.Int64).alias("seed"),
                           pl.lit("trial").alias("source"))


def test_on_a_gradual_recovery_the_two_onset_rules_part() -> None:
    """Departure finds the regime the measure is in at the event: the staircase segmentation
    cuts into the climb, so its last step lies near the event. First finds when the measure
    left its floor (planted: step 600), 900 steps before the event."""
    a = analyze(_recovery_table(), AnalysisSettings(n_bootstrap=50))
    row = a.leads.filter((pl.col("event") == "accuracy") & (pl.col("measure") == "rankme")
                         ).row(0, named=True)
    assert row["event_step"] == 1500
    # constant-mean segmentation cuts a ramp into a staircase: its first step lies within
    # the climb's first segment (here 10 probes), its last near the event
    assert 600 <= row["onset_first"] <= 750
    assert row["class_first"] == "precursor" and row["lead_first"] >= 750
    assert row["onset_step"] >= 1300 and row["lead"] <= 200
    first = a.rates_first.filter((pl.col("measure") == "rankme")
                                 & (pl.col("split_kind") == "all")).row(0, named=True)
    assert (first["precursor_k"], first["n"]) == (1, 1)
    h = a.hierarchy_first.filter(pl.col("measure") == "rankme").row(0, named=True)
    assert h["median_lead"] == row["lead_first"]
