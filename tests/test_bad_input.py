"""Bad input everywhere: one line per problem naming its cause, exit code 2, nothing started
or written. RELIABILITY.md lists every case below (a test keeps the two in step).

``RUN_CASES`` (issue 23) also damage the files of a real run folder (a tiny trial trained
once per session, copied per case), give values that collide, and point at services that do
not answer: exit 2, or 1 for a runtime fault, one line, no traceback, within a bound, and
nothing written, deleted, renamed or left locked anywhere under the test's folder."""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import ray  # noqa: F401 - imported first here, so Ray's log handler holds the real stderr
import yaml
from typer.testing import CliRunner

from emergence_core.run_folder import RunFolder
from orchestrator.cli.app import app
from tests.conftest import tiny_overrides
from tests.sweep_helpers import ROOT, assert_usage_errors, free_port

GOOD = {"name": "b", "tasks": ["MOD"], "scales": ["s0"]}


def _sweep(tmp: Path, **changes) -> str:
    data = {**GOOD, "run_dir": str(tmp / "run"), **changes}
    (tmp / "s.yaml").write_text(yaml.safe_dump(data))
    return str(tmp / "s.yaml")


def _text(tmp: Path, text: str) -> str:
    (tmp / "s.yaml").write_text(text)
    return str(tmp / "s.yaml")


def _folder(tmp: Path, kind: str) -> str:
    path = tmp / "folder"
    path.mkdir()
    if kind == "foreign":
        (path / "notes.txt").write_text("mine")
    return str(path)


