"""Determinism and exact resume, bit for bit on CPU."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file

from emergence_core.config import resolve_config
from emergence_core.metrics import METRICS_KEY, METRICS_SCHEMA
from emergence_core.model import answer_logits
from emergence_core.store import TrialStore, read_metrics
from emergence_core.trial.runner import TrialHooks, run_trial
from emergence_core.trial.trainer import StateMismatch, Trainer
from tests.conftest import tiny_overrides

# Short sequences of three different lengths: exercises per-level batches cheaply.
SHORT_COPY = {"level_params": {1: {"length": 2}, 2: {"length": 3}, 3: {"length": 5}}}


def _config(task: str = "COPY", seed: int = 0, **extra):
    extra = {**(SHORT_COPY if task == "COPY" else {}), **extra}
    return resolve_config(task, "s0", seed, **tiny_overrides(**extra))


def _comparable(table: pa.Table) -> list[tuple]:
    """Rows without the columns that legitimately differ between attempts."""
    t = table.drop_columns(["wall_time", "attempt"]).sort_by(
        [(c, "ascending") for c in ("step", "measure", "layer", "level")])
    return list(zip(*(t[c].to_pylist() for c in t.column_names), strict=True))


def _weights(run: Path, trial: str) -> dict[int, list[tuple[str, bytes]]]:
    """Saved weights per step, as raw bytes per tensor (bit-for-bit comparable)."""
    store = TrialStore(run, trial)
    out = {}
    for s in store.weight_steps():
        tensors = load_file(store.weights_path(s))
        out[s] = [(k, tensors[k].numpy().tobytes()) for k in sorted(tensors)]
    return out


def test_same_seed_same_metrics_bit_for_bit(tmp_path: Path) -> None:
    cfg = _config()
    run_trial(cfg, tmp_path / "a")
    run_trial(cfg, tmp_path / "b")
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert a.num_rows > 0 and _comparable(a) == _comparable(b)
    assert _weights(tmp_path / "a", cfg.trial_name()) == _weights(tmp_path / "b", cfg.trial_name())


def test_different_seeds_differ(tmp_path: Path) -> None:
    run_trial(_config(seed=0), tmp_path / "a")
    run_trial(_config(seed=1), tmp_path / "b")
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    values = lambda t: t.filter(pa.compute.equal(t["measure"], "rankme"))["value"].to_pylist()  # noqa: E731
    assert values(a) != values(b)


@pytest.mark.parametrize("task", ["COPY", "MOD"])
@pytest.mark.parametrize("stop_after", [5, 13])
def test_resume_continues_exactly(tmp_path: Path, task: str, stop_after: int) -> None:
    cfg = _config(task)
    whole = run_trial(cfg, tmp_path / "whole")
    first = run_trial(cfg, tmp_path / "split", stop_after=stop_after)
    assert not first.completed and first.step >= stop_after
    second = run_trial(cfg, tmp_path / "split")
    assert second.completed and second.attempt == 1
    a, b = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "split")
    assert _comparable(a) == _comparable(b)
    assert _weights(tmp_path / "whole", cfg.trial_name()) == \
        _weights(tmp_path / "split", cfg.trial_name())
    assert whole.events == second.events
    # rows after the stop carry the second attempt's number
    attempts = set(b.filter(pa.compute.greater(b["step"], first.step))["attempt"].to_pylist())
    assert attempts == {1}


def test_resume_after_a_crash_between_commits_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Rows written after the last saved state (a crash mid-commit) are redone, not doubled."""
    cfg = _config("MOD")
    run_trial(cfg, tmp_path / "whole")
    crashed = tmp_path / "crashed"
    run_trial(cfg, crashed, stop_after=9)
    store = TrialStore(crashed, cfg.trial_name())
    state_before = store.state_path.read_bytes()
    # Simulate a later attempt that wrote a part and died before saving its state.
    trainer = Trainer(cfg)
    trainer.load_state_dict(store.load_state())
    from emergence_core.metrics import RowBuffer, TrialKey
    rows = RowBuffer(TrialKey("local", cfg.trial_name(), cfg.task, cfg.scale, cfg.seed), 7)
    trainer.run(lambda tr: bool(tr.probe(rows)) and tr.step >= 17)
    store.write_part(rows.take())
    assert store.state_path.read_bytes() == state_before
    run_trial(cfg, crashed)
    assert _comparable(read_metrics(tmp_path / "whole")) == _comparable(read_metrics(crashed))


