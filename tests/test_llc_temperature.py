"""The LLC's inverse temperature on a probe batch drawn from a larger training set.

Known truth: a regular model (linear regression, d weights) has lambda = d / 2. Its
checkpoint is the training set's least-squares fit, and the LLC is measured, as emerge does,
on a fixed probe batch of n samples drawn from that set. The batch's own minimiser lies
O(1/sqrt n) away, so L_n(w*) sits above the batch's minimum by about d / n (mean squared
error, unit noise), and the Gaussian posterior exp(-n_beta L_n) gives, in closed form,

    n_beta * (E[L_n] - L_n(w*)) = d / 2 - n_beta * d / n.

With n_beta = n / log n (``n_beta_of="batch"``, the default) that is d / 2 (1 - 2 / log n),
WBIC's finite-n term (Watanabe 2013, the O_p(sqrt(log n)) fluctuation at the true
parameter); with n_beta from the training set of N >> n samples it is d / 2 - (N / log N) d / n:
the chains descend below L_n(w*) and the "LLC" is negative, whatever the sampler. That was
cpu-s0's pilots at n = 128 from training sets of up to 45,000 (15 of 24 chose nothing, 70% of
draws below L(w*)).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from emergence_core.measures.batch import RegressionBatch
from emergence_core.measures.llc import LLCSettings, estimate_llc, stiffness


def _regression(d: int = 10, population: int = 50_000, n: int = 1000
                ) -> tuple[nn.Module, RegressionBatch]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(population, d, generator=gen)
    y = x @ torch.randn(d, 1, generator=gen) + torch.randn(population, 1, generator=gen)
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():  # the training set's minimiser, not the probe batch's
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    return model, RegressionBatch(x[:n], y[:n], n_population=population)


def _llc(model: nn.Module, batch: RegressionBatch, of: str) -> tuple[float, object]:
    s = LLCSettings(n_chains=4, n_draws=2000, n_burnin=1000, minibatch_size=None,
                    n_beta_of=of)
    n_beta, lam = stiffness(model, batch, s)
    r = estimate_llc(model, batch, replace(s, eps=0.05 / (n_beta * lam),
                                           gamma=1e-3 * n_beta * lam))
    return n_beta, r


def test_the_batchs_own_temperature_recovers_a_regular_models_lambda() -> None:
    d, n = 10, 1000
    model, batch = _regression(d=d, n=n)
    assert LLCSettings().n_beta_of == "batch"  # the default
    n_beta, r = _llc(model, batch, "batch")
    assert n_beta == n / math.log(n)
    expected = d / 2 * (1 - 2 / math.log(n))  # 3.55 (lambda 5, less WBIC's finite-n term)
    assert abs(r.value - expected) <= 0.15 * expected, (r.value, expected)
    assert r.converged and r.checks == {"stationary": True, "in_basin": True}


def test_the_training_sets_temperature_on_a_probe_batch_descends() -> None:
    model, batch = _regression()
    n_beta, r = _llc(model, batch, "train")
    assert n_beta == 50_000 / math.log(50_000)
    assert r.value < 0 and r.below_share > 0.9 and not r.checks["in_basin"]


def test_the_pilots_stiffness_on_a_subset_of_the_batch() -> None:
    """lambda_max on evenly spaced samples: a subset's loss is the loss of those samples."""
    from emergence_core.measures.batch import ScoredBatch

    model, batch = _regression(n=1000)
    ids = torch.linspace(0, 999, 100).round().long()
    assert torch.equal(batch.subset(ids).loss(model), batch.loss(model, ids))
    inputs = torch.randn(50, 4)
    head = nn.Linear(4, 3)
    scored = ScoredBatch(targets=torch.randint(0, 3, (50, 1)),
                         forward=lambda m, sel: m(inputs[sel]).unsqueeze(1), n_population=900)
    sub = scored.subset(ids[:10] // 20)
    assert sub.n_population == 900 and sub.n_samples == 10
    assert torch.allclose(sub.loss(head), scored.loss(head, ids[:10] // 20))
    s = LLCSettings()
    full, some = stiffness(model, batch, s), stiffness(model, batch, s, samples=100)
    assert full[0] == some[0] and some[1] != full[1]  # n_beta of the batch, lambda of the subset
