"""Sweeps end to end: the real CLI, a real local Ray, real MLflow (SQLite and a server).

Each test runs ``emerge sweep`` in a subprocess with its own Ray temp dir and run folder,
then checks the exactly-once and completeness guarantees on Parquet and in MLflow.
"""

from __future__ import annotations

import json
import os
import signal
import warnings
from pathlib import Path

import pyarrow.compute as pc
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from emergence_core.run_folder import RunFolder
from emergence_core.store import TrialStore, read_metrics
from orchestrator.cli.app import app
from orchestrator.sweep.spec import load_spec
from tests.browser import browser, page_text
from tests.sweep_helpers import (
    ROOT,
    assert_mlflow_equals_parquet,
    assert_usage_errors,
    comparable,
    keys_unique,
    mlflow_server,
    ray_tmpdir,
    run_sweep,
    start_reference,
    start_sweep,
    stop,
    wait_for,
    wait_reference,
    write_spec,
)

pytestmark = pytest.mark.slow

SMALL = {"diag_size": 100, "probe": {"n_probes": 40, "rankme_samples": 50},
         "checkpoint": {"every_probes": 3, "weights_every": None}}


def _runs_by_name(uri: str, experiment: str) -> dict[str, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment}"
    out: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        out.setdefault(r.info.run_name, []).append(r)
    return out


def _check_mlflow_holds_every_series(uri: str, run_dir: Path, spec_path: Path) -> None:
    spec = load_spec(spec_path)
    runs = _runs_by_name(uri, spec.name)
    assert len(runs[spec.name]) == 1 and runs[spec.name][0].info.status == "FINISHED"
    assert runs[spec.name][0].info.end_time  # MLflow shows the sweep's duration
    parent = runs[spec.name][0].info.run_id
    for plan in spec.trials():
        run = runs[plan.name][0]
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.params["task"] == plan.config.task
    assert_mlflow_equals_parquet(uri, run_dir, spec.name, [p.name for p in spec.trials()])


def _check_parquet_holds_every_series(run_dir: Path, spec_path: Path) -> None:
    from emergence_core.schedule import probe_schedule

    table = read_metrics(run_dir)
    assert keys_unique(table)
    for plan in load_spec(spec_path).trials():
        cfg = plan.config
        rows = table.filter(pc.and_(pc.equal(table["trial"], plan.name),
                                    pc.equal(table["measure"], "accuracy")))
        steps = probe_schedule(cfg.steps, cfg.probe.n_probes, log_fraction=cfg.probe.log_fraction,
                               log_until=cfg.probe.log_until).tolist()
        for lv in cfg.levels:
            got = sorted(s for s, lvl in zip(rows["step"].to_pylist(), rows["level"].to_pylist(),
                                             strict=True) if lvl == lv)
            assert got == steps, f"{plan.name} level {lv}: holes or extras in the series"
        assert (TrialStore(run_dir, plan.name).checkpoint_dir / "COMPLETE.json").exists()


def _smoke_spec(tmp_path: Path, **changes) -> Path:
    spec = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    spec["run_dir"] = str(tmp_path / "run")
    for key, value in changes.items():
        spec[key] = value
    return write_spec(tmp_path / "smoke.yaml", **spec)


@pytest.mark.timeout(1800)  # ~11 min beside another worker's tests on 2 cores (conftest.py)
def test_smoke_sweep_end_to_end_with_sqlite(tmp_path: Path) -> None:
    spec_path = _smoke_spec(tmp_path)
    log = tmp_path / "driver.log"
    with ray_tmpdir() as rt:
        rc = run_sweep(["sweep", str(spec_path)], rt, log, timeout=1500)
    assert rc == 0, log.read_text()[-3000:]
    run_dir = tmp_path / "run"
    _check_parquet_holds_every_series(run_dir, spec_path)
    _check_mlflow_holds_every_series(f"sqlite:///{run_dir / 'mlflow.db'}", run_dir, spec_path)
    # every trial shows at least one emergence event
    for plan in load_spec(spec_path).trials():
        done = json.loads((TrialStore(run_dir, plan.name).checkpoint_dir /
                           "COMPLETE.json").read_text())
        assert any(v is not None for v in done["events"].values()), plan.name
    assert "complete" in log.read_text()
    # the link that opens MLflow 3.17 on the runs, not its GenAI view (rich folds lines)
    said = "".join(log.read_text().split())
    assert "http://127.0.0.1:5000/#/experiments/" in said
    assert "?workflowType=machine_learning" in said
    _check_dense_probes_around_events(run_dir, spec_path)
    _check_live_alerts(run_dir, spec_path, log.read_text())
    _analyze_the_smoke_run(run_dir, spec_path)
    _check_mlflow_in_a_fresh_browser(run_dir, spec_path)


