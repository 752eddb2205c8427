"""``emerge analyze``: the report of a real (tiny) run folder, logged to a real SQLite MLflow
parent run; empty, partial, train and non-run folders; an MLflow that is down."""

from __future__ import annotations

import io
import json
import shutil
import socket
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
import typer
import yaml
from click.testing import Result
from rich.console import Console
from typer.testing import CliRunner

from emergence_core.config import resolve_config
from emergence_core.metrics import METRICS_SCHEMA
from emergence_core.run_folder import RunFolder
from emergence_core.store import TrialStore, read_metrics
from emergence_core.trial.runner import run_trial
from orchestrator.cli.analyze import analyze_command
from orchestrator.tracking.store import default_tracking_uri
from orchestrator.tracking.sync import MlflowSync
from tests.conftest import tiny_overrides

SHORT_COPY = {"level_params": {1: {"length": 2}, 2: {"length": 3}, 3: {"length": 5}}}
TINY = (("COPY", SHORT_COPY), ("MOD", {}))
FAST = ["--set", "n_bootstrap=50", "--set", "max_trial_figures=2"]


def tiny_config(task: str, extra: dict):
    return resolve_config(task, "s0", 0, **tiny_overrides(**extra))


def train_tiny(run_dir: Path, sweep: str = "tiny") -> list[str]:
    """Train the TINY trials for real into ``run_dir`` (a second or so each); their names."""
    names = []
    for task, extra in TINY:
        cfg = tiny_config(task, extra)
        run_trial(cfg, run_dir, sweep=sweep)
        names.append(cfg.trial_name())
    return names


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    train_tiny(run)
    return run


def sweep_folder(trained: Path, dest: Path, *, launched: list[str] | None = None,
                 tracking_uri: str | None = None) -> Path:
    """A copy of ``trained`` made a sweep's run folder, as ``emerge sweep`` records one."""
    shutil.copytree(trained, dest)
    spec = {"name": "tiny", "tasks": ["COPY", "MOD"], "scales": ["s0"],
            "emergence": {"threshold": 0.5, "persistence": 5}}
    uri = tracking_uri or default_tracking_uri(dest.absolute())
    RunFolder(dest).record_launch(yaml.safe_dump(spec), uri, [
        {"name": "launch-0", "trials": launched or ["COPY-s0-0", "MOD-s0-0"]}])
    return dest


