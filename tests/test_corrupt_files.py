"""Damaged files in a run folder: recovered from the last good copy with a warning, or one
line naming the file and what to do. Never a traceback, never rows rewritten silently."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from emergence_core.calibrations import read_calibration, write_calibration
from emergence_core.config import resolve_config
from emergence_core.model import build_model, scale_shape
from emergence_core.run_folder import ProbeJob, RunFolder, RunFolderError
from emergence_core.store import TrialStore, read_metrics
from emergence_core.trial.runner import TrialHooks, run_trial
from orchestrator.cli.app import app
from orchestrator.cli.train import _record
from orchestrator.probe_pool.queue import ProbeQueue
from orchestrator.tracking.sync import MlflowSync
from tests.conftest import tiny_overrides
from tests.sweep_helpers import (
    assert_mlflow_equals_parquet,
    assert_usage_errors,
    comparable,
    write_spec,
)


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _cfg():
    return resolve_config("MOD", "s0", 0, **tiny_overrides())


def test_a_damaged_state_resumes_from_the_previous_one_with_the_same_rows(tmp_path) -> None:
    cfg = _cfg()
    run_trial(cfg, tmp_path / "reference")
    run_trial(cfg, tmp_path / "run", stop_after=12)
    store = TrialStore(tmp_path / "run", cfg.trial_name())
    previous = RunFolder(tmp_path / "run").previous_state_path(cfg.trial_name())
    assert store.state_path.exists() and previous.exists()
    _truncate(store.state_path)
    notes: list[str] = []
    outcome = run_trial(cfg, tmp_path / "run", hooks=TrialHooks(on_note=notes.append))
    assert outcome.completed
    assert len(notes) == 1 and str(store.state_path) in notes[0] and "previous" in notes[0]
    assert comparable(read_metrics(tmp_path / "run")) == \
        comparable(read_metrics(tmp_path / "reference"))


def test_no_readable_state_is_one_line_and_nothing_is_rewritten(tmp_path) -> None:
    cfg = _cfg()
    run_trial(cfg, tmp_path, stop_after=12)
    store = TrialStore(tmp_path, cfg.trial_name())
    for path in (store.state_path, RunFolder(tmp_path).previous_state_path(cfg.trial_name())):
        path.write_bytes(b"\0" * 64)
    parts = {p: p.read_bytes() for _, _, p in store.parts()}
    with pytest.raises(RunFolderError, match=r"training state .*state\.pt cannot be read"):
        run_trial(cfg, tmp_path)
    assert {p: p.read_bytes() for _, _, p in store.parts()} == parts


def test_a_damaged_metric_part_is_named_and_kept_rows_stay(tmp_path) -> None:
    out = tmp_path / "run"
    args = ["train", "--task", "MOD", "--steps", "24", "--out", str(out), "--threads", "1",
            "--set", "train_size=200", "--set", "diag_size=40", "--set", "probe.n_probes=8",
            "--set", "probe.rankme_samples=16", "--set", "warmup_steps=2",
            "--batch-size", "12", "--set", "checkpoint.every_probes=2"]
    cfg = resolve_config("MOD", "s0", 0, steps=24, train_size=200, diag_size=40,
                         warmup_steps=2, batch_size=12, device="auto",
                         probe={"n_probes": 8, "rankme_samples": 16},
                         checkpoint={"every_probes": 2})
    run_trial(cfg, out, stop_after=12)  # as if `emerge train` had been stopped at step 12
    _record(out, cfg)
    store = TrialStore(out, "MOD-s0-0")
    first = store.parts()[0][2]
    _truncate(first)
    others = {p: p.read_bytes() for _, _, p in store.parts()}
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output  # after its progress line: one error line
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and f"metric part {first} cannot be read" in errors[0]
    assert "Traceback" not in result.output
    assert {p: p.read_bytes() for _, _, p in store.parts()} == others


def test_a_damaged_weights_file_is_named(tmp_path) -> None:
    cfg = _cfg()
    run_trial(cfg, tmp_path)
    store = TrialStore(tmp_path, cfg.trial_name())
    step = store.weight_steps()[1]
    _truncate(store.weights_path(step), 0.3)
    model = build_model(scale_shape("s0"), 128, 8, seed=0)
    with pytest.raises(RunFolderError, match=rf"weights file .*{step:012d}.* cannot be read"):
        TrialStore(tmp_path, cfg.trial_name()).load_weights(model, step)


def test_a_damaged_mlflow_ledger_is_rebuilt_without_a_second_run(tmp_path) -> None:
    cfg = _cfg()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sync = MlflowSync(tmp_path, uri, "led")
    sync.parent_run("name: led\n")
    run_id = sync.trial_run(cfg.trial_name(), cfg)
    ledger = RunFolder(tmp_path).ledger_path
    ledger.write_text(ledger.read_text()[:40])  # truncated mid-write by a full disk, say
    again = MlflowSync(tmp_path, uri, "led")
    assert again.trial_run(cfg.trial_name(), cfg) == run_id
    assert len(again.notes) == 1 and "was damaged" in again.notes[0]
    assert ledger.with_name("ledger.json.damaged").exists()
    runs = again.client.search_runs([again.client.get_experiment_by_name("led").experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(["led", cfg.trial_name()])


def _computed_again(part, path) -> None:
    """Write ``part`` to ``path`` as a resume computes it again: the same rows, a second
    later (a new wall time)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    later = pc.add(part["wall_time"].cast("int64"), 1000).cast(part.schema.field(
        "wall_time").type)
    pq.write_table(part.set_column(part.schema.get_field_index("wall_time"), "wall_time",
                                   later), path)


