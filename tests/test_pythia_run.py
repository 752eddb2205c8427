"""``emerge pythia``: the sweep file, the plan from the files present, the Ray fan-out.

The end-to-end tests run the real command in a subprocess on a real local Ray with its own
temp dir, against the offline hub cache of ``tests/hf_cache.py`` (a tiny GPT-NeoX with the
revisions step0, step1 and step1000), with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from emergence_core.metrics import METRICS_SCHEMA, Measure
from emergence_core.pythia import (
    PythiaLoadError,
    evaluate_revision,
    load_probesets,
    probeset_names,
    revision_step,
    trial_id,
)
from emergence_core.store import TrialStore, metric_files, read_metrics
from orchestrator.cli.app import app
from orchestrator.pythia.run import evaluate_task, failure_line, plan
from orchestrator.pythia.spec import (
    DEFAULT_MODELS,
    load_pythia_spec,
    parse_pythia_spec,
)
from tests import hf_cache
from tests.hf_cache import TINY_LAYERS, TINY_MODEL, TINY_REVISIONS
from tests.sweep_helpers import (
    ROOT,
    assert_usage_errors,
    comparable,
    keys_unique,
    ray_tmpdir,
    stop,
    sweep_env,
    write_spec,
)

hf_hub_dir, offline_hub = hf_cache.hf_hub_dir, hf_cache.offline_hub

UNCACHED = "EleutherAI/pythia-not-cached"
SETS = list(probeset_names())


def _spec(tmp_path: Path, **fields) -> Path:
    base = {"name": "pt", "run_dir": str(tmp_path / "run"), "models": [TINY_MODEL],
            "revisions": list(TINY_REVISIONS), "batch_size": 32, "max_concurrent": 2,
            "retries": 0, "resources": {"default": {"cpus": 1, "gpus": 0}}}
    return write_spec(tmp_path / "pythia.yaml", **{**base, **fields})


# --- the sweep file --------------------------------------------------------------------------

BAD = [
    ({"models": ["pythia-160m"]}, ["models[0]: model name 'pythia-160m'"]),
    ({"revisions": ["step3", "step1000", "stpe5"]},
     ["revisions[0]: unknown Pythia revision 'step3'; did you mean step2 or step4",
      "revisions[2]: unknown Pythia revision 'stpe5'"]),
    ({"revisions": "step0..step16:3"}, ["revisions: revision range 'step0..step16:3'"]),
    ({"revisions": []}, ["revisions: the list is empty"]),
    ({"probesets": ["gramar", "logic", "logic"]},
     ["probesets[0]: unknown probe set 'gramar' (did you mean 'grammar'?)"]),
    ({"probesets": ["logic", "logic"]}, ["probesets: 'logic' is listed twice"]),
    ({"dtype": "fp8", "batch_size": 0, "retries": -1, "max_concurrent": 0},
     ["dtype: Input should be", "batch_size:", "retries:", "max_concurrent:"]),
    ({"resources": {"huge": {"cpus": 0}, "2.8b": {"gpu": 1}}},
     ["resources.huge: not 'default', a model size", "resources.huge.cpus:",
      "resources.2.8b.gpu: unknown key"]),
    ({"resources": {"EleutherAI/pythia-1b": {}}},
     ["resources.EleutherAI/pythia-1b: names a model that is not in models"]),
    ({"positions": ["answer"], "colour": "red", "name": "a b"},
     ["positions[0]: unknown read position 'answer'", "colour: unknown key", "name: use letters"]),
]


@pytest.mark.parametrize(("fields", "expected"), BAD)
def test_bad_pythia_files_fail_one_line_per_problem(tmp_path, fields, expected):
    spec = _spec(tmp_path, **fields)
    r = CliRunner().invoke(app, ["pythia", str(spec)])
    assert_usage_errors(r, expected)
    assert not (tmp_path / "run").exists()


def test_pythia_file_defaults_and_resources(tmp_path):
    spec = parse_pythia_spec({"name": "p"})
    assert spec.models == list(DEFAULT_MODELS) and spec.probesets == SETS
    assert len(spec.grid()) == 3 * 154
    assert spec.resources_for("EleutherAI/pythia-160m")[1].gpus == 0
    assert spec.resources_for("EleutherAI/pythia-2.8b")[1].gpus == 1
    # auto is float32 on GPU nodes too: RankMe of a checkpoint must not depend on the node
    assert [t.dtype for t in spec.grid()[::154]] == ["float32", "float32", "float32"]
    spec = parse_pythia_spec({"name": "p", "models": ["EleutherAI/pythia-2.8b-deduped-seed3",
                                                       "EleutherAI/pythia-410m"],
                              "revisions": "step1000..step143000:1000",
                              "resources": {"default": {"cpus": 2},
                                            "EleutherAI/pythia-410m": {"cpus": 3}}})
    grid = spec.grid()
    assert len(grid) == 2 * 143 and grid[0].revision == "step1000"
    assert (grid[0].resources.cpus, grid[0].resources.gpus, grid[0].device) == (2, 0, "cpu")
    assert grid[-1].resources.cpus == 3
    shipped = load_pythia_spec(ROOT / "sweeps" / "pythia.yaml")
    assert len(shipped.grid()) == 462 and shipped.probesets == SETS


def test_dry_run_prints_the_grid_and_starts_nothing(tmp_path):
    spec = _spec(tmp_path, models=[TINY_MODEL, UNCACHED])
    r = CliRunner().invoke(app, ["pythia", str(spec), "--dry-run"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "2 model(s) x 3 revision(s) = 6 tasks" in r.output
    assert TINY_MODEL in r.output and UNCACHED in r.output
    assert "step0, step1, step1000" in r.output
    assert not (tmp_path / "run").exists()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


# --- the unit of work and the plan, in this process ----------------------------------------


def test_task_writes_one_part_per_probeset_and_plan_skips_them(offline_hub, tmp_path):
    spec = parse_pythia_spec({"name": "pt", "models": [TINY_MODEL], "revisions": ["step1"],
                              "probesets": ["logic", "icl"]})
    run = tmp_path / "run"
    (task,), skipped = plan(spec, run)
    assert task.probesets == ("logic", "icl") and not skipped
    out = evaluate_task(task, str(run), "pt", 32, ("sep",))
    assert [Path(f).parent.name for f in out["files"]] == [trial_id(TINY_MODEL, "logic"),
                                                           trial_id(TINY_MODEL, "icl")]
    assert all(Path(f).name == "part-000000000001-000000000001.parquet" for f in out["files"])
    assert plan(spec, run) == ([], [task])
    # one probe set missing: the task measures that set only
    Path(out["files"][1]).unlink()
    (again,), _ = plan(spec, run)
    assert again.probesets == ("icl",)
    # a compacted part covering several steps still counts as done
    store = TrialStore(run, trial_id(TINY_MODEL, "logic"), source="pythia")
    rows = store.read().to_pylist()
    later = [{**r, "step": 1000} for r in rows]
    store.write_part(pa.Table.from_pylist(rows + later, schema=METRICS_SCHEMA))
    store.heal()
    assert [(a, b) for a, b, _ in store.parts()] == [(1, 1000)]
    (again,), _ = plan(spec, run)
    assert again.probesets == ("icl",)


def test_failures_are_one_line_naming_model_and_revision(offline_hub, tmp_path):
    spec = parse_pythia_spec({"name": "pt", "models": [UNCACHED], "revisions": ["step1"],
                              "probesets": ["logic"]})
    (task,), _ = plan(spec, tmp_path)
    with pytest.raises(PythiaLoadError) as err:
        evaluate_task(task, str(tmp_path), "pt", 32, ("sep",))

    class Wrapped(Exception):  # what ray.get raises: the original is its cause
        cause = err.value

    line = failure_line(task, Wrapped("Traceback ...\n  many lines"))
    assert line.startswith(f"cannot load {UNCACHED}@step1: model not in the local hub cache")
    assert "\n" not in line
    other = failure_line(task, MemoryError("Task was killed\nfor lack of memory"))
    assert other == f"{UNCACHED}@step1: MemoryError: Task was killed"


# --- the fan-out on a real local Ray ---------------------------------------------------------


def _run(spec: Path, hub: Path, ray_tmp: str, log: Path) -> tuple[int, str]:
    """``emerge pythia SPEC --address local`` in a subprocess, offline, on the tiny cache."""
    env = {**sweep_env(ray_tmp), "HF_HOME": str(hub.parent), "HF_HUB_CACHE": str(hub)}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "pythia", str(spec),
                                 "--address", "local"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=240)
        finally:
            stop(proc)
    return code, log.read_text()


def _files(run: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in metric_files(run)}


@pytest.mark.slow
def test_fan_out_writes_every_row_once_and_reruns_skip(offline_hub, tmp_path):
    run = tmp_path / "run"
    spec = _spec(tmp_path, models=[TINY_MODEL, UNCACHED],
                 revisions=["step0", "step1", "step2", "step1000"])
    with ray_tmpdir() as ray_tmp:
        code, out = _run(spec, offline_hub, ray_tmp, tmp_path / "run1.log")
        assert code == 1, out
        # one line per failure, naming model and revision; the rest completed
        failed = [ln for ln in out.splitlines() if ln.startswith("failed: ")]
        expected = [f"{TINY_MODEL}@step2"] + [f"{UNCACHED}@{r}" for r in
                                              ("step0", "step1", "step2", "step1000")]
        for label in expected:
            hits = [ln for ln in failed if f"cannot load {label}: " in ln]
            assert len(hits) == 2, (label, out)  # as it happens, and in the final list
        assert "revision not in the local hub cache" in out and \
            "model not in the local hub cache" in out
        assert "3 done, 0 skipped, 5 failed" in out, out
        assert (run / "spec.yaml").read_text() == spec.read_text()
        record = json.loads((run / "status" / "pythia-failures.json").read_text())
        assert sorted(record["failures"]) == sorted(expected)

        table = read_metrics(run)
        assert table.schema == METRICS_SCHEMA and keys_unique(table)
        done = list(TINY_REVISIONS)
        rank = table.filter(pc.equal(table["measure"], Measure.RANKME))
        cells = sorted(zip(rank["step"].to_pylist(), rank["task"].to_pylist(),
                           rank["layer"].to_pylist(), strict=True))
        assert cells == sorted((revision_step(r), ps, layer) for r in done for ps in SETS
                               for layer in range(TINY_LAYERS + 1))
        # accuracy, logprob, chance, model_dtype, then RankMe centred and not per layer
        assert table.num_rows == len(done) * len(SETS) * (4 + 2 * (TINY_LAYERS + 1))
        assert len(metric_files(run)) == len(done) * len(SETS)  # one part per trial and step
        # each revision its own weights: the same rows as measuring it here, and distinct
        by_step = {revision_step(r): comparable(table.filter(pc.equal(
            table["step"], revision_step(r)))) for r in done}
        value = table.drop_columns(["wall_time", "attempt", "sweep"]).column_names.index("value")
        assert len({tuple(row[value] for row in rows) for rows in by_step.values()}) == 3
        here = evaluate_revision(TINY_MODEL, "step1", load_probesets(), device="cpu",
                                 dtype="float32", sweep="pt", batch_size=32)
        assert by_step[1] == comparable(here)

        # lose one part: a rerun of the good grid measures that (revision, set) alone
        lost = TrialStore(run, trial_id(TINY_MODEL, "logic"), source="pythia").parts()
        lost_path = next(p for first, _, p in lost if first == 1)
        lost_path.unlink()
        before = _files(run)
        good = _spec(tmp_path)
        code, out = _run(good, offline_hub, ray_tmp, tmp_path / "run2.log")
        assert code == 0, out
        assert "1 done, 2 skipped, 0 failed" in out, out
        after = _files(run)
        assert set(after) - set(before) == {lost_path}
        assert all(after[p] == t for p, t in before.items())
        assert not (run / "status" / "pythia-failures.json").exists()
        assert comparable(read_metrics(run)) == comparable(table) and keys_unique(
            read_metrics(run))

        # everything there: nothing runs, nothing is written
        code, out = _run(good, offline_hub, ray_tmp, tmp_path / "run3.log")
        assert code == 0 and "nothing to do" in out, out
        assert _files(run) == after


def test_changed_measurement_settings_are_refused(tmp_path):
    run = tmp_path / "run"
    spec = _spec(tmp_path)
    run.mkdir()
    (run / "spec.yaml").write_text(spec.read_text())
    r = CliRunner().invoke(app, ["pythia", str(_spec(tmp_path, dtype="bfloat16",
                                                     batch_size=8))])
    assert r.exit_code == 2, r.output
    lines = r.output.splitlines()
    assert len(lines) == 2 and "dtype changed from 'auto' to 'bfloat16'" in lines[0]
    assert "batch_size changed from 32 to 8" in lines[1]
    other = tmp_path / "other"
    other.mkdir()
    (other / "spec.yaml").write_text("name: smoke\ntasks: [MOD]\nscales: [s0]\n")
    r = CliRunner().invoke(app, ["pythia", str(_spec(tmp_path, run_dir=str(other)))])
    assert r.exit_code == 2 and "holds another kind of run" in r.output
