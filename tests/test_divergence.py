"""A diverging run stops, says where, keeps its rows so far, and is not retried."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.compute as pc
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from emergence_core.config import resolve_config
from emergence_core.folder_records import failure_record, trial_state
from emergence_core.run_folder import RunFolder
from emergence_core.store import read_metrics
from emergence_core.trial.runner import TrialDiverged, run_trial
from emergence_core.trial.trainer import Trainer
from orchestrator.cli.app import app
from tests.conftest import tiny_overrides

SMALL = ["--set", "train_size=200", "--set", "diag_size=40", "--set", "probe.n_probes=12",
         "--set", "probe.rankme_samples=16", "--set", "warmup_steps=2", "--batch-size", "12",
         "--threads", "1"]


def test_diverging_train_stops_within_a_probe_interval_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--task", "MOD", "--steps", "60", "--lr", "1e6", "--out", str(out), *SMALL]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "training loss became non-finite at step" in errors[0]
    record = failure_record(RunFolder(out), "MOD-s0-0")
    assert record["kind"] == "diverged"
    # found at the first probe after the bad update: within one probe interval of it
    steps = resolve_config("MOD", "s0", 0, steps=60, probe={"n_probes": 12}).probe
    plan_steps = [s for s in _probe_steps(60, steps.n_probes) if s > record["step"]]
    assert f"found at probe step {plan_steps[0]}" in errors[0]
    # rows so far are on disk, none after the last good probe step, no non-finite loss
    table = read_metrics(out)
    assert table.num_rows > 0
    assert max(table["step"].to_pylist()) == record["last_good"] <= record["step"]
    loss = table.filter(pc.equal(table["measure"], "train_loss"))["value"].to_pylist()
    assert loss and all(math.isfinite(v) for v in loss)
    assert not RunFolder(out).is_complete("MOD-s0-0")
    # the same command again refuses at once: a deterministic divergence is not retried
    before = table.num_rows
    r2 = CliRunner().invoke(app, args)
    assert r2.exit_code == 1 and "not retried" in r2.output
    assert read_metrics(out).num_rows == before


def _probe_steps(steps: int, n: int) -> list[int]:
    from emergence_core.schedule import probe_schedule

    return probe_schedule(steps, n).tolist()


def test_non_finite_weights_are_named(tmp_path: Path) -> None:
    trainer = Trainer(resolve_config("MOD", "s0", 0, **tiny_overrides()))
    assert trainer.divergence() is None
    with torch.no_grad():
        next(trainer.model.parameters())[0, 0] = float("inf")
    div = trainer.divergence()
    assert div is not None and div.quantity.startswith("weights (") and div.step == 0


def test_runner_keeps_good_rows_and_raises(tmp_path: Path) -> None:
    cfg = resolve_config("MOD", "s0", 0, **tiny_overrides(lr=1e7, grad_clip=None))
    with pytest.raises(TrialDiverged, match="MOD-s0-0 diverged"):
        run_trial(cfg, tmp_path)
    table = read_metrics(tmp_path)
    loss = table.filter(pc.equal(table["measure"], "train_loss"))["value"].to_pylist()
    assert all(math.isfinite(v) for v in loss)


def check_a_diverged_trial_in_a_sweep(run_dir: Path, rc: int, text: str, diverged: str,
                                      finished: str, counts: dict[str, int]) -> None:
    """Real Ray, real MLflow store: the diverged trial is failed (with its reason) in the
    run folder, `emerge status`, the driver's output and MLflow; Tune does not retry it.
    The sweep is the plugin test's (tests/test_plugins.py): its two diverging trials run
    beside the plugin's, so one sweep serves both."""
    assert rc == 1, text[-3000:]
    assert f"failed: {diverged}: {diverged} diverged: the training loss became non-finite" \
        in text
    folder = RunFolder(run_dir)
    assert folder.is_complete(finished) and not folder.is_complete(diverged)
    state = trial_state(folder, diverged)
    assert state.state == "failed" and "diverged" in state.error
    table = read_metrics(run_dir)
    mod = table.filter(pc.equal(table["trial"], diverged))
    assert set(mod["attempt"].to_pylist()) == {0}  # ran once: never retried
    assert max(mod["step"].to_pylist()) == failure_record(folder, diverged)["last_good"]

    status = CliRunner().invoke(app, ["status", str(run_dir)], env={"COLUMNS": "250"})
    assert status.exit_code == 0 and "diverged" in status.output
    data = json.loads(CliRunner().invoke(app, ["status", str(run_dir), "--json"]).output)
    rows = {r["trial"]: r for r in data["trials"]}
    assert rows[diverged]["state"] == "failed" and "diverged" in rows[diverged]["error"]
    assert rows[finished]["state"] == "done" and data["counts"] == counts

    client = MlflowClient(f"sqlite:///{folder.mlflow_db}")
    name = yaml.safe_load(folder.spec_path.read_text())["name"]
    runs = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name(name).experiment_id])}
    mod_run, copy_run = runs[diverged], runs[finished]
    assert mod_run.info.status == "FAILED" and "diverged" in mod_run.data.tags["emerge.failure"]
    assert copy_run.info.status == "FINISHED"
    assert mod_run.info.end_time and copy_run.info.end_time  # MLflow shows their durations
    assert runs[name].info.status == "FAILED"