# (command, how its arguments are made in a fresh folder, the line each problem gives)
CASES: list[tuple[str, object, list[str]]] = [
    ("train", lambda t: ["--task", "MDO"], ["unknown task 'MDO' (did you mean 'MOD'?)"]),
    ("train", lambda t: ["--task", "MOD", "--scale", "s7"], ["unknown scale 's7'"]),
    ("train", lambda t: ["--task", "MOD", "--steps", "0"], ["--steps must be positive, got 0"]),
    ("train", lambda t: ["--task", "MOD", "--threads", "0"], ["--threads must be positive"]),
    ("train", lambda t: ["--task", "MOD", "--lr", "-1"], ["lr: Input should be greater than 0"]),
    ("train", lambda t: ["--task", "MOD", "--set", "probe.n_probe=3"],
     ["probe.n_probe: unknown key; did you mean 'n_probes'?"]),
    ("train", lambda t: ["--task", "MOD", "--levels", "1,4"], ["levels: unknown level 4"]),
    ("train", lambda t: ["--task", "MOD", "--set", "nonsense"], ["expected KEY=VALUE"]),
    ("train", lambda t: ["--task", "MOD", "--out", _folder(t, "foreign")],
     ["is not empty and holds no emerge run"]),
    ("sweep", lambda t: [str(t / "missing.yaml")], ["missing.yaml: no such sweep file"]),
    ("sweep", lambda t: [_text(t, "name: [b\n")], ["invalid YAML at line"]),
    ("sweep", lambda t: [_text(t, "- MOD\n")], ["expected a mapping of fields"]),
    ("sweep", lambda t: [_sweep(t, tasks=["MDO"])], ["tasks[0]: unknown task 'MDO'"]),
    ("sweep", lambda t: [_sweep(t, seed=[1])], ["seed: unknown key; did you mean 'seeds'?"]),
    ("sweep", lambda t: [_sweep(t, scales=[])], ["scales: empty grid"]),
    ("sweep", lambda t: [_sweep(t, probes={"measures": {"hessain": {}}})],
     ["unknown expensive measure 'hessain'"]),
    ("sweep", lambda t: [_sweep(t, plugins=["no_such_lab.ext"])],
     ["plugin 'no_such_lab.ext' cannot be imported"]),
    ("sweep", lambda t: [_sweep(t, define_scales={"s9": {"layers": 2, "width": 100,
                                                          "heads": 3}})],
     ["d_model 100 is not a multiple of n_head 3"]),
    ("sweep", lambda t: [_sweep(t, run_dir="s3://bucket/runs")],
     ["s3:// run folders are not supported"]),
    ("sweep", lambda t: [_sweep(t, name="my sweep")], ["name: use letters, digits"]),
    ("sweep", lambda t: [_sweep(t, train={"steps": 10, "warmup_steps": 20})],
     ["warmup_steps 20 exceeds steps 10"]),
    ("resume", lambda t: [str(t / "nowhere")], ["nowhere is not a sweep's run folder "
                                                 "(no such folder)"]),
    ("resume", lambda t: [_folder(t, "foreign")], ["is not a sweep's run folder (no sweep.json"]),
    ("status", lambda t: [str(t / "nowhere")], ["is not a sweep's run folder"]),
    ("status", lambda t: ["--json", _folder(t, "empty")], ["is not a sweep's run folder"]),
    ("sync-mlflow", lambda t: [str(t / "nowhere")], ["is not a sweep's run folder"]),
    ("pythia", lambda t: [str(t / "missing.yaml")], ["missing.yaml: no such sweep file"]),
    ("pythia", lambda t: [_text(t, "name: p\nmodels: [pythia-160m]\n")],
     ["models[0]: model name 'pythia-160m'"]),
    ("pythia", lambda t: [_text(t, "name: p\nrevisions: [stpe5]\n")],
     ["revisions[0]: unknown Pythia revision 'stpe5'"]),
    ("pythia", lambda t: [_text(t, "name: p\npositions: [answer]\n")],
     ["positions[0]: unknown read position 'answer'"]),
    ("probe", lambda t: [str(t / "nowhere"), "--measure", "llc", "--step", "0"],
     ["nowhere: no such run folder"]),
    ("probe", lambda t: [_folder(t, "foreign"), "--measure", "llc", "--step", "0"],
     ["is not an emerge run folder (no sweep.json and no run.json)"]),
    ("probe", lambda t: [_folder(t, "empty"), "--measure", "lcc", "--step", "0"],
     ["unknown expensive measure 'lcc'"]),
    ("analyze", lambda t: [str(t / "nowhere")], ["no such folder"]),
    ("analyze", lambda t: [str(Path(_text(t, "x: 1\n")))], ["is a file, not a run folder"]),
    ("analyze", lambda t: [_folder(t, "foreign")], ["is not a run folder"]),
    ("analyze", lambda t: [_folder(t, "empty"), "--set", "n_bootstrp=10"],
     ["analysis setting 'n_bootstrp' is unknown; did you mean 'n_bootstrap'?"]),
    ("analyze", lambda t: [_folder(t, "empty"), "--threshold", "2"], ["threshold"]),
]


# -- issue 23: a real run folder, damaged; values that collide; services that do not answer --

TRIAL = "MOD-s0-0"
ALERT = f"alerts/{TRIAL}/part-000000000012-000000000012.parquet"
_BUILT: dict[str, Path] = {}


def _built(kind: str) -> Path:
    """A tiny MOD trial trained for real, once per session: as a sweep's run folder (spec.yaml
    and sweep.json as `emerge sweep` records them) or as an `emerge train` one (run.json)."""
    if kind not in _BUILT:
        from emergence_core.config import resolve_config
        from emergence_core.trial.runner import run_trial
        from orchestrator.cli.train import _record
        from orchestrator.tracking.store import default_tracking_uri

        root = Path(tempfile.mkdtemp(prefix="emerge-bad-"))
        atexit.register(shutil.rmtree, root, True)
        out = root / kind
        cfg = resolve_config("MOD", "s0", 0, **tiny_overrides())
        run_trial(cfg, out, **({"sweep": "b"} if kind == "sweep" else {}))
        if kind == "sweep":
            spec = {**GOOD, "run_dir": str(out), "train": tiny_overrides()}
            RunFolder(out).record_launch(yaml.safe_dump(spec), default_tracking_uri(out),
                                         [{"name": "launch-0", "trials": [TRIAL]}])
        else:
            _record(out, cfg)
        assert RunFolder(out).is_complete(TRIAL)
        _BUILT[kind] = out
    return _BUILT[kind]