def _check_dense_probes_around_events(run_dir: Path, spec_path: Path) -> None:
    """Issue 13: every accuracy event has Hessian and LLC values within 3 cheap-probe
    intervals before it and within 3 after it, every job once, within the trial's budget."""
    table = read_metrics(run_dir)
    assert keys_unique(table)
    spec = load_spec(spec_path)
    n_events = 0
    for plan in spec.trials():
        grid = list(plan.plan.probe_steps)
        done = json.loads((TrialStore(run_dir, plan.name).checkpoint_dir /
                           "COMPLETE.json").read_text())
        mine = table.filter(pc.equal(table["trial"], plan.name))
        per_measure = {}
        for measure, value in (("hessian", "hessian_lambda_max"), ("llc", "llc")):
            steps = sorted(set(mine.filter(pc.equal(mine["measure"], value))["step"]
                               .to_pylist()))
            per_measure[measure] = steps
            assert 3 <= len(steps) <= plan.plan.density.budget, (plan.name, measure, steps)
        for lv, e in done["events"].items():
            if e is None:
                continue
            n_events += 1
            i = grid.index(e)
            lo, hi = grid[max(0, i - 3)], grid[min(len(grid) - 1, i + 3)]
            for measure, steps in per_measure.items():
                assert any(lo <= s < e for s in steps) and any(e < s <= hi for s in steps), \
                    f"{plan.name} L{lv} event at {e}: {measure} at {steps}"
    assert n_events >= 4


def _check_live_alerts(run_dir: Path, spec_path: Path, log: str) -> None:
    """Issue 13: alerts on disk, in the progress, in status and on the MLflow runs, and at
    least one that preceded its level's event."""
    from emergence_core.store import read_alerts
    from orchestrator.sweep.views import status_data

    alerts = read_alerts(run_dir).to_pylist()
    assert alerts and "precursor alert:" in log and "approach alert:" in log
    preceded = 0
    for plan in load_spec(spec_path).trials():
        events = json.loads((TrialStore(run_dir, plan.name).checkpoint_dir /
                             "COMPLETE.json").read_text())["events"]
        preceded += sum(1 for a in alerts if a["trial"] == plan.name
                        and events.get(str(a["level"])) is not None
                        and a["step"] < events[str(a["level"])])
    assert preceded >= 1
    rows = {r["trial"]: r for r in status_data(run_dir)["trials"]}
    counted = {t: sum(r["alerts"].values()) for t, r in rows.items()}
    assert counted == {t: sum(a["trial"] == t for a in alerts) for t in rows}
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    runs = _runs_by_name(f"sqlite:///{run_dir / 'mlflow.db'}", load_spec(spec_path).name)
    for trial, n in counted.items():
        if n:
            tags = client.get_run(runs[trial][0].info.run_id).data.tags
            assert tags["emerge.alerts"] == str(n), trial


def _analyze_the_smoke_run(run_dir: Path, spec_path: Path) -> None:
    """The statistics stage on the smoke sweep's own run folder. (The notebook runs on a real
    run folder in test_notebook.py; running it here again cost half a minute of CI.)"""
    with ray_tmpdir() as rt:
        rc = run_sweep(["analyze", str(run_dir)], rt, run_dir / "analyze.log", address=None)
    assert rc == 0, (run_dir / "analyze.log").read_text()
    report = (run_dir / "report" / "report.md").read_text()
    assert "Emergence events" in report and "4 trials" in report
    # issue 11: chance rates, both onset rules, the variants table and intervals
    for section in ("Chance per task level", "Onset rules side by side",
                    "Variant: the change point nearest the event",
                    "## Robustness: how RankMe is measured", "| rankme / per level |",
                    "| rankme_uncentred / per level |", "95% CI"):
        assert section in report, section
    assert "(trial, level) series emerge: the first probe at which chance-corrected" in report
    assert "## Live alerts" in report and "| precursor |" in report
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    parent = _runs_by_name(f"sqlite:///{run_dir / 'mlflow.db'}", "smoke")["smoke"][0]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {
        "report/report.md", "report/tables", "report/figures"}


