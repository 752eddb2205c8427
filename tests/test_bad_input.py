"""Bad input everywhere: one line per problem naming its cause, exit code 2, nothing started
or written. RELIABILITY.md lists every case below (a test keeps the two in step)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from emergence_core.run_folder import RunFolder
from orchestrator.cli.app import app
from tests.sweep_helpers import ROOT, assert_usage_errors

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
    assert len(CASES) >= 30
    assert {c for c, _, _ in CASES} >= {"train", "sweep", "resume", "status", "sync-mlflow",
                                        "pythia", "analyze", "probe"}
    doc = (ROOT / "RELIABILITY.md").read_text()
    table = doc.split("## Bad input", 1)[1]
    for command, _, expected in CASES:
        for line in expected:
            assert re.search(re.escape(f"`emerge {command}") + r".*" + re.escape(line), table), \
                (command, line)
