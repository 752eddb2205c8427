"""`emerge train`: a real short run, resume, and bad input that writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from emergence_core.store import metric_files, read_metrics
from orchestrator.cli.app import app
from tests.sweep_helpers import assert_usage_errors

SMALL = ["--set", "train_size=200", "--set", "diag_size=40", "--set", "probe.n_probes=6",
         "--set", "probe.rankme_samples=16", "--set", "warmup_steps=2", "--batch-size", "12",
         "--threads", "1"]


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_train_writes_metrics_and_weights_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = _run("train", "--task", "MOD", "--steps", "12", "--out", str(out), *SMALL)
    assert r.exit_code == 0, r.output
    assert "MOD-s0-0" in r.output
    # the summary: per level the final accuracy (raw and chance-corrected) and loss, then
    # the next command
    said = " ".join(r.output.split())
    assert "final accuracy" in said and "chance-corrected" in said and "final loss" in said
    assert f"next:emergeanalyze{out}" in "".join(r.output.split())  # (rich folds lines)
    files = metric_files(out)
    assert files and all(pq.read_schema(f).field("measure") for f in files)
    table = read_metrics(out)
    assert max(table["step"].to_pylist()) == 12
    weights = sorted((out / "checkpoints" / "MOD-s0-0" / "weights").glob("*.safetensors"))
    assert len(weights) >= 2
    assert (out / "events" / "MOD-s0-0.parquet").exists()
    recorded = json.loads((out / "run.json").read_text())
    assert recorded["config"]["task"] == "MOD" and recorded["config"]["steps"] == 12
    # the same command again finds the run complete and changes nothing
    before = read_metrics(out).num_rows
    r2 = _run("train", "--task", "MOD", "--steps", "12", "--out", str(out), *SMALL)
    assert r2.exit_code == 0, r2.output
    assert read_metrics(out).num_rows == before


def test_a_short_run_states_its_probe_grid_and_does_not_probe_every_step(tmp_path: Path
                                                                         ) -> None:
    """Issue 26: `--steps 200` probed all 200 steps (the default 200 probes) and said
    nothing. A short run now probes every 4th step unless probe.n_probes is given, says so
    before it starts, and an explicit grid as dense as the steps gets a warning."""
    i = SMALL.index("probe.n_probes=6")
    small = SMALL[:i - 1] + SMALL[i + 1:]  # SMALL without its --set probe.n_probes=6
    out = tmp_path / "run"
    r = _run("train", "--task", "MOD", "--steps", "12", "--out", str(out), *small)
    assert r.exit_code == 0, r.output
    assert "MOD-s0-0: 12 steps, cheap probes at 3 of them (and step 0), every 4th step" in \
        r.output
    recorded = json.loads((out / "run.json").read_text())
    assert recorded["config"]["probe"]["n_probes"] == 3
    steps = set(read_metrics(out).filter(pc.equal(read_metrics(out)["measure"], "rankme"))
                ["step"].to_pylist())
    assert len(steps) == 4  # step 0 and three probes
    dense = _run("train", "--task", "MOD", "--steps", "6", "--out", str(tmp_path / "d"),
                 *SMALL)
    assert dense.exit_code == 0, dense.output
    assert "warning: probe.n_probes=6 probes every step(s) of a 6-step run" in dense.output


def test_a_folder_holding_another_run_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _run("train", "--task", "MOD", "--steps", "4", "--out", str(out), *SMALL).exit_code == 0
    listing = sorted(p.relative_to(out) for p in out.rglob("*"))
    r = _run("train", "--task", "MOD", "--steps", "5", "--out", str(out), *SMALL)
    assert r.exit_code == 2
    assert "holds a different run" in r.output
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == listing


@pytest.mark.parametrize(("args", "message"), [
    (["--task", "MDO"], "unknown task 'MDO' (did you mean 'MOD'?)"),
    (["--task", "MOD", "--scale", "s7"], "unknown scale 's7'"),
    (["--task", "MOD", "--levels", "0,1"], "levels: unknown level 0"),
    (["--task", "MOD", "--levels", "one"], "--levels 'one'"),
    (["--task", "MOD", "--steps", "0"], "--steps must be positive"),
    (["--task", "MOD", "--steps", "-5"], "--steps must be positive"),
    (["--task", "MOD", "--lr", "-1"], "lr: Input should be greater than 0"),
    (["--task", "MOD", "--set", "probe.n_probe=3"],
     "probe.n_probe: unknown key; did you mean 'n_probes'?"),
    (["--task", "MOD", "--levels", "1,4"], "levels: unknown level 4; levels are 1, 2, 3 "
                                           "(got [1, 4])"),
    (["--task", "MOD", "--set", "level_params.1.p=1"], "p must be at least 2"),
    (["--task", "MOD", "--set", "nonsense"], "expected KEY=VALUE"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, args, message) -> None:
    out = tmp_path / "never"
    r = _run("train", *args, "--out", str(out))
    assert_usage_errors(r, [message])
    assert not out.exists()


def test_every_problem_of_a_train_command_at_once(tmp_path: Path) -> None:
    out = tmp_path / "never"
    r = _run("train", "--task", "MODD", "--scale", "s9", "--steps", "-3", "--set",
             "probe.n_probe=10", "--out", str(out))
    assert_usage_errors(r, ["--steps must be positive, got -3",
                            "--task: unknown task 'MODD' (did you mean 'MOD'?)",
                            "--scale: unknown scale 's9'",
                            "probe.n_probe: unknown key; did you mean 'n_probes'?"])
    assert not out.exists()


def test_a_non_empty_foreign_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    r = _run("train", "--task", "MOD", "--out", str(tmp_path))
    assert r.exit_code == 2 and "holds no emerge run" in r.output
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["PAR", "CMP"])
def test_forty_steps_at_chance_record_no_emergence(tmp_path: Path, task: str) -> None:
    """Issue 11: 40 steps of PAR or CMP at s0 learn one constant answer (raw accuracy about
    0.5 on PAR and CMP level 1), which must not count as emergence."""
    out = tmp_path / "run"
    # 250 diagnostic problems per level rather than 1000: the probes are most of the run's
    # time, and the trap (a constant answer scoring chance) reads the same on fewer problems
    r = _run("train", "--task", task, "--scale", "s0", "--steps", "40", "--out", str(out),
             "--threads", "1", "--set", "diag_size=250")
    assert r.exit_code == 0, r.output
    events = pq.read_table(out / "events" / f"{task}-s0-0.parquet").to_pylist()
    assert [e["level"] for e in events] == [1, 2, 3]
    assert all(e["step"] is None for e in events), events
    assert all(0.0 < e["chance"] < 1.0 for e in events)
    table = read_metrics(out).to_pylist()
    raw = [x["value"] for x in table if x["measure"] == "accuracy" and x["level"] is not None]
    assert max(raw) >= 0.4  # the constant answer's raw accuracy: the trap this guards
    chance = {x["level"]: x["value"] for x in table if x["measure"] == "chance"}
    assert chance == {e["level"]: e["chance"] for e in events}


def test_alert_lines_past_three_per_level_are_counted_not_printed(tmp_path: Path) -> None:
    from emergence_core.trial.alerts import Alert
    from orchestrator.cli.train import AlertLines

    lines = AlertLines()
    alerts = [Alert("precursor", "rankme", 2, level, step, step - 5, 3.0, 5.0, -6.0, 0.1)
              for step in range(10, 60, 10) for level in (1, 2)]
    printed = [x for x in map(lines.line, alerts) if x is not None]
    assert len(printed) == 6  # three per level
    assert printed[0].startswith("precursor alert: rankme left its regime (L1 layer 2")
    assert printed[-1].endswith("(later alerts of this level are counted)")
    assert lines.summary(tmp_path) == f"alerts not shown: level 1 2, level 2 2; all 10 are in " \
        f"{tmp_path}"
    assert AlertLines().summary(tmp_path) is None


@pytest.mark.parametrize("command", ["train", "analyze", "probe"])
def test_help_names_what_set_takes(command: str) -> None:
    r = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "120"})
    assert r.exit_code == 0, r.output
    assert "--set KEY=VALUE" in r.output and "list[str]" not in r.output
