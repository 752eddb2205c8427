"""Sweep files: malformed ones fail before anything starts; changes; dry run; cluster.yaml."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from orchestrator.cli.app import app
from orchestrator.common.errors import UsageError
from orchestrator.sweep.spec import load_spec, parse_spec
from orchestrator.sweep.views import added_trials
from tests.sweep_helpers import ROOT, assert_usage_errors

BASE = {"name": "t", "tasks": ["MOD"], "scales": ["s0"], "seeds": [0]}

# (file text, the field each problem line must name), one case per kind of mistake
BAD_FILES = [
    ("name: t\ntasks: [MOD\nscales: [s0]\n", ["invalid YAML at line"]),
    ("- just\n- a list\n", ["expected a mapping"]),
    ("name: t\ntasks: [MOD]\nscales: [s0]\ncolour: blue\n", ["colour: unknown key"]),
    ("name: t\ntasks: [MDO]\nscales: [s0]\n",
     ["tasks[0]: unknown task 'MDO' (did you mean 'MOD'?)"]),
    ("name: t\ntasks: [MOD]\nscales: [s5]\n", ["scales[0]: unknown scale 's5'"]),
    ("name: t\ntasks: []\nscales: [s0]\n", ["tasks: empty grid"]),
    ("name: t\ntasks: [MOD]\nscales: [s0]\nseeds: []\n", ["seeds: empty grid"]),
    ("name: t\ntasks: [MOD]\nscales: [s0]\ntrain: {steps: -5}\n",
     ["train.steps: Input should be greater"]),
    ("name: t\ntasks: [MOD]\nscales: [s0]\nretries: many\n",
     ["retries: Input should be a valid integer"]),
    ("name: t\ntasks: MOD\nscales: [s0]\n", ["tasks: Input should be a valid list"]),
    ("name: t\ntasks: [MOD]\nscales: [s0]\nper_scale: {s0: {resources: {gpus: -1}}}\n",
     ["per_scale.s0.resources.gpus"]),
    ("name: t\ntasks: [MOD]\nscales: [s0]\nper_task: {MOD: {train: {probe: {n_probe: 3}}}}\n",
     ["per_task.MOD.train.probe.n_probe: unknown key"]),
    ("name: t\ntasks: [MOD]\nscales: [s0]\ntrain: {seed: 3}\n", ["train.seed: set by the grid"]),
    ("name: t\ntasks: [MOD]\nscales: [s0]\nlevels: [1, 4]\n", ["levels[1]"]),
    ("name: t\ntasks: [MOD, MOD]\nscales: [s0]\n", ["tasks: 'MOD' is listed twice"]),
    ("name: t\ntasks: [MOD]\nscales: [s0]\ntrain: {steps: 10, warmup_steps: 50}\n",
     ["warmup_steps 50 exceeds steps 10"]),
    ("name: 'a b'\ntasks: [MOD]\nscales: [s0]\n", ["name: use letters"]),
    ("name: t\ntasks: [MOD]\nscales: [s0]\nrun_dir: s3://bucket/runs\n",
     ["run_dir: s3:// run folders are not supported"]),
    ("name: t\ntasks: [MOD]\nscales: [s0]\nanalysis: {smooth_windw: 3}\n",
     ["analysis: unknown analysis setting 'smooth_windw'; did you mean 'smooth_window'?"]),
    ("name: t\ntasks: [MOD]\nscales: [s0]\ntrain: {steps: -1, lr: fast}\nretries: -2\n",
     ["train.steps", "train.lr", "retries"]),
    ("name: t\ntasks: [MOD]\nscales: [s0]\nseeds: [0, 1]\nexclude: [{seeds: [2]}]\n",
     ["exclude[0].seeds: 2 not in the grid's seeds [0, 1]"]),
    ("name: t\ntasks: [MOD]\nscales: [s0]\nexclude: [{}]\n", ["exclude[0]: names no axis"]),
    ("name: t\ntasks: [MOD, ADD]\nscales: [s0]\nexclude: [{tasks: [MOD]}, {tasks: [ADD]}]\n",
     ["exclude removes every trial of the grid"]),
    ("name: t\ntasks: [MOD]\nscales: [s0]\nexclude: [{task: [MOD]}]\n",
     ["exclude[0].task: unknown key"]),
]


@pytest.mark.parametrize(("text", "expected"), BAD_FILES)
def test_bad_sweep_files_fail_before_anything_starts(tmp_path: Path, text: str,
                                                     expected: list[str]) -> None:
    spec = tmp_path / "bad.yaml"
    own_run_dir = text.startswith("name") and "run_dir:" not in text
    spec.write_text(text + f"run_dir: {tmp_path / 'run'}\n" if own_run_dir else text)
    r = CliRunner().invoke(app, ["sweep", str(spec)])
    assert_usage_errors(r, expected)
    assert not (tmp_path / "run").exists()


def test_missing_sweep_file() -> None:
    r = CliRunner().invoke(app, ["sweep", "no/such.yaml"])
    assert r.exit_code == 2 and "no such sweep file" in r.output


def test_shipped_sweep_files_are_valid() -> None:
    smoke = load_spec(ROOT / "sweeps" / "smoke.yaml")
    assert len(smoke.tasks) >= 3 and all(p.resources.gpus == 0 for p in smoke.trials())
    full = load_spec(ROOT / "sweeps" / "full.yaml")
    trials = full.trials()
    assert len(trials) == 8 * 5 * 3
    assert all(len(_probe_steps(p.config)) >= 201 for p in trials)
    assert {p.config.scale for p in trials if p.resources.gpus > 0} >= {"s2", "s3", "s4"}


def _probe_steps(cfg):
    from emergence_core.schedule import probe_schedule

    return probe_schedule(cfg.steps, cfg.probe.n_probes, log_fraction=cfg.probe.log_fraction,
                          log_until=cfg.probe.log_until)


def test_exclude_leaves_out_the_trials_matching_every_axis_it_names() -> None:
    """The two-scale study's shape: s0 at three seeds, s1 at one, two for MOD and CMP."""
    spec = parse_spec({
        "name": "t", "tasks": ["COPY", "MOD", "CMP"], "scales": ["s0", "s1"],
        "seeds": [0, 1, 2],
        "exclude": [{"scales": ["s1"], "seeds": [2]},
                    {"scales": ["s1"], "seeds": [1], "tasks": ["COPY"]}]})
    names = [t.name for t in spec.trials()]
    assert names == ["COPY-s0-0", "COPY-s0-1", "COPY-s0-2", "COPY-s1-0",
                     "MOD-s0-0", "MOD-s0-1", "MOD-s0-2", "MOD-s1-0", "MOD-s1-1",
                     "CMP-s0-0", "CMP-s0-1", "CMP-s0-2", "CMP-s1-0", "CMP-s1-1"]
    assert [t for t in spec.grid()][3] == ("COPY", "s1", 0)


