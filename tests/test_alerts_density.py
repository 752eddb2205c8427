"""Live alerts and adaptive density: planted change points, the budget, replayed decisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from emergence_core.config import AlertConfig, resolve_config
from emergence_core.emergence_rule import EmergenceRule
from emergence_core.plan import trial_plan
from emergence_core.run_folder import RunFolder
from emergence_core.store import TrialStore, read_alerts
from emergence_core.trial.alerts import ALERTS_SCHEMA, AlertDetector
from emergence_core.trial.density import DensePlanner
from emergence_core.trial.runner import TrialHooks, run_trial
from tests.conftest import tiny_overrides

# -- the detector on planted series -----------------------------------------------------------


def _feed(series: dict[tuple, np.ndarray], steps: np.ndarray, accuracy: np.ndarray,
          cfg: AlertConfig | None = None, events: dict[int, int] | None = None,
          total: int | None = None):
    """Run the detector over level-1 series {(measure, layer): values} and an accuracy."""
    det = AlertDetector(cfg or AlertConfig(min_step=0.0), total_steps=total or int(steps[-1]),
                        threshold=0.5, chance={1: 0.0})
    out = []
    for i, s in enumerate(steps):
        rows = [("accuracy", None, 1, float(accuracy[i]))]
        rows += [(m, layer, 1, float(v[i])) for (m, layer), v in series.items()]
        out += det.update(int(s), rows, {lv: e for lv, e in (events or {}).items() if e <= s})
    return out


STEPS = np.arange(0, 200, 2)  # 100 probe steps


def test_a_planted_level_shift_alerts_with_its_onset() -> None:
    rng = np.random.default_rng(0)
    rank = 20 + rng.normal(0, 0.2, STEPS.size)
    shift_at = 60  # index: step 120
    rank[shift_at:] -= 6
    alerts = _feed({("rankme", 2): rank}, STEPS, np.zeros(STEPS.size))
    assert [(a.kind, a.measure, a.layer, a.level) for a in alerts] == \
        [("precursor", "rankme", 2, 1)]
    a = alerts[0]
    assert a.onset_step == STEPS[shift_at] and a.step == STEPS[shift_at + 1]  # confirm: 2
    assert a.score < -4 and a.reference == pytest.approx(20, abs=0.3)


def test_steady_trends_flat_floors_and_noise_raise_nothing() -> None:
    rng = np.random.default_rng(1)
    ramp = np.linspace(30, 10, STEPS.size)  # a steady collapse
    floor = np.full(STEPS.size, 2.0) + rng.normal(0, 1e-4, STEPS.size)  # stuck at a floor
    noise = 0.5 + rng.normal(0, 0.02, STEPS.size)  # a linear probe near chance
    alerts = _feed({("rankme", 0): ramp, ("rankme_uncentred", 1): floor,
                    ("linear_probe", 1): noise}, STEPS, np.zeros(STEPS.size))
    assert alerts == []


def test_the_approach_alert_fires_when_accuracy_leaves_chance() -> None:
    acc = np.zeros(STEPS.size)
    acc[70:] = np.linspace(0.08, 1.0, STEPS.size - 70)
    alerts = _feed({}, STEPS, acc)
    assert [(a.kind, a.level, a.onset_step) for a in alerts] == [("approach", 1, STEPS[70])]
    assert alerts[0].accuracy == pytest.approx(0.08)


def test_no_alert_before_min_step_after_an_event_or_above_threshold() -> None:
    rank = np.full(STEPS.size, 20.0)
    rank[30:] = 10.0  # step 60
    # before min_step (half of training): nothing
    assert _feed({("rankme", 0): rank}, STEPS, np.zeros(STEPS.size),
                 AlertConfig(min_step=0.5), total=200) == []
    # the level's event is confirmed before the change: not a precursor
    assert _feed({("rankme", 0): rank}, STEPS, np.zeros(STEPS.size), events={1: 40}) == []
    # accuracy already above the threshold: not a precursor
    assert _feed({("rankme", 0): rank}, STEPS, np.full(STEPS.size, 0.9)) == []


def test_the_series_rearms_on_its_new_regime() -> None:
    rank = np.full(STEPS.size, 20.0)
    rank[30:] = 10.0
    rank[70:] = 16.0
    alerts = _feed({("rankme", 0): rank}, STEPS, np.zeros(STEPS.size))
    assert [a.onset_step for a in alerts] == [STEPS[30], STEPS[70]]


# -- the planner ------------------------------------------------------------------------------

def _plan(triggers=("alert", "event"), budget_every=4, around=3, window=8, alert_share=0.5,
          steps=300, n_probes=100):
    cfg = resolve_config("COPY", "s0", 0, **tiny_overrides(
        steps=steps, probe={"n_probes": n_probes}, checkpoint={"weights_every": None}))
    return trial_plan(cfg, {"hessian": 50, "llc": 50},
                      {"measures": ("hessian", "llc"), "around": around, "window": window,
                       "budget_every": budget_every, "triggers": triggers,
                       "alert_share": alert_share})


def test_the_plan_states_backbone_budget_and_weights() -> None:
    plan = _plan()
    assert len(plan.probe_steps) == 101
    assert sorted({j.step for j in plan.jobs}) == [plan.probe_steps[i] for i in (0, 50, 100)]
    assert plan.density.budget == 26  # uniform every 4th of 101 probe steps
    assert plan.job_budget == 52  # two dense measures
    assert plan.weight_steps == {j.step for j in plan.jobs}


def test_an_event_pins_its_onset_nearest_first_and_the_window_reaches_back() -> None:
    plan = _plan()
    planner = DensePlanner(plan)
    steps = plan.probe_steps
    for i in range(37):
        planner.at_probe(i, [])
    onset = steps[32]  # confirmed at index 37 (persistence 5)
    pins = planner.at_probe(37, [("event", onset)])
    got = [j.step for j in pins.jobs if j.measure == "hessian"]
    assert got == [steps[i] for i in (32, 31, 33, 30, 34, 29, 35)]
    assert {j.measure for j in pins.jobs} == {"hessian", "llc"}
    assert planner.unreachable == 0 and planner.spent == 7
    # three probe steps later the window no longer reaches the far side: those are counted
    late = DensePlanner(plan)
    for i in range(40):
        late.at_probe(i, [])
    pins = late.at_probe(40, [("event", onset)])
    assert sorted(j.step for j in pins.jobs if j.measure == "hessian") == \
        [steps[i] for i in (32, 33, 34, 35)]
    assert late.unreachable == 3


def test_pins_ahead_come_when_reached_and_the_budget_caps_them() -> None:
    plan = _plan(budget_every=20)  # budget 6: 3 backbone, 3 dense
    planner = DensePlanner(plan)
    steps = plan.probe_steps
    jobs = []
    for i in range(len(steps)):
        onsets = [("event", steps[i])] if i in (20, 60) else []
        jobs += [j for j in planner.at_probe(i, onsets).jobs if j.measure == "hessian"]
    dense = sorted(j.step for j in jobs if j.step not in {b.step for b in plan.jobs})
    assert dense == [steps[i] for i in (19, 20, 21)]  # nearest first, then out of budget
    assert len(jobs) == plan.density.budget


def test_alerts_spend_only_their_share() -> None:
    plan = _plan(budget_every=2)  # budget 51: 48 beyond the backbone, 24 for alerts
    planner = DensePlanner(plan)
    steps = plan.probe_steps
    for i in range(len(steps)):
        planner.at_probe(i, [("precursor", steps[i])] if i % 5 == 0 else [])
    assert planner.spent == 24
    # events still find the rest
    planner2 = DensePlanner(plan)
    for i in range(len(steps)):
        trig = [("approach", steps[i])] if i % 5 == 0 and i < 90 else []
        trig += [("event", steps[i - 5])] if i == 95 else []
        planner2.at_probe(i, trig)
    assert planner2.spent == 24 + 7


def test_each_event_gets_a_fair_share_of_what_is_left() -> None:
    """Budget 11 (3 backbone, 8 to pin) and three levels still to emerge: the first event
    takes 8 // 3, the second 6 // 2, the third the rest."""
    plan = _plan(budget_every=10)
    planner = DensePlanner(plan)
    steps = plan.probe_steps
    got = {}
    for i in range(len(steps)):
        pending = 3 - sum(i > k for k in (20, 40, 60))
        onsets = [("event", steps[i - 5])] if i in (20, 40, 60) else []
        pins = planner.at_probe(i, onsets, pending)
        if onsets:
            got[i] = sorted(plan.probe_steps.index(j.step) for j in pins.jobs
                            if j.measure == "hessian")
    assert got == {20: [14, 15], 40: [34, 35, 36], 60: [54, 55, 56]}