def emerge(*args: str) -> Result:
    """``emerge ARGS`` in process: the real app once it registers ``analyze``, else the same
    command on an app of its own."""
    from orchestrator.cli.app import app

    if not any(c.name == "analyze" for c in app.registered_commands):
        app = typer.Typer()
        app.callback()(lambda: None)
        app.command("analyze")(analyze_command)
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def test_report_is_logged_to_the_sweeps_parent_run(trained: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    run = sweep_folder(trained, tmp_path / "run")
    uri = default_tracking_uri(run.absolute())
    parent = MlflowSync(run.absolute(), uri, "tiny").parent_run("name: tiny\n")
    r = emerge("analyze", str(run), "--threshold", "0.3", "--persistence", "2", *FAST)
    assert r.exit_code == 0, r.output
    report = run / "report"
    summary = json.loads((report / "report.json").read_text())
    for rel in summary["files"]:
        assert (report / rel).is_file(), rel
    assert {"report.md", "tables/events.csv", "figures/leads.png"} <= set(summary["files"])
    assert summary["settings"]["threshold"] == 0.3 and summary["settings"]["persistence"] == 2
    md = (report / "report.md").read_text()
    # issue 11: the report shows chance rates, both onset rules, variants and intervals
    for section in ("Chance per task level", "Variant: the change point nearest the event",
                    "## Robustness: how RankMe is measured", "| rankme / per level |",
                    "| rankme_uncentred / pooled |", "Second rule (first)",
                    "2 of 2 undetermined"):  # s0's two blocks cannot give a verdict
        assert section in md, section
    chances = pl.read_csv(report / "tables" / "chances.csv")
    assert chances.height == 6 and chances["chance"].is_between(0.0, 1.0).all()
    assert f"to run {parent}" in r.output

    client = MlflowClient(uri)
    logged = client.get_run(parent)
    # headline numbers as tags and a table, not one-bar charts among the training curves
    assert not any(k.startswith("report/") for k in logged.data.metrics)
    assert logged.data.tags["report/trials"] == "2"
    assert int(logged.data.tags["report/rows"]) == read_metrics(run).num_rows
    table = json.loads(Path(client.download_artifacts(parent, "report/headline.json",
                                                      str(tmp_path))).read_text())
    assert dict(zip(table["name"], table["value"], strict=True)) == summary["headline"]
    assert logged.data.tags["emerge.analysis.config_hash"] == summary["config_hash"]
    top = {f.path for f in client.list_artifacts(parent, "report")}
    assert {"report/report.md", "report/report.html", "report/report.json", "report/tables",
            "report/figures"} <= top
    pngs = {f.path for f in client.list_artifacts(parent, "report/figures")}
    assert {f"report/{f}" for f in summary["files"] if f.endswith(".png")} == pngs
    # the ledger's parent run was used: nothing new in the experiment
    exp = client.get_experiment_by_name("tiny").experiment_id
    assert [x.info.run_id for x in client.search_runs([exp])] == [parent]


def test_a_moved_sweep_folder_gets_its_artifacts_back(trained: Path, tmp_path: Path) -> None:
    """Artifacts are stored at absolute paths: after the folder moved, the embedded store's
    locations are pointed into the folder's new place, and the report lands there."""
    from mlflow.tracking import MlflowClient

    old = sweep_folder(trained, tmp_path / "old")
    parent = MlflowSync(old.absolute(), default_tracking_uri(old.absolute()),
                        "tiny").parent_run("name: tiny\n")
    new = tmp_path / "elsewhere" / "run"
    new.parent.mkdir()
    shutil.move(old, new)
    r = emerge("analyze", str(new), *FAST)
    assert r.exit_code == 0, r.output
    assert "artifacts not logged" not in r.output and "report/ (" in r.output
    client = MlflowClient(default_tracking_uri(new.absolute()))
    run = client.get_run(parent)
    assert run.info.artifact_uri.startswith(new.absolute().as_uri() + "/")
    assert run.data.tags["emerge.run_dir"] == str(new.absolute())
    assert client.get_experiment(run.info.experiment_id).artifact_location.startswith(
        new.absolute().as_uri() + "/")
    assert {"spec.yaml", "report"} <= {f.path for f in client.list_artifacts(parent)}
    assert not old.exists()  # nothing written to the old place


def test_sync_mlflow_on_a_moved_sweep_folder_repairs_its_store(trained: Path,
                                                               tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from orchestrator.sweep.driver import sync_mlflow

    old = sweep_folder(trained, tmp_path / "old")
    parent = MlflowSync(old.absolute(), default_tracking_uri(old.absolute()),
                        "tiny").parent_run("name: tiny\n")
    new = tmp_path / "moved"
    shutil.move(old, new)
    out = io.StringIO()
    sent = sync_mlflow(new, tracking_uri=None, console=Console(file=out, width=300))
    # the experiment and the parent run; the trial runs are made after the move
    assert f"the run folder moved from {old.absolute()}: 2 MLflow artifact" in out.getvalue()
    assert sum(sent.values()) > 0 and not old.exists()
    client = MlflowClient(default_tracking_uri(new.absolute()))
    runs = client.search_runs([client.get_run(parent).info.experiment_id])
    assert len(runs) == 3 and all(
        r.info.artifact_uri.startswith(new.absolute().as_uri() + "/") for r in runs)


def test_mlflow_down_still_writes_the_report(trained: Path, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = sweep_folder(trained, tmp_path / "run", tracking_uri=f"http://127.0.0.1:{port}")
    r = emerge("analyze", str(run), *FAST)
    assert r.exit_code == 0, r.output
    assert (run / "report" / "report.md").is_file()
    down = [line for line in r.output.splitlines() if line.startswith("mlflow:")]
    assert len(down) == 1 and down[0].startswith("mlflow: not logged") and str(port) in down[0]


def _pythia_rows(trial: str = "pythia-14m") -> pa.Table:
    """Rows as the Pythia evaluator writes them: revisions as steps, null levels."""
    now = datetime.now(UTC)
    rows = [dict(sweep="tiny", trial=trial, task="copy", level=None, scale="pythia-14m", seed=0,
                 step=step, measure=m, layer=layer, value=v, source="pythia", attempt=0,
                 wall_time=now)
            for i, step in enumerate((0, 1000, 2000, 4000, 8000))
            for m, layer, v in (("accuracy", None, 0.1 * i), ("rankme", 6, 20.0 - i))]
    return pa.Table.from_pylist(rows, schema=METRICS_SCHEMA)


def test_a_partial_folder_reports_what_is_there_and_what_is_missing(trained: Path,
                                                                     tmp_path: Path) -> None:
    run = sweep_folder(trained, tmp_path / "run", launched=["COPY-s0-0", "MOD-s0-0", "ADD-s0-0"])
    copy = TrialStore(run, "COPY-s0-0")
    (copy.checkpoint_dir / "COMPLETE.json").unlink()  # COPY stopped before its end
    # a part that a compaction left inside a larger one: its rows must not count twice
    t = copy.read()
    inner = t.filter(pa.compute.less_equal(t["step"], 9))
    copy.write_part(inner)
    assert len(copy.parts()) == 2 and inner.num_rows > 0
    TrialStore(run, "pythia-14m", "pythia").write_part(_pythia_rows())
    rows = read_metrics(run).num_rows  # live parts only: the contained part skipped
    r = emerge("analyze", str(run), "--no-mlflow", *FAST)
    assert r.exit_code == 0, r.output
    assert "1/3 launched trials have no metrics yet: ADD-s0-0" in r.output
    assert "1/2 trials have not finished" in r.output and "COPY-s0-0" in r.output
    assert "mlflow: skipped (--no-mlflow)" in r.output
    md = (run / "report" / "report.md").read_text()
    assert "1/3 launched trials have no metrics yet: ADD-s0-0" in md
    summary = json.loads((run / "report" / "report.json").read_text())
    assert summary["headline"]["rows"] == rows
    assert summary["headline"]["trials"] == 3.0
    inventory = pl.read_csv(run / "report" / "tables" / "inventory.csv")
    assert "pythia" in inventory["source"].to_list()


def test_trials_finished_on_different_environments_are_noted(trained: Path,
                                                            tmp_path: Path) -> None:
    """Each completion record keeps the build and instruction set the trial ran on; a run
    whose trials finished on two of them says so, naming which trial ran where (its seeds
    then fix training only to the last digits)."""
    from emergence_core.environment import describe_environment

    run = sweep_folder(trained, tmp_path / "run")
    here = describe_environment("cpu")
    for trial in ("COPY-s0-0", "MOD-s0-0"):
        env = json.loads(RunFolder(run).complete_path(trial).read_text())["environment"]
        assert {k: v for k, v in env.items() if k != "threads"} \
            == {k: v for k, v in here.items() if k != "threads"}
    one = emerge("analyze", str(run), "--no-mlflow", *FAST)
    assert one.exit_code == 0 and "environments" not in one.output, one.output
    path = RunFolder(run).complete_path("MOD-s0-0")  # MOD finished on another machine
    record = json.loads(path.read_text())
    record["environment"].update(cpu="Elsewhere CPU", cpu_capability="AVX512")
    path.write_text(json.dumps(record))
    two = emerge("analyze", str(run), "--no-mlflow", *FAST)
    assert two.exit_code == 0, two.output
    note = " ".join(two.output.split())
    assert "The finished trials ran on 2 environments" in note
    assert "on Elsewhere CPU (AVX512)" in note and "MOD-s0-0" in note
    assert "The finished trials ran on 2 environments" in (run / "report" / "report.md").read_text()
    path.write_text("")  # an empty record: said in one line, the trial still finished
    three = emerge("analyze", str(run), "--no-mlflow", *FAST)
    assert three.exit_code == 0, three.output
    said = " ".join(three.output.split())
    assert "COMPLETE.json: empty (0 bytes" in said and "MOD-s0-0's environment is not known" in said
    assert "environments, so" not in said and path.read_text() == ""


def test_an_empty_folder_gives_an_empty_report(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    r = emerge("analyze", str(tmp_path / "run"))
    assert r.exit_code == 0, r.output
    md = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "The metrics table is empty" in md and "is empty: nothing has run there yet" in md
    assert "mlflow: skipped" in r.output
    # analysed once, the folder is still a run folder
    assert emerge("analyze", str(tmp_path / "run")).exit_code == 0


def test_a_train_folder_is_reported_without_mlflow(tmp_path: Path) -> None:
    from orchestrator.cli.train import train_local

    cfg = tiny_config(*TINY[0])
    train_local(cfg, tmp_path / "train", console=Console(file=io.StringIO()))
    out = tmp_path / "elsewhere"
    r = emerge("analyze", str(tmp_path / "train"), "--out", str(out), *FAST)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "report.json").read_text())["headline"]["trials"] == 1.0
    assert "mlflow: skipped: an `emerge train` run folder" in r.output
    assert not (tmp_path / "train" / "report").exists()


@pytest.mark.parametrize(("make", "args", "says"), [
    ("stray", (), "is not a run folder"),
    ("nothing", (), "no such folder"),
    ("empty", ("--set", "treshold=0.6"), "did you mean 'threshold'"),
    ("empty", ("--set", "persistence=two"), "persistence: Input should be a valid integer"),
    ("empty", ("--threshold", "1.5"), "threshold must lie in [0, 1], got 1.5"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, make: str, args: tuple,
                                              says: str) -> None:
    run = tmp_path / "run"
    if make != "nothing":
        run.mkdir()
    if make == "stray":
        (run / "notes.txt").write_text("not a run")
    r = emerge("analyze", str(run), *args)
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], r.output
    assert not (run / "report").exists()


def test_sigterm_while_the_report_is_staged_keeps_the_earlier_report(trained: Path,
                                                                     tmp_path: Path) -> None:
    """A scheduler's SIGTERM mid-report: exit 143 with one line of its own, the staging folder
    gone, the report of the run before it untouched (it was left behind, exit by the shell's
    'Terminated', before ``stops_cleanly``)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run = sweep_folder(trained, tmp_path / "run")
    args = [sys.executable, "-m", "orchestrator.cli", "analyze", str(run), "--no-mlflow",
            "--set", "n_bootstrap=50"]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    first = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    before = (run / "report" / "report.md").read_bytes()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.monotonic() + 300
    while not list(run.glob(".report.tmp-*")):  # the report is being written
        assert proc.poll() is None, "analyze finished before its staging folder was seen"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("stopped by SIGTERM: "), err
    assert not list(run.glob(".report.tmp-*"))
    assert (run / "report" / "report.md").read_bytes() == before