def test_a_rebuilt_ledger_does_not_log_rows_computed_again_twice(tmp_path) -> None:
    """A resume computes the rows after the last checkpoint again (a new wall time): after
    a rebuilt ledger they must not become second points at the same steps in MLflow."""
    import pyarrow.parquet as pq

    cfg = _cfg()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_trial(cfg, tmp_path, stop_after=12)
    sync = MlflowSync(tmp_path, uri, "led")
    sync.parent_run("name: led\n")
    assert sync.sync_trial(cfg.trial_name(), cfg) > 0
    last = TrialStore(tmp_path, cfg.trial_name()).parts()[-1][2]
    _computed_again(pq.read_table(last), last)
    ledger = RunFolder(tmp_path).ledger_path
    ledger.write_text(ledger.read_text()[:40])
    again = MlflowSync(tmp_path, uri, "led")
    assert again.sync_trial(cfg.trial_name(), cfg) == 0  # MLflow holds every (key, step)
    assert len(again.notes) == 1 and "was damaged" in again.notes[0]
    again.set_status(cfg.trial_name(), "FINISHED")
    assert_mlflow_equals_parquet(uri, tmp_path, "led", [cfg.trial_name()])


def test_steps_computed_again_after_the_held_check_are_not_logged_twice(tmp_path) -> None:
    """The resume of a damaged part (CI, test_sweep_e2e): MLflow held steps 9-12, the part
    holding them was set aside, and the rebuilt ledger's first sync saw only the steps
    before it. The trial then computed 9-12 again (new wall times): they must not become
    second points, although they come after that first sync."""
    import pyarrow.parquet as pq

    cfg = _cfg()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_trial(cfg, tmp_path, stop_after=12)
    sync = MlflowSync(tmp_path, uri, "held")
    sync.parent_run("name: held\n")
    assert sync.sync_trial(cfg.trial_name(), cfg) > 0
    first, _, last = TrialStore(tmp_path, cfg.trial_name()).parts()[-1]
    assert first > 0
    part = pq.read_table(last)
    last.unlink()  # set aside as damaged
    ledger = RunFolder(tmp_path).ledger_path
    ledger.write_text(ledger.read_text()[:40])
    again = MlflowSync(tmp_path, uri, "held")
    assert again.sync_trial(cfg.trial_name(), cfg) == 0  # MLflow holds the steps before it
    _computed_again(part, last)
    assert again.sync_trial(cfg.trial_name(), cfg) == 0  # and held: none sent
    again.set_status(cfg.trial_name(), "FINISHED")
    assert_mlflow_equals_parquet(uri, tmp_path, "held", [cfg.trial_name()])