def test_only_the_triggers_asked_for_pin() -> None:
    plan = _plan(triggers=("approach", "event"))
    planner = DensePlanner(plan)
    steps = plan.probe_steps
    for i in range(30):
        planner.at_probe(i, [("precursor", steps[i])])
    assert planner.spent == 0
    planner.at_probe(30, [("approach", steps[30])])
    assert planner.spent == 7  # its window: within its quota, half of the 23 left (11)


def test_weights_leave_the_window_unless_pinned_or_planned() -> None:
    plan = _plan(triggers=("event",), window=8)
    planner = DensePlanner(plan)
    steps = plan.probe_steps
    on_disk: set[int] = set()
    peak = 0
    job_steps = {j.step for j in plan.jobs}
    for i in range(len(steps)):
        on_disk.add(steps[i])
        pins = planner.at_probe(i, [("event", steps[i - 5])] if i == 45 else [])
        job_steps |= {j.step for j in pins.jobs}
        on_disk -= set(pins.drop_weights)
        assert not set(pins.drop_weights) & job_steps
        peak = max(peak, len(on_disk - job_steps))
    assert peak <= 8 + 1  # the rolling window
    assert on_disk - job_steps <= set(steps[-9:])


def test_a_window_shorter_than_persistence_plus_around_is_refused(tmp_path: Path) -> None:
    from orchestrator.common.errors import UsageError
    from orchestrator.sweep.spec import parse_spec

    spec = {"name": "d", "tasks": ["COPY"], "scales": ["s0"],
            "probes": {"measures": {"hessian": {"every": 50}, "llc": {"every": 50}},
                       "density": {"window": 5}}}
    with pytest.raises(UsageError, match=r"probes\.density\.window: 5 probe steps"):
        parse_spec(spec, "d.yaml")
    spec["probes"]["measures"]["llc"]["every"] = 25
    spec["probes"]["density"] = {}
    with pytest.raises(UsageError, match="share one backbone"):
        parse_spec(spec, "d.yaml")