def test_metrics_schema_and_one_row_per_key(tmp_path: Path) -> None:
    cfg = _config(probe={"read_positions": ["sep", "prompt_mean", "last_answer"]})
    run_trial(cfg, tmp_path)
    table = read_metrics(tmp_path)
    assert table.schema.equals(METRICS_SCHEMA, check_metadata=False)
    keys = list(zip(*(table[c].to_pylist() for c in METRICS_KEY), strict=True))
    assert len(keys) == len(set(keys))
    measures = set(table["measure"].to_pylist())
    assert {"accuracy", "logprob", "rankme", "rankme_uncentred", "linear_probe",
            "rankme@prompt_mean", "linear_probe@last_answer", "train_loss"} <= measures
    # RankMe for the embedding output and every block, per level and pooled
    rk = table.filter(pa.compute.equal(table["measure"], "rankme"))
    assert set(rk["layer"].to_pylist()) == {0, 1, 2}
    assert set(rk["level"].to_pylist()) == {1, 2, 3, None}
    # at SEP the embedding output is the same for every sample of a level: RankMe 0
    emb = rk.filter(pa.compute.and_(pa.compute.equal(rk["layer"], 0),
                                    pa.compute.is_valid(rk["level"])))
    assert set(emb["value"].to_pylist()) == {0.0}
    steps = sorted(set(table["step"].to_pylist()))
    assert steps == Trainer(cfg).probe_steps


def test_state_from_another_config_is_refused(tmp_path: Path) -> None:
    cfg = _config()
    run_trial(cfg, tmp_path, stop_after=3)
    other = _config(lr=5e-3)
    trainer = Trainer(other)
    with pytest.raises(StateMismatch):
        trainer.load_state_dict(TrialStore(tmp_path, cfg.trial_name()).load_state())


def test_completed_trial_returns_at_once_and_hooks_can_stop(tmp_path: Path) -> None:
    cfg = _config()
    seen = []
    out = run_trial(cfg, tmp_path, hooks=TrialHooks(on_probe=lambda r: seen.append(r.step),
                                                    should_stop=lambda: len(seen) >= 3))
    assert not out.completed and len(seen) == 3
    done = run_trial(cfg, tmp_path)
    assert done.completed
    again = run_trial(cfg, tmp_path)
    assert again.completed and again.steps_run == 0
    assert torch.get_num_threads() == 1


def test_the_in_trial_tracker_corrects_for_chance_as_the_analysis_does() -> None:
    from emergence_core.emergence_rule import EmergenceRule
    from emergence_core.trial.decisions import EmergenceTracker

    tracker = EmergenceTracker(EmergenceRule(0.5, 2), chance={1: 0.5, 2: 0.0})
    for step in range(10):  # level 1 holds its constant answer's 0.55; level 2 learns
        tracker.update(step, {1: 0.55, 2: 0.55 if step >= 3 else 0.1})
    assert tracker.events == {2: 3}
    for step in range(10, 14):
        tracker.update(step, {1: 0.8, 2: 0.9})  # (0.8 - 0.5) / 0.5 = 0.6
    assert tracker.events == {2: 3, 1: 10}


def test_bf16_autocast_trains_in_float32_weights_and_resumes_exactly(tmp_path: Path) -> None:
    cfg = _config("MOD", precision="bf16")
    assert cfg.fingerprint() != _config("MOD").fingerprint()  # another run than fp32
    trainer = Trainer(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what train_step does to the forward
        parts = trainer.batch(0)
        assert answer_logits(trainer.model, parts[0].inputs, parts[0].positions).dtype == \
            torch.bfloat16
    losses = [float(trainer.train_step()) for _ in range(6)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    fp32 = Trainer(_config("MOD"))
    assert [float(fp32.train_step()) for _ in range(6)] != losses  # bf16 did run
    whole = run_trial(cfg, tmp_path / "whole")
    run_trial(cfg, tmp_path / "split", stop_after=5)
    second = run_trial(cfg, tmp_path / "split")
    assert second.completed and second.attempt == 1
    assert _comparable(read_metrics(tmp_path / "whole")) == \
        _comparable(read_metrics(tmp_path / "split"))
    assert _weights(tmp_path / "whole", cfg.trial_name()) == \
        _weights(tmp_path / "split", cfg.trial_name())
    assert whole.events == second.events