def _check_mlflow_in_a_fresh_browser(run_dir: Path, spec_path: Path) -> None:
    """Issue 26: behind a real ``mlflow server`` on the sweep's own store, a fresh headless
    Chromium (a new user's empty profile) finds the runs table at the experiment's runs page
    and at the link the sweep prints, and a child run's own figures among its artifacts."""
    if browser() is None:
        warnings.warn("no Chromium installed: the MLflow UI check did not run", stacklevel=1)
        return
    from orchestrator.tracking.store import experiment_url

    spec = load_spec(spec_path)
    store = f"sqlite:///{run_dir / 'mlflow.db'}"
    experiment = MlflowClient(store).get_experiment_by_name(spec.name).experiment_id
    runs = _runs_by_name(store, spec.name)
    n = len(spec.trials()) + 1  # the sweep's parent run and one child per trial
    with mlflow_server(run_dir.parent / "ui-server", store=store) as uri:
        for url in (f"{uri}/#/experiments/{experiment}/runs", experiment_url(uri, experiment)):
            text = page_text(url)
            assert f"{n} matching runs" in text and spec.name in text, (url, text[:1500])
            assert "Detect Issues" not in text, url  # the GenAI overview's
        trial = spec.trials()[0].name
        child = runs[trial][0].info.run_id
        text = page_text(f"{uri}/#/experiments/{experiment}/runs/{child}/artifacts/"
                         f"figures/curves_{trial}.png")
        for kind in ("curves", "heatmap", "alerts"):
            assert f"{kind}_{trial}.png" in text, (kind, text[:1500])


def test_killed_worker_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    spec_path = write_spec(tmp_path / "kill.yaml", name="kill", run_dir=str(run_dir),
                           tasks=["MOD"], scales=["s0"], seeds=[0], retries=3,
                           train={**SMALL, "steps": 300})
    log = tmp_path / "driver.log"
    parts = run_dir / "metrics" / "trial" / "MOD-s0-0"
    worker = run_dir / "status" / "MOD-s0-0.worker.json"
    # the same trial uninterrupted, on the core the sweep's one trial leaves free
    reference = start_reference(spec_path, tmp_path / "reference", tmp_path / "reference.log")
    with ray_tmpdir() as rt:
        proc = start_sweep(["sweep", str(spec_path)], rt, log)
        try:
            wait_for(lambda: worker.exists() and len(list(parts.glob("part-*"))) >= 2, 300,
                     "two commits of the trial", proc, log)
            victim = json.loads(worker.read_text())["pid"]
            os.kill(victim, signal.SIGKILL)
            assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
        finally:
            stop(proc)
    assert json.loads(worker.read_text())["pid"] != victim  # a new worker took the trial over
    table = read_metrics(run_dir)
    assert keys_unique(table)
    assert max(table["attempt"].to_pylist()) >= 1
    runs = _runs_by_name(f"sqlite:///{run_dir / 'mlflow.db'}", "kill")
    assert len(runs["MOD-s0-0"]) == 1
    _check_mlflow_holds_every_series(f"sqlite:///{run_dir / 'mlflow.db'}", run_dir, spec_path)
    _grow_the_finished_sweep(tmp_path, run_dir, yaml.safe_load(spec_path.read_text()))
    assert comparable(table) == wait_reference(reference, tmp_path / "reference",
                                               tmp_path / "reference.log")


def _grow_the_finished_sweep(tmp_path: Path, run_dir: Path, spec: dict) -> None:
    """Adding a seed runs only the new trial, as a new launch; other changes are refused."""
    before = {p: p.stat().st_mtime_ns for p in (run_dir / "metrics").rglob("part-*")}
    changed = write_spec(tmp_path / "changed.yaml", **{**spec, "tasks": ["COPY"]})
    with ray_tmpdir() as rt:
        rc = run_sweep(["sweep", str(changed)], rt, tmp_path / "changed.log")
    assert rc == 2 and "was removed" in (tmp_path / "changed.log").read_text()
    grown = write_spec(tmp_path / "grown.yaml", **{**spec, "seeds": [0, 1]})
    with ray_tmpdir() as rt:
        rc = run_sweep(["sweep", str(grown)], rt, tmp_path / "grown.log")
    assert rc == 0, (tmp_path / "grown.log").read_text()[-3000:]
    assert {p: p.stat().st_mtime_ns for p in before} == before
    state = json.loads((run_dir / "sweep.json").read_text())
    assert [launch["trials"] for launch in state["launches"]] == [["MOD-s0-0"], ["MOD-s0-1"]]
    _check_parquet_holds_every_series(run_dir, grown)


