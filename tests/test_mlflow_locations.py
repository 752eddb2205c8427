"""MLflow's artifact locations after a run folder moves, on a real SQLite store: the
embedded store moves with the folder, and its absolute locations are pointed at the new
place (MLflow has no call for it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from emergence_core.config import resolve_config
from orchestrator.tracking.store import default_tracking_uri, moved_tracking_uri
from orchestrator.tracking.sync import MlflowSync
from tests.conftest import tiny_overrides


def test_a_moved_folder_points_its_artifact_locations_at_the_new_place(tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    old, new = tmp_path / "old", tmp_path / "moved" / "run"
    sync = MlflowSync(old, default_tracking_uri(old), "s")
    parent = sync.parent_run("name: s\n")  # logs spec.yaml as an artifact
    trial = sync.trial_run("COPY-s0-0", resolve_config("COPY", "s0", 0, **tiny_overrides()))
    sync.client.log_text(trial, "hello", "figures/note.txt")
    new.parent.mkdir()
    shutil.move(old, new)

    uri = moved_tracking_uri(default_tracking_uri(old), old, new)
    assert uri == default_tracking_uri(new)
    moved = MlflowSync(new, uri, "s")
    assert moved.repair_artifact_locations(old) == 3  # the experiment and its two runs
    assert moved.repair_artifact_locations(old) == 0  # once is enough
    client = MlflowClient(uri)
    for run_id in (parent, trial):
        assert client.get_run(run_id).info.artifact_uri.startswith(new.as_uri() + "/")
    assert client.get_experiment_by_name("s").artifact_location == \
        (new / "mlflow" / "artifacts").as_uri()
    assert [f.path for f in client.list_artifacts(trial, "figures")] == ["figures/note.txt"]
    assert client.get_run(parent).data.tags["emerge.run_dir"] == str(new)
    moved.client.log_text(trial, "after the move", "figures/later.txt")
    assert (new / "mlflow" / "artifacts" / trial / "artifacts" / "figures" / "later.txt").is_file()
    assert not old.exists()


def test_only_the_folders_own_locations_and_only_sqlite_stores_are_rewritten(tmp_path) -> None:
    elsewhere = Path("/srv/mlruns")
    assert moved_tracking_uri("http://mlflow:5000", tmp_path / "a", tmp_path / "b") == \
        "http://mlflow:5000"
    assert moved_tracking_uri(f"sqlite:///{elsewhere}/m.db", tmp_path / "a", tmp_path / "b") \
        == f"sqlite:///{elsewhere}/m.db"
    assert MlflowSync(tmp_path, "http://127.0.0.1:9", "s").repair_artifact_locations(
        tmp_path / "gone") == 0
    assert MlflowSync(tmp_path, default_tracking_uri(tmp_path), "s").repair_artifact_locations(
        tmp_path / "gone") == 0  # no store yet: nothing to repair, nothing created
    assert not (tmp_path / "mlflow.db").exists()


def test_the_experiment_link_opens_the_runs_not_the_genai_view() -> None:
    """MLflow 3.17 chooses its view from the URL's workflowType (else the browser's saved
    choice, else GenAI): the link a sweep prints is the runs page, with the parameter."""
    from orchestrator.tracking.store import experiment_url

    assert experiment_url("http://127.0.0.1:5000/", "7") == \
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    local = experiment_url("sqlite:////runs/x/mlflow.db", "1")
    assert local.startswith("`mlflow ui --backend-store-uri sqlite:////runs/x/mlflow.db")
    assert local.endswith(
        "http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning")


def test_mlflows_view_keeps_constants_as_params_and_unconverged_estimates_apart() -> None:
    """A trial level's chance is a param (a metric logged once is a one-bar chart), and an
    LLC value flagged not converged goes under its own key, so the llc chart holds only
    converged values; nothing is dropped."""
    from orchestrator.tracking.sync import mlflow_view

    def row(measure, step, value, level=None):
        return {"measure": measure, "layer": None, "level": level, "value": value,
                "step": step, "wall_time": 1000 + step}
    rows = [row("chance", 0, 0.25, 1), row("diag_size", 0, 200.0, 1),
            row("accuracy", 0, 0.1, 1), row("accuracy", 10, 0.4, 1),
            row("llc", 10, -1917.0), row("llc_converged", 10, 0.0),
            row("llc", 20, 12.5), row("llc_converged", 20, 1.0)]
    metrics, params = mlflow_view(rows)
    assert params == {"chance/L1": "0.25", "diag_size/L1": "200"}
    keys = {(k, step): v for k, v, _, step in metrics}
    assert keys[("llc.unconverged", 10)] == -1917.0 and keys[("llc", 20)] == 12.5
    assert ("llc", 10) not in keys and keys[("llc_converged", 10)] == 0.0
    assert keys[("accuracy/L1", 10)] == 0.4 and len(metrics) == 8
    # chance-corrected accuracy beside the raw: (0.4 - 0.25) / 0.75, and 0.1 below chance
    assert keys[("accuracy_corrected/L1", 10)] == pytest.approx(0.2)
    assert keys[("accuracy_corrected/L1", 0)] == pytest.approx(-0.2)
    # a later batch without the chance row: the chance known from an earlier one serves
    later, _ = mlflow_view([row("accuracy", 30, 1.0, 1)], chances={1: 0.25})
    assert [(k, v) for k, v, _, _ in later] == [("accuracy/L1", 1.0),
                                                ("accuracy_corrected/L1", 1.0)]
    assert [k for k, *_ in mlflow_view([row("accuracy", 30, 1.0, 1)])[0]] == ["accuracy/L1"]
    # a chance such as 1/97 (MOD) reads back from its param exactly, so a later batch's
    # corrected accuracy equals what one batch of all rows gives (a sweep's two syncs)
    from orchestrator.tracking.view import chances_of

    first, params = mlflow_view([row("chance", 0, 1 / 97, 1), row("accuracy", 0, 0.3, 1)])
    again, _ = mlflow_view([row("accuracy", 10, 0.3, 1)], chances=chances_of(params))
    assert chances_of(params) == {1: 1 / 97} and first[-1][1] == again[-1][1]