# -- a real trial: decisions replayed on resume ----------------------------------------------

LIVELY = {"level_params": {1: {"length": 2}, 2: {"length": 3}, 3: {"length": 4}},
          "steps": 80, "probe": {"n_probes": 40}, "checkpoint": {"every_probes": 5,
                                                                  "weights_every": None},
          "alerts": {"window": 4, "k": 3.0, "confirm": 1, "min_step": 0.0}}
DENSITY = {"measures": ("hessian",), "around": 2, "window": 4, "budget_every": 4,
           "triggers": ("alert", "event"), "alert_share": 0.5}  # every kind: more decisions


def _run(run: Path, **kw):
    cfg = resolve_config("COPY", "s0", 0, **tiny_overrides(**LIVELY))
    plan = trial_plan(cfg, {"hessian": 20}, DENSITY)
    handed: list = []
    out = run_trial(cfg, run, plan=plan, rule=EmergenceRule(0.3, 2),
                    hooks=TrialHooks(on_jobs=handed.extend), **kw)
    return cfg, plan, out, handed


def _alert_rows(run: Path) -> list[tuple]:
    t = read_alerts(run).drop_columns(["wall_time", "attempt"])
    return sorted(zip(*(t[c].to_pylist() for c in t.column_names), strict=True),
                  key=repr)


def test_a_resumed_trial_makes_the_same_decisions(tmp_path: Path) -> None:
    cfg, plan, whole, jobs_whole = _run(tmp_path / "whole")
    assert any(v is not None for v in whole.events.values()), "the run needs an event"
    alerts = _alert_rows(tmp_path / "whole")
    assert alerts, "the run needs live alerts"
    dense = {j for j in jobs_whole} - set(plan.jobs)
    assert dense and len(jobs_whole) == len(set(jobs_whole)) <= plan.job_budget
    _, _, first, jobs_a = _run(tmp_path / "split", stop_after=plan.probe_steps[20])
    assert not first.completed
    _, _, second, jobs_b = _run(tmp_path / "split")
    assert second.completed and second.attempt == 1
    assert set(jobs_a) | set(jobs_b) == set(jobs_whole)
    assert not set(jobs_a) & set(jobs_b) - set(plan.jobs_at(first.step))
    assert _alert_rows(tmp_path / "split") == alerts
    folder = (RunFolder(tmp_path / "whole"), RunFolder(tmp_path / "split"))
    kept = [f.weight_steps(cfg.trial_name()) for f in folder]
    assert kept[0] == kept[1]
    # on disk: the job steps and at most the last window + 1 probe steps besides
    job_steps = {j.step for j in jobs_whole}
    assert set(kept[0]) - job_steps <= set(plan.probe_steps[-DENSITY["window"] - 1:])
    assert read_alerts(tmp_path / "whole").schema.equals(ALERTS_SCHEMA)
    assert isinstance(TrialStore(tmp_path / "whole", cfg.trial_name()).read(), pa.Table)