def _run(tmp: Path, kind: str = "sweep", damage: dict[str, bytes] | None = None) -> str:
    """A copy of the built run folder in ``tmp``, each file ``damage`` names (its path in
    the folder) holding those bytes."""
    path = tmp / "run"
    shutil.copytree(_built(kind), path)
    for rel, data in (damage or {}).items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    return str(path)


def _zero_alert(tmp: Path) -> str:
    return _run(tmp, damage={ALERT: b""})


def _utf16(tmp: Path, text: str) -> str:
    (tmp / "s.yaml").write_bytes(text.encode("utf-16"))
    return str(tmp / "s.yaml")


def _bytes(tmp: Path, data: bytes) -> str:
    (tmp / "s.yaml").write_bytes(data)
    return str(tmp / "s.yaml")


def _file(tmp: Path, name: str) -> str:
    (tmp / name).write_text("a user's file")
    return str(tmp / name)


def _code_folder(tmp: Path) -> str:
    """A folder that is not a run, though it has a checkpoints/ of its own."""
    (tmp / "code" / "checkpoints").mkdir(parents=True)
    (tmp / "code" / "checkpoints" / "model.pt").write_bytes(b"weights")
    (tmp / "code" / "train.py").write_text("print('train')\n")
    return str(tmp / "code")


def _reported(tmp: Path) -> str:
    """A run folder whose report/ holds an earlier report and a user's file beside it."""
    from emergence_core.analysis import empty_metrics, write_report

    run = _run(tmp)
    write_report(empty_metrics(), Path(run) / "report")
    (Path(run) / "report" / "mine.txt").write_text("a user's notes")
    return run


def _no_cuda_device() -> str:
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return "cuda" if n == 0 else f"cuda:{n}"


def _huge_grid(tmp: Path) -> str:
    """8 tasks x 5 scales x 25,000 seeds: 10^6 trials."""
    return _sweep(tmp, tasks=["COPY", "REV", "CMP", "PAR", "ADD", "MOD", "SORT", "MUL"],
                  scales=["s0", "s1", "s2", "s3", "s4"], seeds=list(range(25_000)))


COMPLETE = f"checkpoints/{TRIAL}/COMPLETE.json"
TRAIN = ["--task", "MOD", "--steps", "24", "--batch-size", "12"]