def test_syncing_to_another_store_and_back_makes_no_second_run_or_point(tmp_path) -> None:
    """`emerge sync-mlflow --tracking-uri` elsewhere: the ledger of the first store is set
    aside and rebuilt from the second's runs, and again on the way back."""
    cfg = _cfg()
    run_trial(cfg, tmp_path / "run")
    first, second = (f"sqlite:///{tmp_path / name}" for name in ("a.db", "b.db"))
    ledger = RunFolder(tmp_path / "run").ledger_path
    for uri, trials in ((first, 0), (second, 0), (first, 1), (second, 1)):
        sync = MlflowSync(tmp_path / "run", uri, "two")
        sync.parent_run("name: two\n")
        sent = sync.sync_all([cfg])[cfg.trial_name()]
        assert (sent == 0) == bool(trials)  # back at a store: it holds every point
        assert_mlflow_equals_parquet(uri, tmp_path / "run", "two", [cfg.trial_name()])
        if uri == second or trials:
            assert len(sync.notes) == 1 and f"rebuilt for {uri}" in sync.notes[0]
            assert f"({trials} trials)" in sync.notes[0]
            assert ledger.with_name("ledger.json.other-store").exists()
        sync.set_status(None, "FINISHED")
    for uri in (first, second):  # one parent run per store
        client = MlflowSync(tmp_path / "run", uri, "two").client
        runs = client.search_runs([client.get_experiment_by_name("two").experiment_id])
        assert sorted(r.info.run_name for r in runs) == sorted(["two", cfg.trial_name()])


def test_a_stray_probe_queue_file_is_skipped_with_a_warning(tmp_path, caplog) -> None:
    queue = ProbeQueue(tmp_path)
    job = ProbeJob("MOD-s0-0", 40, "hessian")
    queue.enqueue(job)
    stray = RunFolder(tmp_path).probe_dir("queue") / "MOD-s0-0" / "notes.json"
    stray.write_text("{}")
    with caplog.at_level(logging.WARNING, logger="emerge"):
        assert queue.queued() == [job]
        assert queue.queued() == [job]
    warnings = [r.getMessage() for r in caplog.records if "notes.json" in r.getMessage()]
    assert len(warnings) == 1 and "not a probe job's file" in warnings[0]


def test_a_damaged_calibration_is_set_aside_and_the_pilot_runs_again(tmp_path, caplog) -> None:
    folder = RunFolder(tmp_path)
    write_calibration(folder, "MOD-s0-0", "llc", {"chosen": {"eps": 1e-6}})
    assert read_calibration(folder, "MOD-s0-0", "llc") == {"chosen": {"eps": 1e-6}}
    path = folder.calibration_path("MOD-s0-0", "llc")
    path.write_text('{"chosen": {"ep')
    with caplog.at_level(logging.WARNING, logger="emerge"):
        assert read_calibration(folder, "MOD-s0-0", "llc") is None
    assert not path.exists() and path.with_name("llc.json.damaged").exists()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and f"calibration {path} cannot be read" in warnings[0]