def test_settings_merge_in_order() -> None:
    spec = parse_spec({**BASE, "tasks": ["MOD", "ADD"], "train": {"lr": 1e-3, "diag_size": 50},
                       "per_task": {"MOD": {"train": {"lr": 2e-3}}},
                       "per_scale": {"s0": {"train": {"diag_size": 60}}}})
    by = {p.config.task: p.config for p in spec.trials()}
    assert by["MOD"].lr == 2e-3 and by["ADD"].lr == 1e-3
    assert by["MOD"].diag_size == by["ADD"].diag_size == 60


def test_only_added_trials_are_accepted_as_a_change() -> None:
    old = parse_spec(BASE)
    assert added_trials(old, parse_spec(BASE)) == []
    grown = added_trials(old, parse_spec({**BASE, "seeds": [0, 1], "tasks": ["MOD", "COPY"]}))
    assert sorted(p.name for p in grown) == ["COPY-s0-0", "COPY-s0-1", "MOD-s0-1"]
    for changed, why in [({**BASE, "train": {"lr": 5e-3}}, "training settings changed"),
                         ({**BASE, "tasks": ["COPY"]}, "was removed"),
                         ({**BASE, "retries": 7}, "retries changed"),
                         ({**BASE, "per_scale": {"s0": {"resources": {"cpus": 2}}}},
                          "resources changed")]:
        with pytest.raises(UsageError, match=why):
            added_trials(old, parse_spec(changed))


def test_dry_run_prints_the_grid_and_starts_nothing(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({**BASE, "tasks": ["MOD", "COPY"], "seeds": [0, 1],
                                    "run_dir": str(tmp_path / "run")}))
    r = CliRunner().invoke(app, ["sweep", str(spec), "--dry-run"])
    assert r.exit_code == 0, r.output
    for name in ("MOD-s0-0", "MOD-s0-1", "COPY-s0-0", "COPY-s0-1"):
        assert name in r.output
    assert "PFLOP" in r.output and not (tmp_path / "run").exists()
    out = " ".join(r.output.split())
    for words in ("disk at most", "time to finish: at least", "CPU trials at",
                  "GFLOP/s per core"):
        assert words in out, words
    assert out.index("time to finish") < out.index("MOD-s0-0")  # the summary first


