"""`emerge probe` on a real short `emerge train` folder: the LLC with its calibration, a
"not converged" result when no setting passes, writing only when asked, one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from emergence_core.analysis.calibration import calibration_section
from emergence_core.calibrations import calibrations, read_calibration, write_calibration
from emergence_core.folder_records import read_run_record
from emergence_core.run_folder import ProbeJob, RunFolder
from orchestrator.cli.app import app

SMALL = ["--set", "train_size=200", "--set", "diag_size=40", "--set", "probe.n_probes=6",
         "--set", "probe.rankme_samples=16", "--set", "warmup_steps=2", "--batch-size", "12",
         "--threads", "1"]
# a small LLC and a pilot of at most three points, strongly localised and with a short
# relaxation budget (1 / (c k) draws per chain: 50, 100 and 500), so seconds, not minutes
LLC = ["--set", "n_chains=2", "--set", "n_draws=40", "--set", "n_burnin=20",
       "--set", "minibatch_size=16", "--set", "calibration.steps=[0.2, 0.1]",
       "--set", "calibration.localisations=[0.1, 0.01]", "--set", "batch_size=64",
       "--set", "calibration.relaxation_burnin=0.5", "--set", "calibration.relaxation_kept=0.5"]


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def _files(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("probe") / "run"
    r = _run("train", "--task", "COPY", "--steps", "12", "--out", str(out), *SMALL)
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.slow
def test_llc_with_its_calibration_as_json_and_nothing_written(run: Path) -> None:
    steps = RunFolder(run).weight_steps("COPY-s0-0")
    before = _files(run)
    r = _run("probe", str(run), "--measure", "llc", "--step", str(steps[-1]), "--json", *LLC)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    for key in ("value", "init_loss", "mean_loss", "rhat", "converged", "loss_rise", "n_beta"):
        assert key in out, key
    assert out["trial"] == "COPY-s0-0" and out["step"] == steps[-1]
    cal = out["calibration"]
    assert cal["source"] == "pilot" and cal["step"] == steps[-1]
    grid = cal["grid"]
    assert [(p["step"], p["localisation"]) for p in grid][:2] == [(0.2, 0.1), (0.1, 0.1)]
    assert [(p["n_draws"], p["n_burnin"]) for p in grid][:2] == [(50, 25), (100, 50)]
    # c and k relative to S at w*, the localised tier's to S where the loss has risen
    stiff = {"gamma-independent": cal["n_beta_lambda_max"],
             "localised": cal["localised_stiffness"]}
    if any(p["tier"] == "localised" for p in grid):
        assert cal["lambda_basin"] is not None and cal["localised_stiffness"] \
            == pytest.approx(out["n_beta"] * max(cal["lambda_max"], cal["lambda_basin"]))
    assert all(p["eps"] == pytest.approx(p["step"] / stiff[p["tier"]]) for p in grid)
    assert all(p["gamma"] == pytest.approx(p["localisation"] * stiff[p["tier"]])
               for p in grid)
    assert grid[1]["halving_change"] is None and not grid[1]["passed"]
    assert cal["untrained_loss"] > out["init_loss"]  # 12 steps of training lowered the loss
    if cal["chosen"] is not None:  # the choice is what the estimate used, judged by its bound
        picked = [p for p in grid if p["passed"]]
        assert len(picked) == 1 and picked[0]["tier"] == cal["kind"]
        if cal["kind"] == "gamma-independent":
            assert grid[0]["passed"] and len(grid) == 3  # c/2 and k/10 were run to judge it
        else:  # no gamma-independent point passed; the localised tier at k = 0.1 chose
            assert cal["kind"] == "localised" and picked[0]["localisation"] == 0.1
            assert not any(p["passed"] for p in grid if p["tier"] == "gamma-independent")
        assert (out["eps"], out["gamma"]) == (cal["chosen"]["eps"], cal["chosen"]["gamma"])
        assert out["max_rise"] == cal["chosen"]["max_rise"] and "in_basin" in out["checks"]
        assert out["value"] == pytest.approx(out["n_beta"] * out["loss_rise"], rel=1e-6)
        for key in ("below_share", "drift_noise", "mala_acceptance", "checks"):
            assert key in out, key
    else:
        assert "not converged" in out["status"] and out["value"] is None
    assert _files(run) == before  # without --write the run is untouched


@pytest.mark.slow
def test_no_passing_setting_is_not_converged_and_write_saves_it(run: Path) -> None:
    step = RunFolder(run).weight_steps("COPY-s0-0")[0]
    r = _run("probe", str(run), "--measure", "llc", "--step", str(step), "--json", "--write",
             *LLC, "--set", "calibration.max_rise_fraction=1e-9")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["value"] is None and out["converged"] is False
    assert out["rows"] == {"llc": None, "llc_std": None, "llc_converged": 0.0}
    assert "not converged" in out["status"]
    folder = RunFolder(run)
    saved = read_calibration(folder, "COPY-s0-0", "llc")
    assert saved is not None and saved["chosen"] is None
    assert not any(p["in_basin"] for p in saved["grid"])
    # the next probe uses the saved calibration: no pilot, still not converged
    r2 = _run("probe", str(run), "--measure", "llc", "--step", str(step), *LLC)
    assert r2.exit_code == 0, r2.output
    assert "calibration (saved" in r2.output and "not converged" in r2.output
    # ...and the report says so
    md = "\n".join(calibration_section(calibrations(folder)))
    assert "| COPY-s0-0 | llc |" in md and "**not converged**" in md and "1/1" in md


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--measure", "llc", "--step", "5000"], "no saved weights at step 5000"),
    (["--measure", "llc", "--step", "0", "--trial", "COPY-s0-9"], "unknown trial 'COPY-s0-9'"),
    (["--measure", "lcc", "--step", "0"], "unknown expensive measure 'lcc'"),
    (["--measure", "llc", "--step", "0", "--set", "epz=1"], "unknown setting 'epz' of llc"),
    (["--measure", "llc", "--step", "0", "--set", "calibration.max_shortfall=2"],
     "max_shortfall must be in (0, 1)"),
    (["--measure", "llc", "--step", "0", "--set", "calibration.max_draw=10"],
     "unexpected keyword argument 'max_draw'"),
])
def test_bad_input_is_one_line_exit_2(run: Path, args: list[str], message: str) -> None:
    r = _run("probe", str(run), *args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], r.output


def test_report_section_shows_the_choice() -> None:
    record = {"trial": "T", "measure": "llc", "step": 600, "untrained_loss": 2.79,
              "chosen": {"eps": 1e-6, "gamma": 1000.0}, "n_beta_lambda_max": 1.5e5,
              "grid": [{"eps": 1e-6, "gamma": 1000.0, "value": 97.6, "mean_loss": 0.0235,
                        "rhat": 1.016, "passed": True},
                       {"eps": 5e-7, "gamma": 1000.0, "value": math.nan, "mean_loss": 0.03,
                        "rhat": 1.2, "passed": False}]}
    md = calibration_section([record])
    row = next(line for line in md if line.startswith("| T |"))
    assert "eps 1e-06, gamma 1e+03" in row and "| 97.6 |" in row and "| 2 |" in row
    assert "1/1 pilots chose a setting." in md  # a record from before the tiers
    localised = {**record, "trial": "L", "kind": "localised"}
    md = calibration_section([record, localised, {**record, "trial": "N", "chosen": None}])
    assert "| L | llc | 600 | localised |" in "\n".join(md)
    assert "2/3 pilots chose a setting (1 localised)." in md
    assert calibration_section([]) == []


def test_pool_holds_a_calibrated_measure_until_its_pilot_can_run(tmp_path: Path) -> None:
    """The dispatcher's rule: a calibrated measure's jobs wait for the trial's last checkpoint
    with weights, one job of the trial runs the pilot, then all may run with its record."""
    from types import SimpleNamespace

    from emergence_core.plan import TrialPlan
    from orchestrator.probe_pool.config import Probes
    from orchestrator.probe_pool.pool import ProbePool, _Slot

    folder = RunFolder(tmp_path)
    jobs = tuple(ProbeJob("T", s, m) for s in (0, 10, 20) for m in ("llc", "hessian"))
    plan = TrialPlan("T", (0, 10, 20), frozenset({0, 10, 20}), jobs)
    probes = Probes(measures={"llc": {"every": 1, "calibrate": True,
                                      "calibration": {"gammas": [1000]}},
                              "hessian": {"every": 1}})
    pool = ProbePool(folder, "s", probes, {"T": SimpleNamespace(config=None, plan=plan)})
    early = ProbeJob("T", 0, "llc")
    assert pool._calibration(ProbeJob("T", 0, "hessian")) == (True, None)
    assert pool._calibration(early) == (False, {"step": 20, "fields": {"gammas": [1000]}})
    folder.weights_path("T", 20).parent.mkdir(parents=True)
    folder.weights_path("T", 20).write_bytes(b"")
    assert pool._calibration(early)[0]
    pool._slots = [_Slot(actor=None, job=ProbeJob("T", 10, "llc"))]  # its pilot is running
    assert not pool._calibration(early)[0]
    write_calibration(folder, "T", "llc", {"chosen": None, "step": 20})
    assert pool._calibration(early) == (True, {"step": 20, "fields": {"gammas": [1000]}})


def test_calibrate_is_refused_for_a_measure_without_one() -> None:
    from orchestrator.common.errors import UsageError
    from orchestrator.sweep.spec import parse_spec

    with pytest.raises(UsageError, match="hessian has no calibration"):
        parse_spec({"name": "x", "tasks": ["MOD"], "scales": ["s0"],
                    "probes": {"measures": {"hessian": {"every": 1, "calibrate": True}}}})


def test_llc_curvature_against_gamma() -> None:
    from emergence_core.expensive import llc_curvature

    d = {"n_beta": 100.0, "gamma": 1000.0, "eps": 1e-6}
    c = llc_curvature(d, 5.0)
    assert c["n_beta_lambda_max"] == 500.0 and c["gamma_over_n_beta_lambda_max"] == 2.0
    assert c["eps_n_beta_lambda_max"] == pytest.approx(5e-4)
    assert llc_curvature(d, None) == {} and llc_curvature({}, 5.0) == {}


def test_the_hessian_beside_an_llc_is_its_own_steps(tmp_path: Path) -> None:
    """Planted: lambda_max 59.6 at step 0, 0.52 then 0.50 (a second attempt) at step 300.
    The LLC's curvature diagnostics at step 300 read 0.50, not the first row of the store
    (they once read step 0's, a hundred times too stiff, for every later checkpoint)."""
    from emergence_core.metrics import Measure, RowBuffer, TrialKey
    from orchestrator.probe_pool.job import hessian_at
    from orchestrator.probe_pool.queue import ProbeQueue

    queue = ProbeQueue(RunFolder(tmp_path))
    key = TrialKey("s", "MOD-s0-0", "MOD", "s0", 0, source="probe")
    for step, attempt, lam in ((0, 0, 59.6), (300, 0, 0.52), (300, 1, 0.50)):
        rows = RowBuffer(key, attempt)
        rows.add(step, Measure.HESSIAN_LAMBDA_MAX, lam)
        queue.store(ProbeJob("MOD-s0-0", step, "hessian")).write_part(rows.take())
    assert hessian_at(queue, "MOD-s0-0", 300) == 0.50
    assert hessian_at(queue, "MOD-s0-0", 0) == 59.6
    assert hessian_at(queue, "MOD-s0-0", 100) is None  # no job done there


@pytest.mark.slow
def test_calibration_reaches_mlflow_as_params_once(tmp_path: Path) -> None:
    from emergence_core.config import resolve_config
    from emergence_core.metrics import RowBuffer, TrialKey
    from orchestrator.probe_pool.queue import ProbeQueue
    from orchestrator.tracking.sync import MlflowSync

    folder = RunFolder(tmp_path / "run")
    cfg = resolve_config("COPY", "s0", 0)
    trial = cfg.trial_name()
    job = ProbeJob(trial, 10, "llc")
    rows = RowBuffer(TrialKey("s", trial, "COPY", "s0", 0, source="probe"), 0)
    rows.add(10, "llc", 97.5)
    ProbeQueue(folder).store(job).write_part(rows.take())
    write_calibration(folder, trial, "llc", {"step": 600, "chosen": {"eps": 4e-6,
                                                                    "gamma": 1000.0}})
    sync = MlflowSync(folder.path, f"sqlite:///{tmp_path / 'm.db'}", "s")
    sync.sync_probes(trial, cfg)
    run = sync.client.get_run(sync.run_ids()[trial])
    assert run.data.params["llc.calibration.eps"] == "4e-06"
    assert run.data.params["llc.calibration.gamma"] == "1000.0"
    assert run.data.params["llc.calibration.status"] == "converged"
    assert run.data.params["llc.calibration.step"] == "600"
    assert run.data.metrics["llc"] == 97.5
    artifacts = {a.path for a in sync.client.list_artifacts(run.info.run_id, "probes/llc")}
    assert "probes/llc/llc.json" in artifacts
    sync.sync_probes(trial, cfg)  # logged once: a second pass logs nothing again


@pytest.mark.slow
def test_sanity_on_a_real_s0_checkpoint(run: Path) -> None:
    """On a real COPY s0 checkpoint (12 steps: loss 2.36, untrained 2.8, so any rise is
    bounded by 0.44): the relative defaults at the batch's own n_beta keep the chains' rise
    positive and inside that bound, and a stronger localisation gives a smaller rise. (The
    first defaults, eps 1e-4 and gamma 100, climbed 3.7x higher than the relative ones at the
    training set's n_beta; at the batch's both rise about 0.27.) The trained checkpoints'
    figures (steps 99 and 600) are in BENCHMARKS.md: too slow for a test."""
    from emergence_core.config import TrainConfig
    from emergence_core.expensive import trial_model, trial_probe_batch, untrained_loss
    from emergence_core.measures.llc import LLCSettings, estimate_llc
    from emergence_core.store import TrialStore

    folder = RunFolder(run)
    cfg = TrainConfig.model_validate(read_run_record(folder)["config"])
    data, model = trial_model(cfg)
    batch = trial_probe_batch(data, 256, cfg.seed)
    untrained = untrained_loss(cfg, batch)
    TrialStore(folder, cfg.trial_name()).load_weights(model, folder.weight_steps(
        cfg.trial_name())[-1])
    short = dict(n_chains=2, n_draws=40, n_burnin=20, seed=0)
    new = estimate_llc(model, batch, LLCSettings(**short))
    tight = estimate_llc(model, batch, LLCSettings(gamma=1e4, **short))
    assert new.n_beta == pytest.approx(256 / math.log(256))  # the batch's own n / log n
    assert 0 < new.loss_rise < 0.25 * untrained
    assert abs(tight.loss_rise) < abs(new.loss_rise)


@pytest.mark.slow
def test_pool_worker_runs_the_pilot_once_then_reuses_it(run: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The actor's code path, without Ray: the first job of a calibrated trial runs the
    pilot on the pilot step and saves it; later jobs use the saved choice, whatever it is."""
    import shutil

    from emergence_core.config import TrainConfig
    from orchestrator.probe_pool import pool
    from orchestrator.probe_pool.queue import ProbeQueue

    shutil.copytree(run, tmp_path / "run")
    folder = RunFolder(tmp_path / "run")
    shutil.rmtree(folder.probes_dir, ignore_errors=True)  # another test's --write
    monkeypatch.setattr(pool.ray, "get_gpu_ids", lambda: [])
    monkeypatch.setattr(pool.ProbeWorker, "_status", lambda self, info: None)
    worker = pool.ProbeWorker(str(folder.path), "s", 1)
    cfg = TrainConfig.model_validate(read_run_record(folder)["config"])
    trial, steps = cfg.trial_name(), folder.weight_steps(cfg.trial_name())
    cal = {"step": steps[-1], "fields": {"steps": [0.1, 0.05], "localisations": [1e-3, 1e-4]}}
    settings = {"n_chains": 2, "n_draws": 30, "n_burnin": 16, "minibatch_size": 16}
    first = ProbeJob(trial, steps[0], "llc")
    worker.run(first, cfg, 64, settings, 0, cal)
    record = read_calibration(folder, trial, "llc")
    assert record["step"] == steps[-1]
    assert [p["step"] for p in record["grid"]][:2] == [0.1, 0.05]
    queue = ProbeQueue(folder)
    diag = json.loads(queue.diagnostics_path(first).read_text())
    if record["chosen"] is None:
        assert "not converged" in diag["status"] and diag["value"] is None
    else:
        assert diag["calibration"]["chosen"] == record["chosen"]
        assert diag["eps"] == record["chosen"]["eps"]
    write_calibration(folder, trial, "llc", {**record, "chosen": {"eps": 3e-6, "gamma": 500.0}})
    last = ProbeJob(trial, steps[-1], "llc")
    worker.run(last, cfg, 64, settings, 0, cal)
    diag = json.loads(queue.diagnostics_path(last).read_text())
    assert (diag["eps"], diag["gamma"]) == (3e-6, 500.0) and queue.is_done(last)