# (command, how its arguments are made in a fresh folder, the lines, the exit code)
RUN_CASES: list[tuple[str, object, list[str], int]] = [
    # 1. nothing deleted or rewritten that the command did not write
    ("analyze", lambda t: [(r := _run(t)), "--out", r, "--no-mlflow"],
     ["is the run folder"], 2),
    ("analyze", lambda t: [_run(t), "--out", str(t), "--no-mlflow"],
     ["or holds it; the report replaces its folder whole"], 2),
    ("analyze", lambda t: [_run(t), "--out", str(Path(_folder(t, "foreign"))), "--no-mlflow"],
     ["already holds files that are not an emerge report (notes.txt)"], 2),
    ("analyze", lambda t: [_run(t), "--out", _file(t, "out.txt"), "--no-mlflow"],
     ["is an existing file"], 2),
    ("analyze", lambda t: [(r := _run(t)), "--out", f"{r}/metrics", "--no-mlflow"],
     ["not an emerge report"], 2),
    ("analyze", lambda t: [_reported(t), "--no-mlflow"],
     ["holds an earlier report and files it did not write (mine.txt)"], 2),
    ("analyze", lambda t: [_code_folder(t)], ["is not a run folder (no sweep.json, run.json"], 2),
    ("train", lambda t: [*TRAIN, "--out", _file(t, "out.txt")], ["is a file, not a folder"], 2),
    ("sweep", lambda t: [_sweep(t, run_dir=_file(t, "runfile"))], ["is a file; set run_dir"], 2),
    # 2. damaged files: one line naming the file, what is wrong, what to do
    ("status", lambda t: [_zero_alert(t)],
     ["part-000000000012-000000000012.parquet: empty (0 bytes"], 2),
    ("status", lambda t: [_run(t, damage={ALERT: b"PAR1xx"})],
     [".parquet: not a readable Parquet file"], 2),
    ("status", lambda t: ["--json", _run(t, damage={COMPLETE: b""})],
     ["COMPLETE.json: empty (0 bytes"], 2),
    ("status", lambda t: ["--json", _run(t, damage={COMPLETE: b"[]"})],
     ["COMPLETE.json: holds a JSON list, expected a JSON object"], 2),
    ("status", lambda t: [_run(t, damage={"sweep.json": b""})],
     ["sweep.json: empty (0 bytes"], 2),
    ("status", lambda t: [_run(t, damage={"spec.yaml": "name: b\n".encode("utf-16")})],
     ["spec.yaml: UTF-16 (or UTF-32) text, not UTF-8"], 2),
    ("resume", lambda t: [_run(t, damage={"sweep.json": b"[]"})],
     ["sweep.json: holds a JSON list, expected a JSON object"], 2),
    ("resume", lambda t: [_run(t, damage={"spec.yaml": b""})],
     ["expected a mapping of fields at the top level"], 2),
    ("sync-mlflow", lambda t: [_run(t, damage={"sweep.json": b'{"run_dir": "/x", "trac'})],
     ["sweep.json: not valid JSON"], 2),
    ("sync-mlflow", lambda t: [_run(t, damage={"mlflow.db": b"not a database, a user's notes"})],
     ["mlflow.db: not a SQLite database"], 2),
    ("sync-mlflow", lambda t: [_run(t, damage={"mlflow.db": b""})],
     ["mlflow.db: empty (0 bytes), not a SQLite database"], 2),
    ("probe", lambda t: [_run(t, "train", damage={"run.json": b""}), "--measure", "llc", "--step",
                         "0"], ["run.json: empty (0 bytes"], 2),
    ("probe", lambda t: [_run(t, "train", damage={"run.json": b"[]"}), "--measure", "llc", "--step",
                         "0"], ["run.json: holds a JSON list"], 2),
    ("train", lambda t: [*TRAIN, "--out", _run(t, "train", damage={"run.json": b""})],
     ["run.json: empty (0 bytes"], 2),
    ("train", lambda t: [*TRAIN, "--out", _run(t, "train", damage={
        "run.json": '{"config": {}}'.encode("utf-16")})], ["run.json: UTF-16"], 2),
    ("sweep", lambda t: [_utf16(t, "name: b\ntasks: [MOD]\nscales: [s0]\n")],
     ["s.yaml: UTF-16 (or UTF-32) text, not UTF-8"], 2),
    ("sweep", lambda t: [_bytes(t, "name: caf\u00e9\ntasks: [MOD]\n".encode("latin-1"))],
     ["s.yaml: not UTF-8 text (byte 0xe9"], 2),
    ("sweep", lambda t: [_text(t, "2024: notes\nname: b\ntasks: [MOD]\nscales: [s0]\n")],
     ["a top-level key is not a name: 2024"], 2),
    ("sweep", lambda t: [_text(t, "name: b\ntasks: [MOD]\nscales: [s0]\ntasks: [ADD]\n")],
     ["key 'tasks' is given twice (first at line 2)"], 2),
    ("sweep", lambda t: [_text(t, "name: b\ntasks: [MOD]\nscales: [s0]\ntrain:\n  steps: 5"
                                  "\n  steps: 9\n")],
     ["key 'steps' is given twice (first at line 5)"], 2),
    ("sweep", lambda t: [str(t)], ["is a folder, not a sweep file"], 2),
    ("pythia", lambda t: [_text(t, "2024: notes\nname: p\n")],
     ["a top-level key is not a name: 2024"], 2),
    ("pythia", lambda t: [_utf16(t, "name: p\n")], ["s.yaml: UTF-16 (or UTF-32) text"], 2),
    ("pythia", lambda t: [_text(t, "name: p\nname: q\n")], ["key 'name' is given twice"], 2),
    # 3. values checked at the edge, before anything is written or started
    ("train", lambda t: [*TRAIN, "--set", "seed=3"], ["seed is set with --seed, not --set"], 2),
    ("train", lambda t: [*TRAIN, "--set", "task=ADD"], ["task is set with --task, not --set"], 2),
    ("train", lambda t: [*TRAIN, "--set", "scale=s1"], ["scale is set with --scale"], 2),
    ("train", lambda t: ["--task", "MOD", "--steps", "8", "--set", "steps=12"],
     ["--steps 8 and --set steps=12 disagree"], 2),
    ("train", lambda t: [*TRAIN, "--set", "batch_size=24"],
     ["--batch-size 12 and --set batch_size=24 disagree"], 2),
    ("train", lambda t: [*TRAIN, "--device", "gpu"], ["device: unknown device 'gpu'"], 2),
    ("train", lambda t: [*TRAIN, "--set", "device=tpu"], ["device: unknown device 'tpu'"], 2),
    ("train", lambda t: [*TRAIN, "--device", _no_cuda_device(), "--out", str(t / "run")],
     ["is not on this machine"], 2),
    ("probe", lambda t: [_run(t, "train"), "--measure", "llc", "--step", "0", "--threads",
                         "-1"], ["--threads must be positive, got -1"], 2),
    ("analyze", lambda t: [_run(t), "--set", "signal_measure=rankmee", "--no-mlflow"],
     ["signal_measure: unknown measure 'rankmee'; did you mean 'rankme'?"], 2),
    ("analyze", lambda t: [_run(t), "--set", "event_measures=[accuracy, acuracy]",
                           "--no-mlflow"],
     ["event_measures: unknown measure 'acuracy'; did you mean 'accuracy'?"], 2),
    ("sweep", lambda t: [_sweep(t, tracking_uri="nosuch://x")],
     ["tracking_uri: unknown tracking URI scheme 'nosuch://'"], 2),
    ("sweep", lambda t: [_sweep(t, tracking_uri="./mlruns")],
     ["tracking_uri: './mlruns' is a plain path"], 2),
    ("sweep", lambda t: [_sweep(t), "--tracking-uri", "nosuch://x"],
     ["--tracking-uri: unknown tracking URI scheme 'nosuch://'"], 2),
    ("resume", lambda t: [_run(t), "--tracking-uri", "nosuch://x"],
     ["--tracking-uri: unknown tracking URI scheme"], 2),
    ("analyze", lambda t: [_run(t), "--tracking-uri", "nosuch://x"],
     ["--tracking-uri: unknown tracking URI scheme"], 2),
    ("sync-mlflow", lambda t: [_run(t), "--tracking-uri", "nosuch://x"],
     ["--tracking-uri: unknown tracking URI scheme 'nosuch://'"], 2),
    # 4. bounded work before the first word; services that do not answer (exit 1)
    ("sweep", lambda t: [_huge_grid(t), "--dry-run"],
     ["the grid has 1,000,000 trials (tasks 8 x scales 5 x seeds 25000); a sweep file holds "
      "at most 10,000"], 2),
    ("sweep", lambda t: [_sweep(t), "--address", f"127.0.0.1:{free_port()}"],
     ["cannot reach the Ray cluster at 127.0.0.1:"], 1),
    ("sweep", lambda t: [_sweep(t), "--dry-run", "--address", f"127.0.0.1:{free_port()}"],
     ["cannot reach the Ray cluster at 127.0.0.1:"], 1),
    ("sync-mlflow", lambda t: [_run(t), "--tracking-uri", "http://127.0.0.1:9"],
     ["cannot reach MLflow at http://127.0.0.1:9"], 1),
]