# -- the statistics stage: precision, recall and lead of the live alerts ---------------------

def test_alert_precision_recall_and_lead_are_counted_against_the_events() -> None:
    import polars as pl

    from emergence_core.analysis.alert_scores import (
        alert_summary,
        alerts_section,
        baseline_precision,
        match_alerts,
    )

    details = pl.DataFrame({
        "trial": ["A", "A", "B"], "level": [1, 2, 1], "measure": ["accuracy"] * 3,
        "step": [100, None, 300], "interval": [10.0, 10.0, 20.0]},
        schema_overrides={"level": pl.Int8, "step": pl.Int64})
    alerts = pl.DataFrame({
        "trial": ["A", "A", "A", "B", "B"], "level": [1, 1, 2, 1, 1],
        "kind": ["precursor", "precursor", "precursor", "precursor", "approach"],
        "measure": ["rankme", "rankme", "linear_probe", "rankme", "accuracy"],
        "layer": [2, 2, 1, 2, None],
        "step": [60, 120, 50, 340, 260], "onset_step": [50, 110, 40, 320, 260]},
        schema_overrides={"level": pl.Int8, "layer": pl.Int16})
    leads = pl.DataFrame({"event": ["accuracy"], "trial": ["A"], "level": [1],
                          "measure": ["rankme"], "layer": [2], "onset_step": [70]},
                         schema_overrides={"level": pl.Int8, "layer": pl.Int16})
    m = match_alerts(alerts, details)
    # by step: A L2 (never emerges), A L1 at 60, A L1 at 120 (after its event), B L1 (late)
    assert m.filter(pl.col("kind") == "precursor")["preceded"].to_list() == \
        [False, True, False, False]
    s = {r["kind"]: r for r in alert_summary(m, details, leads).iter_rows(named=True)}
    p, a = s["precursor"], s["approach"]
    assert (p["alerts"], p["preceded"], p["precision"]) == (4, 1, 0.25)
    assert (p["events"], p["events_preceded"], p["recall"]) == (2, 1, 0.5)
    assert (p["median_lead_steps"], p["median_lead_intervals"]) == (40.0, 4.0)
    # the first precursor onset of A L1 rankme layer 2 (50) against the offline onset (70)
    assert (p["n_vs_offline"], p["median_onset_minus_offline_intervals"]) == (1, -2.0)
    assert (a["alerts"], a["preceded"], a["recall"], a["median_lead_intervals"]) == \
        (1, 1, 0.5, 2.0)
    # the baseline: alerts raised at random probe steps. A L1 (event 100, interval 10):
    # steps 0-90 lie within 10 intervals before it (10 of 16); A L2 never emerges (0 of 16);
    # B L1 (event 300, interval 20): steps 100-280 (10 of 21)
    grid = pl.DataFrame(
        {"trial": ["A"] * 32 + ["B"] * 21, "level": [1] * 16 + [2] * 16 + [1] * 21,
         "step": [*range(0, 160, 10), *range(0, 160, 10), *range(0, 420, 20)]},
        schema_overrides={"level": pl.Int8})
    base = baseline_precision(grid, details)
    assert base == pytest.approx(20 / 53)
    assert baseline_precision(grid, details, horizon=2.0) == pytest.approx(4 / 53)
    text = "\n".join(alerts_section(alert_summary(m, details, leads, base), 2))
    assert "| precursor | 4 | 1 | 0.25 (0.38) | 1/2 | 0.50 | 40 | 4.0 | -2.0 (n=1) |" in text
    assert "at most 10 probe intervals (at the event) before it" in text
    # a horizon of 3 intervals: the alert 4 intervals before A L1's event no longer counts
    near = match_alerts(alerts, details, horizon=3.0)
    assert near.filter(pl.col("kind") == "precursor")["preceded"].to_list() == [False] * 4
    assert near.filter(pl.col("kind") == "approach")["preceded"].to_list() == [True]