def test_a_damaged_sweep_file_as_launched_is_one_line(tmp_path) -> None:
    run_dir = tmp_path / "run"
    spec = write_spec(tmp_path / "s.yaml", name="s", run_dir=str(run_dir), tasks=["MOD"],
                      scales=["s0"])
    folder = RunFolder(run_dir)
    folder.record_launch(spec.read_text(), "sqlite:///x.db",
                         [{"name": "launch-0", "trials": ["MOD-s0-0"]}])
    folder.spec_path.write_text(yaml.safe_dump({"name": "s"})[:3] + ": [")
    for args in (["resume", str(run_dir)], ["status", str(run_dir)]):
        result = CliRunner().invoke(app, args)
        assert_usage_errors(result, [f"{folder.spec_path}: invalid YAML"])


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 6 MB tmpfs as the run folder (root and mount rights needed, as in CI)."""
    import subprocess

    where = tmp_path / "disk"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(where)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root with mount rights)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_stops_with_one_line_and_resume_completes(tmp_path, small_disk) -> None:
    import subprocess

    out = small_disk / "run"
    args = ["train", "--task", "MOD", "--steps", "40", "--out", str(out), "--threads", "1",
            "--set", "train_size=200", "--set", "diag_size=40", "--set", "probe.n_probes=20",
            "--set", "probe.rankme_samples=16", "--set", "warmup_steps=2", "--batch-size", "12",
            "--set", "checkpoint.every_probes=1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "No space left on device writing" in errors[0]
    assert not [p for p in out.rglob(".*.tmp")]  # nothing half-written left behind
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = resolve_config("MOD", "s0", 0, steps=40, train_size=200, diag_size=40,
                         warmup_steps=2, batch_size=12, device="auto",
                         probe={"n_probes": 20, "rankme_samples": 16},
                         checkpoint={"every_probes": 1})
    run_trial(cfg, tmp_path / "reference")
    assert comparable(read_metrics(out)) == comparable(read_metrics(tmp_path / "reference"))


@pytest.mark.slow
def test_a_full_disk_in_a_sweep_fails_in_one_line_and_resume_completes(tmp_path,
                                                                       small_disk) -> None:
    """A real sweep whose run folder fills up (Tune's checkpoints live there too): the trial
    fails naming the full disk, nothing half-written is kept, and once space is freed
    `emerge resume` completes with the rows of an uninterrupted run, each once."""
    import subprocess

    from tests.sweep_helpers import (
        keys_unique,
        ray_tmpdir,
        run_sweep,
        start_reference,
        wait_reference,
    )

    subprocess.run(["mount", "-o", "remount,size=14m", str(small_disk)], check=True)
    run_dir = small_disk / "run"
    spec = write_spec(tmp_path / "disk.yaml", name="disk", run_dir=str(run_dir),
                      tasks=["MOD"], scales=["s0"], seeds=[0], retries=1,
                      train={"steps": 90, "diag_size": 60,
                             "probe": {"n_probes": 30, "rankme_samples": 30},
                             "checkpoint": {"every_probes": 3, "weights_every": None}})
    reference = start_reference(spec, tmp_path / "reference", tmp_path / "reference.log")
    with ray_tmpdir() as rt:
        rc = run_sweep(["sweep", str(spec)], rt, tmp_path / "full.log")
        text = (tmp_path / "full.log").read_text()
        assert rc == 1, text[-3000:]
        assert "No space left on device" in text and "Traceback" not in text, text[-3000:]
        assert not [p for p in run_dir.rglob(".*.tmp")]  # nothing half-written left
        kept = read_metrics(run_dir)
        assert kept.num_rows and keys_unique(kept) and max(kept["step"].to_pylist()) < 90
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        rc = run_sweep(["resume", str(run_dir)], rt, tmp_path / "resume.log")
    text = (tmp_path / "resume.log").read_text()
    assert rc == 0 and "Traceback" not in text, text[-3000:]
    table = read_metrics(run_dir)
    assert keys_unique(table)
    assert comparable(table) == wait_reference(reference, tmp_path / "reference",
                                               tmp_path / "reference.log")
    assert_mlflow_equals_parquet(f"sqlite:///{run_dir / 'mlflow.db'}", run_dir, "disk",
                                 ["MOD-s0-0"])