def test_interrupted_driver_then_resume_completes_exactly(tmp_path: Path) -> None:
    """Against a real MLflow server (the server path of a sweep, resumed): the sweep is
    stopped by SIGTERM (issue 23: exit 143 and the resume line), then its frozen sweep file
    and its MLflow ledger are damaged, and a second driver tries to take the folder while the
    resume runs (issue 14, items 2 and 4)."""
    run_dir = tmp_path / "run"
    # a third trial waits for a free slot: it has not started when the driver is stopped, and
    # the resume must hand it its config again (Ray's object store is not kept across
    # sessions; the two-scale sweep lost 4 such trials to it)
    spec = {"name": "intr", "run_dir": str(run_dir), "tasks": ["MOD", "COPY", "REV"],
            "scales": ["s0"], "seeds": [0], "max_concurrent_trials": 2,
            "train": {**SMALL, "steps": 200}}
    spec_path = write_spec(tmp_path / "intr.yaml", **spec)
    log = tmp_path / "driver.log"
    with mlflow_server(tmp_path / "mlflow") as uri, ray_tmpdir() as rt:
        proc = start_sweep(["sweep", str(spec_path), "--tracking-uri", uri], rt, log)
        try:
            # three commits each: two checkpoints have reached Tune, so a resume continues
            # from the latest, or from the one before it when the latest is damaged
            wait_for(lambda: all(len(TrialStore(run_dir, t).parts()) >= 3
                                 for t in ("MOD-s0-0", "COPY-s0-0")),
                     300, "three commits of both trials", proc, log)
            # SIGTERM, as a scheduler, `kill` or a spot reclaim sends: stops it as Ctrl-C
            # does (the SIGINT path itself: test_tune_sigint.py)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=300) == 143, log.read_text()[-3000:]
        finally:
            stop(proc)
        said = " ".join(log.read_text().split())
        assert "stopped by SIGTERM" in said and f"`emerge resume {run_dir}`" in said, said
        assert "Traceback" not in said
        assert not RunFolder(run_dir).lock_path.exists()  # released, and removed
        # trials the Ctrl-C caught before their last step: the resume must continue them
        last = {t: TrialStore(run_dir, t).parts()[-1][1] for t in ("MOD-s0-0", "COPY-s0-0")}
        interrupted = [t for t, step in last.items() if step < 200]
        assert interrupted, "the Ctrl-C came after both trials had trained to the end"
        assert not TrialStore(run_dir, "REV-s0-0").parts(), "the third trial had started"
        # the trials uninterrupted, beside the checks below and the resume's start
        reference = start_reference(spec_path, tmp_path / "reference",
                                    tmp_path / "reference.log")
        folder = RunFolder(run_dir)
        _a_damaged_sweep_file_is_one_line_and_starts_nothing(folder)
        damaged = _damage_the_latest_checkpoint_and_part(run_dir, interrupted[0])
        ledger = folder.ledger_path
        ledger.write_text(ledger.read_text()[:40])  # truncated mid-write, as by a full disk
        resume = start_sweep(["resume", str(run_dir)], rt, tmp_path / "resume.log")
        try:
            _a_second_driver_is_refused_while_the_resume_runs(folder, resume,
                                                              tmp_path / "resume.log")
            rc = resume.wait(timeout=600)
        finally:
            stop(resume)
        text = (tmp_path / "resume.log").read_text()
        assert rc == 0, text[-3000:]
        # the ledger was rebuilt from the server's own runs: a note, and no second run
        assert "was damaged" in text and ledger.with_name("ledger.json.damaged").exists()
        assert "Traceback" not in text
        # the damaged checkpoint: named, and the trial went on from the one before it
        assert str(damaged) in "".join(text.split())  # (rich folds long lines)
        assert "previouscheckpoint" in "".join(text.split())
        assert "Tune's record" not in text  # Tune's own record was whole: restored as is
        table = read_metrics(run_dir)
        assert keys_unique(table)
        assert comparable(table) == wait_reference(reference, tmp_path / "reference",
                                                   tmp_path / "reference.log")
        for trial in interrupted:  # resumed from a checkpoint, not retrained from step 0
            rows = table.filter(pc.equal(table["trial"], trial))
            later = [s for s, a in zip(rows["step"].to_pylist(), rows["attempt"].to_pylist(),
                                       strict=True) if a >= 1]
            assert later and min(later) > 0 and max(later) == 200, trial
        _check_parquet_holds_every_series(run_dir, spec_path)
        _check_mlflow_holds_every_series(uri, run_dir, spec_path)
    assert not (run_dir / "mlflow.db").exists()  # a server sweep writes no local store
    _a_damaged_kept_part_is_named(run_dir, "MOD-s0-0")


