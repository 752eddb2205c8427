"""Expensive probes without Ray: the probe batch, the measures on a trial, the job queue."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emergence_core.config import resolve_config
from emergence_core.expensive import make_settings, run_expensive, trial_probe_batch
from emergence_core.metrics import Measure, RowBuffer, TrialKey
from emergence_core.model import answer_logits
from emergence_core.trial.trainer import Trainer
from orchestrator.probe_pool.queue import ProbeJob, ProbeQueue
from orchestrator.sweep.spec import parse_spec
from tests.conftest import tiny_overrides

SHORT_COPY = {"level_params": {1: {"length": 2}, 2: {"length": 3}, 3: {"length": 5}}}


@pytest.fixture(scope="module")
def trainer() -> Trainer:
    torch.set_num_threads(1)
    tr = Trainer(resolve_config("COPY", "s0", 0, **tiny_overrides(**SHORT_COPY)))
    for _ in range(10):
        tr.train_step()
    return tr


def test_probe_batch_is_fixed_balanced_and_scores_the_training_loss(trainer: Trainer) -> None:
    a = trial_probe_batch(trainer.data, 30, seed=0)
    b = trial_probe_batch(trainer.data, 30, seed=0)
    assert torch.equal(a.targets, b.targets)
    assert not torch.equal(a.targets, trial_probe_batch(trainer.data, 30, seed=1).targets)
    # all training samples (n large enough): padding to the longest level changes nothing,
    # the loss equals the mean cross-entropy of per-level forwards at their own lengths
    whole = trial_probe_batch(trainer.data, 3 * max(len(e) for e in trainer.data.train), seed=0)
    total, count = 0.0, 0
    with torch.no_grad():
        for enc in trainer.data.train:
            logits = answer_logits(trainer.model, enc.inputs, enc.positions)
            total += torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), enc.targets.flatten(), reduction="sum").item()
            count += enc.targets.numel()
        assert whole.n_scored == count
        assert whole.loss(trainer.model).item() == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize(("name", "fields", "measures"), [
    ("hessian", {"trace_probes": 4}, {Measure.HESSIAN_LAMBDA_MAX, Measure.HESSIAN_TRACE,
                                      Measure.HESSIAN_TRACE_STDERR}),
    ("llc", {"n_chains": 2, "n_draws": 20, "n_burnin": 10},
     {Measure.LLC, Measure.LLC_STD, Measure.LLC_CONVERGED}),
    ("fisher", {}, {Measure.FISHER_ERANK, Measure.FISHER_ERANK_STDERR}),
    ("gradcov", {}, {Measure.GRADCOV_ERANK, Measure.GRADCOV_ERANK_STDERR}),
])
def test_each_expensive_measure_on_a_trial_leaves_the_model_alone(trainer, name, fields,
                                                                   measures) -> None:
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rng = torch.get_rng_state()
    result = run_expensive(name, trainer.model, trial_probe_batch(trainer.data, 24, seed=0),
                           make_settings(name, fields))
    assert {m for m, _ in result.rows} == measures
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert trainer.model.training
    assert result.diagnostics["measure"] == name
    if name == "llc":
        assert len(result.diagnostics["loss_trace"]) == 2
        assert len(result.diagnostics["loss_trace"][0]) == 20


def test_unknown_settings_are_named() -> None:
    with pytest.raises(ValueError, match="unknown setting 'n_chain' of llc"):
        make_settings("llc", {"n_chain": 2})
    with pytest.raises(ValueError, match="unknown expensive measure"):
        make_settings("hessain")


def test_due_jobs_follow_every_and_include_the_last_checkpoint() -> None:
    spec = parse_spec({"name": "t", "tasks": ["MOD"], "scales": ["s0"],
                       "train": {"steps": 100, "probe": {"n_probes": 20}},
                       "probes": {"measures": {"hessian": {"every": 5}, "llc": {"every": 7}}}})
    trial = spec.trials()[0]
    jobs = trial.plan.jobs
    from emergence_core.schedule import probe_schedule

    steps = probe_schedule(100, 20).tolist()
    hess = [j.step for j in jobs if j.measure == "hessian"]
    llc = [j.step for j in jobs if j.measure == "llc"]
    assert hess == [steps[i] for i in range(0, len(steps), 5)] + (
        [steps[-1]] if (len(steps) - 1) % 5 else [])
    assert llc[0] == 0 and llc[-1] == 100 and len(set(llc)) == len(llc)


def test_queue_is_idempotent_and_done_means_a_result_part(tmp_path: Path) -> None:
    q = ProbeQueue(tmp_path)
    job = ProbeJob("MOD-s0-0", 40, "hessian")
    q.enqueue(job)
    q.enqueue(job)
    assert q.queued() == [job] and not q.is_done(job) and q.done_jobs() == set()
    rows = RowBuffer(TrialKey("t", job.trial, "MOD", "s0", 0, source="probe"))
    rows.add(40, Measure.HESSIAN_LAMBDA_MAX, 3.0)
    q.store(job).write_part(rows.take())
    assert q.is_done(job) and q.done_jobs() == {job}
    assert not q.is_done(ProbeJob("MOD-s0-0", 40, "llc"))
    q.record_failure(ProbeJob("MOD-s0-0", 50, "llc"), "boom", 3)
    assert q.failures() == [ProbeJob("MOD-s0-0", 50, "llc")]
