"""The batched geometry of a probe step equals the per-value computation it replaced."""

from __future__ import annotations

import math

import pytest
import torch

from emergence_core.config import resolve_config
from emergence_core.measures import (
    AnswerScores,
    linear_probe_accuracies,
    linear_probe_accuracy,
    rankme,
    rankme_batched,
)
from emergence_core.metrics import RowBuffer, TrialKey
from emergence_core.trial.cheap_probes import (
    LevelReading,
    geometry_rows,
    geometry_rows_per_value,
    read_level,
)
from emergence_core.trial.trainer import Trainer
from tests.conftest import tiny_overrides

KEY = TrialKey("t", "T-s0-0", "COPY", "s0", 0)


def _reading(level: int, layers: list[torch.Tensor], labels: torch.Tensor) -> LevelReading:
    n = labels.shape[0]
    scores = AnswerScores(torch.ones(n, dtype=torch.bool), torch.ones(n, dtype=torch.int64),
                          torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.int64))
    return LevelReading(level, scores, {"sep": layers}, labels)


def _random_readings(sizes: list[int], d: int = 12, n_layers: int = 4) -> list[LevelReading]:
    """Levels of the given sample counts; per level a constant layer (the SEP embedding: no
    variance), a rank-2 layer, a layer of huge activations and full-rank noise."""
    g = torch.Generator().manual_seed(0)
    out = []
    for level, n in enumerate(sizes, start=1):
        layers = [torch.randn(1, d, generator=g).expand(n, d).clone(),
                  torch.randn(n, 2, generator=g) @ torch.randn(2, d, generator=g),
                  torch.randn(n, d, generator=g) * 1e4]
        layers += [torch.randn(n, d, generator=g) for _ in range(n_layers - len(layers))]
        labels = torch.randint(0, 5, (n,), generator=g)
        out.append(_reading(level, layers, labels))
    return out


def _rows(fn, readings: list[LevelReading], cfg) -> list[tuple]:
    rows = RowBuffer(KEY)
    fn(readings, "sep", cfg, 7, rows)
    return rows.since(0)


def _assert_same_rows(readings: list[LevelReading], cfg) -> None:
    batched, reference = _rows(geometry_rows, readings, cfg), _rows(geometry_rows_per_value,
                                                                    readings, cfg)
    assert [r[:3] for r in batched] == [r[:3] for r in reference]  # keys, in the same order
    for (measure, layer, level, got), (*_, want) in zip(batched, reference, strict=True):
        if math.isnan(want):
            assert math.isnan(got), (measure, layer, level)
        else:
            assert got == pytest.approx(want, rel=1e-6, abs=1e-12), (measure, layer, level)


@pytest.mark.parametrize(("sizes", "linear_probe"), [
    ([60, 60, 60], True),  # equal shapes: all levels in one SVD call
    ([60, 45, 30, 3], True),  # unequal: fewer samples than rankme_samples, a 1-sample test set
    ([50], True),  # one level: no pooled rows
    ([60, 40], False),
])
def test_batched_geometry_equals_per_value_on_random_representations(sizes, linear_probe):
    cfg = resolve_config("COPY", "s0", 0, **tiny_overrides(
        probe={"rankme_samples": 40, "linear_probe": linear_probe})).probe
    _assert_same_rows(_random_readings(sizes), cfg)


def test_batched_geometry_equals_per_value_on_real_representations():
    torch.set_num_threads(1)
    for task in ("COPY", "MOD"):
        trainer = Trainer(resolve_config(task, "s0", 0, **tiny_overrides(
            probe={"rankme_samples": 16, "read_positions": ["sep", "prompt_mean"]})))
        for _ in range(6):
            trainer.train_step()
        cfg = trainer.cfg.probe
        readings = [read_level(trainer.model, enc, sep=ld.spec.sep_pos,
                               answer_len=ld.spec.answer_len, positions=cfg.read_positions,
                               batch_size=cfg.eval_batch_size)
                    for ld, enc in zip(trainer.data.levels, trainer.data.diag, strict=True)]
        for pos in cfg.read_positions:
            moved = [LevelReading(r.level, r.scores, {"sep": r.reps[pos]}, r.first_answer)
                     for r in readings]
            _assert_same_rows(moved, cfg)


def test_batched_measures_equal_the_scalar_ones_edge_cases():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 30, 8, generator=g, dtype=torch.float64)
    z[1] = float("nan")
    z[2] = 0.0
    z[3, :, 0] = float("inf")
    for centre in (True, False):
        got = rankme_batched(z, centre=centre)
        assert got.dtype == torch.float64
        want = [rankme(m, centre=centre) for m in z]
        assert got.tolist() == pytest.approx(want, rel=1e-9, abs=1e-12)
    x = torch.randn(3, 20, 6, generator=g)
    y = torch.randint(0, 3, (20,), generator=g)
    got = linear_probe_accuracies(x[:, :12], y[:12], x[:, 12:], y[12:], ridge=1e-3)
    want = [linear_probe_accuracy(m[:12], y[:12], m[12:], y[12:], ridge=1e-3) for m in x]
    assert got.tolist() == want
    assert torch.isnan(linear_probe_accuracies(x[:, :0], y[:0], x, y)).all()
    with pytest.raises(ValueError, match="batch"):
        rankme_batched(z[0])
