"""The probe pool in real sweeps: every (trial, step, measure) exactly once in Parquet and
in MLflow, also when a probe actor is killed mid-job or the driver is interrupted."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
from mlflow.tracking import MlflowClient

from emergence_core.expensive import get_measure
from emergence_core.run_folder import RunFolder
from emergence_core.store import TrialStore, read_metrics
from orchestrator.probe_pool.queue import ProbeQueue
from orchestrator.sweep.spec import load_spec
from orchestrator.tracking.sync import UNCONVERGED, metric_key
from tests.sweep_helpers import (
    keys_unique,
    ray_tmpdir,
    run_sweep,
    start_sweep,
    stop,
    wait_for,
    write_spec,
)

pytestmark = pytest.mark.slow

TRAIN = {"steps": 150, "diag_size": 100, "probe": {"n_probes": 40, "rankme_samples": 50},
         "checkpoint": {"every_probes": 5}, "alerts": {"window": 4, "min_step": 0.0}}
# An LLC slow enough (several seconds) to be caught mid-job.
PROBES = {"hessian": {"every": 10, "batch_size": 48, "settings": {"trace_probes": 8}},
          "llc": {"every": 20, "batch_size": 256,
                  "settings": {"n_chains": 2, "n_draws": 200, "n_burnin": 100}},
          "fisher": {"every": 10}, "gradcov": {"every": 20}}


# The Hessian and the Fisher rank dense around live alerts and events (issue 13): the jobs
# due are then the backbone plus what the trial decided while it ran.
# Every alert pins (MOD does not emerge in 150 steps, but its geometry moves).
DENSITY = {"measures": ["hessian", "fisher"], "around": 2, "window": 8, "budget_every": 4,
           "triggers": ["alert", "event"]}


def _spec(tmp_path: Path, name: str, **probes) -> Path:
    return write_spec(tmp_path / f"{name}.yaml", name=name, run_dir=str(tmp_path / "run"),
                      tasks=["MOD"], scales=["s0"], seeds=[0],
                      max_concurrent_trials=1, train=TRAIN,
                      probes={"measures": PROBES, "actors": 1, "density": DENSITY, **probes})


def _due(run_dir: Path, spec) -> set:
    """The backbone and the dense jobs the trial's own rows decide (replayed here, as a
    resumed trial would): what the run must hold exactly once."""
    from emergence_core.trial.decisions import Decisions

    due = set()
    for p in spec.trials():
        decided = Decisions.of_rows(p.config, p.plan, TrialStore(run_dir, p.name).read(),
                                    spec.emergence.rule)
        jobs = set(decided.replay(TrialStore(run_dir, p.name).read()))
        assert set(p.plan.jobs) <= jobs
        if p.plan.density is not None:  # (the multinode tests share this check, uniform)
            assert jobs - set(p.plan.jobs), "no dense job decided"
            assert sum(j.measure == "hessian" for j in jobs) <= p.plan.density.budget
        due |= jobs
    return due


def _rows_of(measure: str, settings: dict) -> tuple[str, ...]:
    """The metric rows one job of ``measure`` writes with these settings."""
    rows = get_measure(measure).rows
    if measure == "hessian" and not settings.get("trace_probes", 1):
        rows = rows[:1]
    return rows


MEASURE_ROWS = {m: _rows_of(m, p.get("settings", {})) for m, p in PROBES.items()}


def _check_exactly_once(run_dir: Path, spec_path: Path, failed: frozenset = frozenset()
                        ) -> None:
    """Every due job done exactly once in Parquet and MLflow, but for ``failed`` ones."""
    spec = load_spec(spec_path)
    queued = _due(run_dir, spec)
    due = queued - failed
    assert set(ProbeQueue(run_dir).queued()) == queued
    assert ProbeQueue(run_dir).done_jobs() == due
    assert set(ProbeQueue(run_dir).failures()) == failed
    table = read_metrics(run_dir)
    assert keys_unique(table)
    probe = table.filter(pc.equal(table["source"], "probe"))
    got = {(t, s, m) for t, s, m in zip(probe["trial"].to_pylist(), probe["step"].to_pylist(),
                                        probe["measure"].to_pylist(), strict=True)}
    prefix = {m: rows[0] for m, rows in MEASURE_ROWS.items()}
    assert got == {(j.trial, j.step, m) for j in due
                   for m in MEASURE_ROWS[j.measure]}  # exactly the due set, nothing else
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(spec.name)
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    for plan in spec.trials():
        run_id = runs[plan.name].info.run_id
        for measure in ("hessian_lambda_max", "llc", "fisher_erank", "gradcov_erank"):
            key = metric_key(measure, None, None)  # values flagged not converged apart
            steps = [m.step for k in (key, key + UNCONVERGED)
                     for m in client.get_metric_history(run_id, k)]
            want = sorted(j.step for j in due if j.trial == plan.name
                          and prefix[j.measure] == measure)
            assert sorted(steps) == want, (plan.name, measure)
        artifacts = {a.path for a in client.list_artifacts(run_id, "probes/llc")}
        assert len(artifacts) == len([j for j in due if j.trial == plan.name
                                      and j.measure == "llc"])


def test_probe_actor_killed_mid_job_still_gives_exactly_once(tmp_path: Path) -> None:
    spec_path = _spec(tmp_path, "pool")
    run_dir = tmp_path / "run"
    workers = run_dir / "probes" / "workers"
    log = tmp_path / "driver.log"

    def busy_llc() -> int | None:
        for f in workers.glob("*.json") if workers.is_dir() else []:
            info = json.loads(f.read_text())
            if info.get("job") and info["job"][2] == "llc" and \
                    time.time() - info["started"] > 1.0:
                return info["pid"]
        return None

    with ray_tmpdir() as rt:
        proc = start_sweep(["sweep", str(spec_path)], rt, log)
        try:
            wait_for(lambda: busy_llc() is not None, 300, "an LLC job in flight", proc, log)
            victim = busy_llc()
            os.kill(victim, signal.SIGKILL)
            assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
        finally:
            stop(proc)
    pids = {json.loads(f.read_text())["pid"] for f in workers.glob("*.json")}
    assert pids - {victim}, "no new actor took over after the kill"
    _check_exactly_once(run_dir, spec_path)
    assert "weights" in {p.name for p in (run_dir / "checkpoints" / "MOD-s0-0").iterdir()}


@pytest.mark.parametrize("when", ["trials", "drain"])
def test_resume_computes_only_the_missing_probes(tmp_path: Path, when: str) -> None:
    """Ctrl-C while the trial trains beside the pool, or once it is done and the pool
    drains the queue (Tune's own Ctrl-C handler must not be left to swallow that one)."""
    spec_path = _spec(tmp_path, "resume", keep_weights=False)
    run_dir = tmp_path / "run"
    log = tmp_path / "driver.log"
    queue = ProbeQueue(run_dir)
    with ray_tmpdir() as rt:
        proc = start_sweep(["sweep", str(spec_path)], rt, log)
        try:
            if when == "trials":
                wait_for(lambda: len(queue.done_jobs()) >= 2, 300, "two finished probe jobs",
                         proc, log)
            else:
                wait_for(lambda: "the probe pool finishes" in log.read_text(), 300,
                         "the trial done and the pool draining", proc, log)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=300) == 130, log.read_text()[-3000:]
            assert "probe(s) unfinished" in log.read_text()
        finally:
            stop(proc)
        before = {j: queue.diagnostics_path(j).stat().st_mtime_ns for j in queue.done_jobs()}
        stray = _damage_a_queued_job(run_dir, queue) if when == "trials" else None
        broken = _damage_a_waiting_weights_file(run_dir, queue) if when == "drain" else None
        # an actor's status file from a node lost before the stop: no liveness check here
        # can see it has gone, so the resumed pool must drop it
        workers = RunFolder(run_dir).probe_worker_path(0).parent
        workers.mkdir(parents=True, exist_ok=True)
        (workers / "7.json").write_text(json.dumps({
            "pid": 7, "host": "a-lost-node", "node_id": "0" * 56, "started": 1.0,
            "job": ["MOD-s0-0", 0, "llc"]}))
        rc = run_sweep(["resume", str(run_dir)], rt, tmp_path / "resume.log")
    text = (tmp_path / "resume.log").read_text()
    assert rc == (0 if broken is None else 1), text[-3000:]
    assert "Traceback" not in text
    if broken is not None:  # those jobs failed, naming the file; every other job ran
        jobs, weights = broken
        for job in jobs:
            assert f"probe failed: {job.trial} {job.measure} at step {job.step}" in text
            record = json.loads(RunFolder(run_dir).probe_path("failed", job).read_text())
            assert f"weights file {weights} cannot be read" in record["error"]
    if stray is not None:  # named once, skipped; the emptied entry ran as any other
        needle = f"skipping {stray}: not a probe job's file"
        assert "".join(needle.split()) in "".join(text.split())  # however it was wrapped
    assert not (workers / "7.json").exists(), "the lost node's actor is still listed"
    # what was done before the interruption was not computed again
    assert {j: queue.diagnostics_path(j).stat().st_mtime_ns for j in before} == before
    _check_exactly_once(run_dir, spec_path, broken[0] if broken else frozenset())
    # keep_weights: false -> every checkpoint's weights went once its probes were done
    for plan in load_spec(spec_path).trials():
        kept = [] if broken is None else [next(iter(broken[0])).step]
        assert TrialStore(run_dir, plan.name).weight_steps() == kept


def _damage_a_queued_job(run_dir: Path, queue: ProbeQueue) -> Path:
    """Issue 14: a queue entry emptied (as by a full disk) and a stray file beside it."""
    waiting = sorted(set(queue.queued()) - queue.done_jobs())
    assert waiting, "the interruption left no job waiting"
    entry = RunFolder(run_dir).probe_path("queue", waiting[0])
    entry.write_bytes(b"")
    stray = entry.with_name("notes.json")
    stray.write_text("{")
    return stray


def _damage_a_waiting_weights_file(run_dir: Path, queue: ProbeQueue) -> tuple:
    """Issue 14: the weights file waiting jobs need, truncated. Those jobs fail after their
    attempts with one line naming the file; the sweep says so and exits 1."""
    folder = RunFolder(run_dir)
    waiting = [j for j in sorted(set(queue.queued()) - queue.done_jobs())
               if folder.weights_path(j.trial, j.step).exists()]
    assert waiting, "the interruption left no job waiting with its weights"
    step = waiting[-1].step
    weights = folder.weights_path(waiting[-1].trial, step)
    weights.write_bytes(weights.read_bytes()[:500])
    return frozenset(j for j in waiting if j.step == step), weights