def _damage_the_latest_checkpoint_and_part(run_dir: Path, trial: str) -> Path:
    """Truncate the state in the trial's latest Tune checkpoint, and its last metric part
    (both as a full disk would): the resume must go on from Tune's previous checkpoint, which
    makes the damaged part one of those it computes again.

    "Latest" is the one Tune's record names, the one a resume restores: a checkpoint the
    trial wrote just before the driver stopped can be on disk before the record holds it."""
    import torch

    latest = _tune_recorded_checkpoint(run_dir, trial)
    earlier = sorted(p for p in latest.parent.glob("checkpoint_*") if p.name < latest.name)
    assert earlier, (latest, sorted(latest.parent.iterdir()))
    state = latest / RunFolder.STATE
    state.write_bytes(state.read_bytes()[:1000])
    previous = torch.load(earlier[-1] / RunFolder.STATE, weights_only=True)["step"]
    first, _, part = TrialStore(run_dir, trial).parts()[-1]
    assert first > previous, (first, previous)
    part.write_bytes(part.read_bytes()[:100])
    return state


def _tune_recorded_checkpoint(run_dir: Path, trial: str) -> Path:
    """The trial's latest checkpoint in Tune's saved record of its launch."""
    from ray.tune import ExperimentAnalysis

    for launch in sorted((run_dir / "tune").glob("launch-*")):
        for t in ExperimentAnalysis(str(launch)).trials:
            if t.config["trial"]["name"] == trial and t.checkpoint is not None:
                return Path(t.checkpoint.path)
    raise AssertionError(f"Tune's record holds no checkpoint of {trial}")


def _a_damaged_kept_part_is_named(run_dir: Path, trial: str) -> None:
    """A kept part damaged after the run: `emerge analyze` reports without it and names it
    (in its output and under the report's "What is missing"), with no traceback."""
    part = TrialStore(run_dir, trial).parts()[0][2]
    part.write_bytes(part.read_bytes()[:100])
    result = CliRunner().invoke(app, ["analyze", str(run_dir), "--no-mlflow"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output[-2000:]
    named = f"metric parts could not be read and were left out: {part.relative_to(run_dir)}"
    assert named in " ".join(result.output.split())
    assert named in " ".join((run_dir / "report" / "report.md").read_text().split())


def _a_damaged_sweep_file_is_one_line_and_starts_nothing(folder: RunFolder) -> None:
    """The sweep file as launched, damaged: `emerge resume` says so in one line, exit 2."""
    kept = folder.spec_path.read_bytes()
    folder.spec_path.write_bytes(kept[: len(kept) // 3] + b": [")
    listing = sorted(folder.path.rglob("*"))
    assert_usage_errors(CliRunner().invoke(app, ["resume", str(folder.path)]),
                        [f"{folder.spec_path}: invalid YAML"])
    assert sorted(folder.path.rglob("*")) == listing  # nothing started or written
    folder.spec_path.write_bytes(kept)


def _a_second_driver_is_refused_while_the_resume_runs(folder: RunFolder, resume, log) -> None:
    """A second `emerge resume` on the folder a live driver holds: one line, exit code 2."""
    def held() -> bool:
        try:
            return json.loads(folder.lock_path.read_text()).get("pid") == resume.pid
        except (OSError, ValueError):
            return False

    wait_for(held, 120, "the resume to hold the folder", resume, log)
    result = CliRunner().invoke(app, ["resume", str(folder.path)])
    assert_usage_errors(result, [f"{folder.path} is in use by another driver (`emerge resume "
                                 f"{folder.path}`, pid {resume.pid}"])
    assert resume.poll() is None  # the first driver goes on