@pytest.mark.parametrize(("command", "make", "expected", "code"), RUN_CASES,
                         ids=[f"{c}-{i}" for i, (c, _, _, _) in enumerate(RUN_CASES)])
def test_damaged_files_and_colliding_values_are_one_line_and_change_nothing(
        tmp_path, command, make, expected, code) -> None:
    args = make(tmp_path)
    before = _snapshot(tmp_path)
    t0 = time.monotonic()
    result = CliRunner().invoke(app, [command, *args])
    assert time.monotonic() - t0 < 30, "past its bound"
    if code == 2:
        assert_usage_errors(result, expected)
    else:
        assert result.exit_code == code, result.output
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert expected[0] in lines[0], result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    # nothing written, deleted or renamed, and no lock (driver.lock, ledger.lock) left
    assert _snapshot(tmp_path) == before


def test_analyze_reports_around_a_damaged_alert_part_and_sweep_record(tmp_path) -> None:
    """The report is the product: a damaged alert part is left out and named, a sweep.json
    of the wrong shape is named (its launches unknown), as for a damaged metric part."""
    run = Path(_zero_alert(tmp_path))
    (run / "sweep.json").write_text("[]")
    result = CliRunner().invoke(app, ["analyze", str(run), "--no-mlflow", "--set",
                                      "n_bootstrap=20"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    said = " ".join(result.output.split())
    assert f"1 alert parts could not be read and were left out: {ALERT} (empty (0 bytes" in said
    assert "sweep.json could not be read (holds a JSON list, expected a JSON object)" in said
    assert (run / ALERT).read_bytes() == b""  # named, not touched
    assert ALERT in " ".join((run / "report" / "report.md").read_text().split())


def test_a_refused_sweep_leaves_no_lock_and_no_folder(tmp_path, monkeypatch) -> None:
    """In a real local Ray: a trial that asks for 1000 GPUs is refused before anything starts;
    the driver's lock and the run folder made for it are gone."""
    from tests.sweep_helpers import ray_tmpdir

    spec = _sweep(tmp_path, per_scale={"s0": {"resources": {"cpus": 1, "gpus": 1000}}})
    before = _snapshot(tmp_path)
    with ray_tmpdir() as rt:
        monkeypatch.setenv("RAY_TMPDIR", rt)
        result = CliRunner().invoke(app, ["sweep", spec, "--address", "local"])
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "trial MOD-s0-0 needs 1000 GPU(s)" in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
    assert _snapshot(tmp_path) == before


def _snapshot(tmp: Path) -> dict[str, bytes]:
    return {str(p.relative_to(tmp)): p.read_bytes() for p in tmp.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("command", "make", "expected"), CASES,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_bad_input_is_one_line_per_problem_exit_2_nothing_written(tmp_path, command, make,
                                                                  expected) -> None:
    args = make(tmp_path)
    before = _snapshot(tmp_path)
    result = CliRunner().invoke(app, [command, *args])
    assert_usage_errors(result, expected)
    assert "Traceback" not in result.output
    assert _snapshot(tmp_path) == before  # nothing written, nothing started
    assert not RunFolder(tmp_path / "run").path.exists()


def test_the_campaign_covers_every_command_and_reliability_md_lists_it() -> None:
    assert len(CASES) >= 30 and len(CASES) + len(RUN_CASES) >= 70
    assert {c for c, _, _ in CASES} >= {"train", "sweep", "resume", "status", "sync-mlflow",
                                        "pythia", "analyze", "probe"}
    doc = (ROOT / "RELIABILITY.md").read_text()
    table = doc.split("## Bad input", 1)[1]
    for command, _, expected in [*CASES, *((c, m, e) for c, m, e, _ in RUN_CASES)]:
        for line in expected:
            assert re.search(re.escape(f"`emerge {command}") + r".*" + re.escape(line), table), \
                (command, line)