def test_dry_run_states_the_weights_the_definition_multiverse_keeps() -> None:
    """The disk the multiverse's weights cost once the sweep is done, and the switch."""
    from emergence_core.config import estimate
    from orchestrator.sweep.views import dry_run_table

    def line(**over) -> str:
        spec = parse_spec({**BASE, "train": {"steps": 200, "probe": {"n_probes": 40},
                                             "checkpoint": over.pop("checkpoint", {})}, **over})
        console = Console(width=400, record=True)
        console.print(dry_run_table(spec, spec.trials()))
        text = " ".join(console.export_text().split())
        return text.split("definition multiverse: ")[1].split(" time to finish")[0]

    spec = parse_spec({**BASE, "train": {"steps": 200, "probe": {"n_probes": 40}}})
    n, params = len(spec.trials()[0].plan.probe_steps), estimate(spec.trials()[0].config).params
    mb = f"{n * 4 * params / 1e6:.1f} MB"
    assert line().startswith(f"weights kept at up to {n} of {n} probe steps ({mb} fp32")
    assert line(checkpoint={"weights_every": 4}).startswith(
        f"weights kept at up to {len(range(0, n, 4)) + ((n - 1) % 4 > 0)} of {n} probe steps")
    assert line(checkpoint={"weights_every": None}).startswith(
        "off (train.checkpoint.weights_every is null): no weights remain")
    off = line(probes={"keep_weights": False})
    assert off.startswith("off (probes.keep_weights is false)") and f"({mb} fp32)" in off


def test_dry_run_plans_the_full_grid_on_a_cluster_without_gpus_as_unplaceable() -> None:
    from orchestrator.sweep.cluster import Capacity
    from orchestrator.sweep.views import dry_run_table

    spec = load_spec(ROOT / "sweeps" / "full.yaml")
    console = Console(width=200, record=True)
    console.print(dry_run_table(spec, spec.trials(), Capacity("a test cluster", 64, 0)))
    text = " ".join(console.export_text().split())
    assert "time to finish: never on a test cluster (64 CPUs, no GPU)" in text
    console = Console(width=200, record=True)
    console.print(dry_run_table(spec, spec.trials(), Capacity("a test cluster", 64, 8)))
    text = " ".join(console.export_text().split())
    hours = float(text.split("time to finish: at least ")[1].split(" h")[0])
    # GPU-hours times each trial's GPU share, over 8 GPUs: s4 24 x 0.67 x 1, s3 3.6 x 1,
    # s2 1.0 x 0.5, s1 0.2 x 0.25, about 20.2 / 8; more than the longest trial (0.67 h)
    assert 2.4 < hours < 2.7, hours
    assert "adaptive density" in text and "at most 10080 expensive jobs" in text
    assert "trial-hours" in text and "weights (max)" in text and "disk at most" in text


def test_cluster_yaml_passes_rays_own_schema() -> None:
    from jsonschema import Draft7Validator
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    schema_path = Path(sys.modules["ray"].__file__).parent / "autoscaler" / "ray-schema.json"
    errors = list(Draft7Validator(json.loads(schema_path.read_text())).iter_errors(cfg))
    assert errors == []
    validate_config(prepare_config(copy.deepcopy(cfg)))  # raises on any problem
    gpu_types = [n for n, t in cfg["available_node_types"].items()
                 if t["node_config"]["InstanceType"].startswith(("g", "p"))]
    assert gpu_types and cfg["head_node_type"] not in gpu_types
    assert any("pip install" in c and "-e ~/emerge" in c for c in cfg["setup_commands"])
    assert any("mount" in c and "/mnt/shared" in c for c in cfg["setup_commands"])
    full = load_spec(ROOT / "sweeps" / "full.yaml")
    assert full.run_dir.startswith("/mnt/shared/")


def test_cluster_yaml_validation_catches_mistakes() -> None:
    from jsonschema import Draft7Validator

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    cfg["available_node_types"]["head"]["node_confg"] = {}
    schema_path = Path(sys.modules["ray"].__file__).parent / "autoscaler" / "ray-schema.json"
    assert list(Draft7Validator(json.loads(schema_path.read_text())).iter_errors(cfg))


def test_emerge_help_does_not_import_the_heavy_stack() -> None:
    code = ("import sys; from orchestrator.cli.app import app; "
            "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_sweep_files_analysis_section_is_what_analyze_applies(tmp_path: Path) -> None:
    """The sweep file may carry `analysis:` (analyze has always read it; the sweep schema
    refused it): accepted when the sweep starts, applied by analyze, and --set wins."""
    from orchestrator.cli.analyze import resolve_settings

    raw = {**BASE, "run_dir": str(tmp_path / "run"), "analysis": {"smooth_window": 3}}
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_spec(path).analysis == {"smooth_window": 3}
    assert resolve_settings(raw, {}).smooth_window == 3
    assert resolve_settings(raw, {"smooth_window": 7}).smooth_window == 7
