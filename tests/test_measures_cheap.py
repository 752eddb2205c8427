"""Cheap measures on inputs whose answer is known by construction."""

from __future__ import annotations

import math

import pytest
import torch

from emergence_core.measures import effective_rank, linear_probe_accuracy, rankme, score_answers


def _with_singular_values(values: list[float], n: int = 300, d: int = 64,
                          seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    k = len(values)
    return u[:, :k] @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ v[:k]


@pytest.mark.parametrize("k", [1, 2, 5, 17, 64])
def test_k_equal_singular_values_give_rankme_k(k: int) -> None:
    z = _with_singular_values([3.0] * k)
    # the eps of each zero singular value adds ~1.6e-6: close to k, not exactly k
    assert rankme(z, centre=False) == pytest.approx(k, rel=1e-3)


def test_rankme_matches_the_entropy_formula_on_a_known_spectrum() -> None:
    s = [4.0, 2.0, 1.0, 1.0]
    full = s + [0.0] * 60  # min(n, d) = 64 singular values, 60 of them zero
    p = [x / sum(s) + 1e-7 for x in full]
    expected = math.exp(-sum(q * math.log(q) for q in p))
    assert rankme(_with_singular_values(s), centre=False) == pytest.approx(expected, rel=1e-6)


def test_rankme_is_scale_invariant_and_zero_without_variance() -> None:
    z = torch.randn(200, 32, generator=torch.Generator().manual_seed(1))
    assert rankme(z * 1e-6) == pytest.approx(rankme(z), rel=1e-9)
    assert rankme(z * 1e6) == pytest.approx(rankme(z), rel=1e-9)
    assert rankme(torch.zeros(200, 32)) == 0.0
    same = torch.randn(1, 32).float().repeat(200, 1)  # one representation for every sample
    assert rankme(same) == 0.0
    assert rankme(same, centre=False) == pytest.approx(1.0, abs=1e-4)
    assert effective_rank(torch.zeros(5)) == 0.0


def test_centring_removes_a_shared_offset() -> None:
    z = _with_singular_values([1.0] * 3, n=200, d=16) + 50.0  # large common mean
    assert rankme(z) == pytest.approx(3, rel=0.01)
    assert rankme(z, centre=False) < 1.5  # the mean direction dominates


def test_linear_probe_reads_separable_classes_and_not_noise() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 32, generator=g) * 4
    y = torch.randint(0, 5, (400,), generator=g)
    x = centres[y] + 0.3 * torch.randn(400, 32, generator=g)
    assert linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:]) == 1.0
    noise = torch.randn(400, 32, generator=g)
    acc = linear_probe_accuracy(noise[:200], y[:200], noise[200:], y[200:])
    assert acc < 0.4  # chance is 0.2
    assert math.isnan(linear_probe_accuracy(x[:0], y[:0], x, y))


def test_score_answers_on_constructed_logits() -> None:
    targets = torch.tensor([[1, 2], [0, 1], [2, -100]])
    logits = torch.full((3, 2, 3), -10.0)
    logits[0, 0, 1] = logits[0, 1, 2] = 10.0  # sample 0 right twice
    logits[1, 0, 0] = logits[1, 1, 2] = 10.0  # sample 1 right once
    logits[2, 0, 2] = 10.0  # sample 2: its one answer token right
    s = score_answers(logits, targets)
    assert s.correct.tolist() == [True, False, True]
    assert s.tokens_right.tolist() == [2, 1, 1]
    assert s.accuracy() == pytest.approx(2 / 3)
    assert s.token_accuracy() == pytest.approx(4 / 5)
    assert s.logprob[0].item() == pytest.approx(0.0, abs=1e-6)
    assert s.logprob[1].item() == pytest.approx(-20.0, abs=1e-3)
