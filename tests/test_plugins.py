"""Extension is registration: a task, a scale and an expensive measure from the user's own
module, named in a sweep file, work everywhere (sweep, probe pool, analyze)."""

from __future__ import annotations

import csv
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from emergence_core.run_folder import RunFolder
from emergence_core.store import read_metrics
from orchestrator.cli.app import app
from orchestrator.sweep.spec import parse_spec
from tests.sweep_helpers import assert_usage_errors, ray_tmpdir, run_sweep, write_spec
from tests.test_divergence import check_a_diverged_trial_in_a_sweep

PLUGIN = textwrap.dedent('''
    """A lab's own extensions of emerge (what a researcher writes, outside the package)."""
    import dataclasses

    import numpy as np

    from emergence_core.expensive import ExpensiveMeasure, ExpensiveResult, register_measure
    from emergence_core.model import ScaleShape, register_scale
    from emergence_core.tasks import TaskDef, register_task


    def _digits(x, n):
        return (x[:, None] // 10 ** np.arange(n - 1, -1, -1)) % 10


    def _succ(p, idx):
        n = p["n"]
        return _digits(idx, n), _digits((idx + 1) % 10 ** n, n)


    register_task(TaskDef(
        name="SUCC", description="the successor of an n-digit number, modulo 10^n",
        defaults=({"n": 1}, {"n": 2}, {"n": 3}), shape=lambda p: (p["n"], p["n"]),
        universe=lambda p: 10 ** p["n"], decode=_succ,
        symbols=lambda ps: [str(d) for d in range(10)], steps=60))

    register_scale(ScaleShape("tiny", 1, 32, 2, 64, lr=3e-3, warmup_steps=5))


    @dataclasses.dataclass(frozen=True)
    class NormSettings:
        power: float = 2.0


    def _weight_norm(model, batch, s):
        total = sum(float(p.detach().double().abs().pow(s.power).sum())
                    for p in model.parameters())
        return ExpensiveResult([("weight_norm", total ** (1 / s.power))],
                               {"n_tensors": len(list(model.parameters()))})


    register_measure(ExpensiveMeasure("weightnorm", NormSettings, 8, _weight_norm,
                                      ("weight_norm",), description="L_p norm of the weights"))
''')


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``mylab_ext.py`` in its own folder, on sys.path here and PYTHONPATH for subprocesses."""
    where = tmp_path / "lab"
    where.mkdir()
    (where / "mylab_ext.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(where))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(where), *filter(None, [os.environ.get("PYTHONPATH")])]))
    yield where
    for name in ("mylab_ext", "clash_ext"):  # imported afresh (and registering) next time
        sys.modules.pop(name, None)


def test_a_plugin_that_cannot_load_or_clashes_is_one_line_before_anything_starts(
        tmp_path: Path, plugin_path: Path) -> None:
    (plugin_path / "clash_ext.py").write_text(
        "from emergence_core.model import ScaleShape, register_scale\n"
        "register_scale(ScaleShape('s0', 3, 64, 4, 256))\n")
    base = {"name": "p", "tasks": ["MOD"], "scales": ["s0"], "run_dir": str(tmp_path / "run")}
    for plugins, message in ((["no_such_lab.ext"], "plugin 'no_such_lab.ext' cannot be imported"),
                             (["clash_ext"], "scale 's0' is already registered"),
                             (["not a module"], "plugins[0]")):
        spec = write_spec(tmp_path / "s.yaml", **base, plugins=plugins)
        result = CliRunner().invoke(app, ["sweep", str(spec), "--dry-run"])
        assert_usage_errors(result, [message])
    assert not (tmp_path / "run").exists()
    declared = write_spec(tmp_path / "d.yaml", **{**base, "scales": ["s0"]},
                          define_scales={"s0": {"layers": 1, "width": 64, "heads": 2}})
    assert_usage_errors(CliRunner().invoke(app, ["sweep", str(declared), "--dry-run"]),
                        ["define_scales.s0: scale 's0' is already registered"])


def test_a_scale_declared_in_the_sweep_file_needs_no_code(tmp_path: Path) -> None:
    """The study's sixth scale (151M parameters) is a few lines of YAML."""
    s5 = {"layers": 12, "width": 1024, "heads": 16, "lr": 2e-4, "cpus": 8, "gpus": 1}
    spec = parse_spec({"name": "big", "tasks": ["MOD"], "scales": ["s0", "s5"],
                       "define_scales": {"s5": s5}})
    from emergence_core.config import estimate

    trial = next(t for t in spec.trials() if t.config.scale == "s5")
    assert trial.config.lr == 2e-4 and trial.resources.gpus == 1 and trial.resources.cpus == 8
    assert 150e6 < estimate(trial.config).params < 153e6
    result = CliRunner().invoke(app, ["sweep", str(write_spec(
        tmp_path / "big.yaml", name="big", tasks=["MOD"], scales=["s5"],
        define_scales={"s5": s5})), "--dry-run"],
        env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "MOD-s5-0" in result.output and "151" in result.output


@pytest.mark.slow
def test_plugin_task_scale_and_measure_run_in_a_real_sweep_and_analyze(
        tmp_path: Path, plugin_path: Path) -> None:
    """The same sweep holds two diverging MOD trials (issue 14, item 1): their checks are
    test_divergence's, run here so that one sweep serves both files."""
    run_dir = tmp_path / "run"
    spec = write_spec(
        tmp_path / "lab.yaml", name="lab", run_dir=str(run_dir), plugins=["mylab_ext"],
        tasks=["SUCC", "MOD"], scales=["tiny"], seeds=[0, 1], max_concurrent_trials=2,
        retries=2, train={"steps": 150, "diag_size": 100, "lr": 3e-3,
                          "probe": {"n_probes": 30, "rankme_samples": 50}},
        per_task={"MOD": {"train": {"lr": 1e6, "steps": 40}}},
        emergence={"persistence": 3},
        probes={"measures": {"weightnorm": {"every": 3, "settings": {"power": 2.0}}}})
    with ray_tmpdir() as rt:
        rc = run_sweep(["sweep", str(spec)], rt, tmp_path / "log")
    check_a_diverged_trial_in_a_sweep(run_dir, rc, (tmp_path / "log").read_text(),
                                      "MOD-tiny-0", "SUCC-tiny-0", {"done": 2, "failed": 2})
    folder = RunFolder(run_dir)
    assert folder.is_complete("SUCC-tiny-0") and folder.is_complete("SUCC-tiny-1")

    # the pool computed the plugin's measure at exactly the planned checkpoints, with the
    # plugin's own settings, in a worker process that had to import the plugin itself
    table = read_metrics(run_dir)
    table = table.filter(pc.starts_with(table["trial"], "SUCC-"))  # the plugin task's rows
    norm = table.filter(pc.equal(table["measure"], "weight_norm"))
    trial = parse_spec({"name": "lab", "plugins": ["mylab_ext"], "tasks": ["SUCC"],
                        "scales": ["tiny"], "train": {"steps": 150, "diag_size": 100,
                                                      "probe": {"n_probes": 30}},
                        "probes": {"measures": {"weightnorm": {"every": 3}}}}).trials()[0]
    got = sorted(s for t, s in zip(norm["trial"].to_pylist(), norm["step"].to_pylist(),
                                   strict=True) if t == "SUCC-tiny-0")
    assert got == sorted(j.step for j in trial.plan.jobs) and len(got) >= 4
    values = norm["value"].to_pylist()
    assert all(v > 0 for v in values) and len(set(values)) > 1  # weights move in training

    # the plugin task trained on its own vocabulary: accuracy rows per level
    acc = table.filter(pc.and_(pc.equal(table["trial"], "SUCC-tiny-0"),
                               pc.equal(table["measure"], "accuracy")))
    assert set(acc["level"].drop_null().to_pylist()) == {1, 2, 3}

    # analyze loads the plugin from the frozen sweep file and reports the new measure: it is
    # analysed, and classified against the plugin task's emergence events
    result = CliRunner().invoke(app, ["analyze", str(run_dir), "--no-mlflow"])
    assert result.exit_code == 0, result.output
    with open(folder.report_dir / "tables" / "leads.csv") as f:
        leads = [row for row in csv.DictReader(f) if row["measure"] == "weight_norm"]
    assert leads and {row["trial"] for row in leads} <= {"SUCC-tiny-0", "SUCC-tiny-1"}
    report = (folder.report_dir / "report.md").read_text()
    assert "weight_norm" in report.split("Measures analysed", 1)[1].splitlines()[0]
    missing = report.split("## What is missing", 1)[1].split("\n## ", 1)[0]
    assert "MOD-tiny-0" in missing and "MOD-tiny-1" in missing  # the diverged trials
