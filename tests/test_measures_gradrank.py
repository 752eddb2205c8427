"""Fisher and gradient-covariance effective ranks, and the ScoredBatch they score."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from emergence_core.measures.batch import IGNORE_INDEX, ScoredBatch
from emergence_core.measures.gradrank import (
    GradRankSettings,
    fisher_effective_rank,
    gradcov_effective_rank,
    gradient_gram,
)
from emergence_core.measures.rankme import effective_rank


def _mlp(n: int = 20) -> tuple[nn.Module, ScoredBatch]:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    return model, ScoredBatch.from_classification(x, y)


def _dense_jacobian(model: nn.Module, batch: ScoredBatch, ids: torch.Tensor,
                    targets: torch.Tensor) -> torch.Tensor:
    """J [n, P]: one explicit backward per sample, all trainable parameters flattened."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(ids.shape[0]):
        loss = batch.per_sample_loss(model, ids[i:i + 1], targets[i:i + 1]).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


def _f64(values: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _top(matrix: torch.Tensor, k: int) -> torch.Tensor:
    return torch.linalg.eigvalsh(matrix).flip(0)[:k].clamp_min(0)


def test_rank_of_orthogonal_gradients_is_known():
    # logits [0, w.x] at w = 0: each sample's gradient is +-1/2 x_i whatever its label, so
    # with x_i cycling over r orthonormal directions the Gram has r equal eigenvalues
    n, r, d = 12, 4, 6
    x = torch.eye(d, dtype=torch.float64)[torch.arange(n) % r]
    lin = nn.Linear(d, 1, bias=False).double()
    nn.init.zeros_(lin.weight)

    def forward(model: nn.Module, xs: torch.Tensor) -> torch.Tensor:
        z = model(xs)
        return torch.cat([torch.zeros_like(z), z], dim=1)

    batch = ScoredBatch.from_classification(x, torch.arange(n) % 2, forward)
    settings = GradRankSettings(n_samples=n)
    fisher = fisher_effective_rank(lin, batch, settings)
    assert fisher.value == pytest.approx(r, rel=1e-4)
    assert fisher.eigenvalues[:r] == pytest.approx([0.25 * (n // r) / n] * r)
    assert max(fisher.eigenvalues[r:]) < 1e-12


def test_ranks_equal_the_dense_per_sample_gradient_matrices():
    model, batch = _mlp()
    s = GradRankSettings(n_samples=batch.n_samples)
    ids = torch.arange(batch.n_samples)
    n = batch.n_samples

    j = _dense_jacobian(model, batch, ids, batch.targets)
    centred = j - j.mean(dim=0)
    cov_eigs = _top(centred.T @ centred / n, n)  # P x P, P = 51 > n
    gradcov = gradcov_effective_rank(model, batch, s)
    torch.testing.assert_close(_f64(gradcov.eigenvalues), cov_eigs, rtol=1e-7, atol=1e-10)
    assert gradcov.value == pytest.approx(effective_rank(cov_eigs), rel=1e-8)

    # the Fisher's labels: drawn with the documented protocol (device generator, seed + 1)
    sampled = batch.sample_targets(model, torch.Generator().manual_seed(s.seed + 1), ids)
    assert not torch.equal(sampled, batch.targets)
    js = _dense_jacobian(model, batch, ids, sampled)
    fisher = fisher_effective_rank(model, batch, s)
    fisher_eigs = _top(js.T @ js / n, n)
    torch.testing.assert_close(_f64(fisher.eigenvalues), fisher_eigs, rtol=1e-7, atol=1e-10)
    assert fisher.value == pytest.approx(effective_rank(fisher_eigs), rel=1e-8)
    assert fisher.value != pytest.approx(gradcov.value, rel=1e-3)
    assert 0 < fisher.stderr < fisher.value and 0 < gradcov.stderr < gradcov.value


def test_jackknife_stderr_is_leave_one_out_over_samples():
    model, batch = _mlp(n=12)
    n = batch.n_samples
    j = _dense_jacobian(model, batch, torch.arange(n), batch.targets)
    thetas = []
    for i in range(n):
        rest = torch.cat([j[:i], j[i + 1:]])
        rest = rest - rest.mean(dim=0)
        thetas.append(effective_rank(_top(rest.T @ rest / (n - 1), n - 1)))
    t = _f64(tuple(thetas))
    expected = float(((n - 1) / n * ((t - t.mean()) ** 2).sum()).sqrt())
    result = gradcov_effective_rank(model, batch, GradRankSettings(n_samples=n))
    assert result.stderr == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_chunked_gram_equals_whole_gram(method):
    model, batch = _mlp()
    ids = torch.arange(10)
    targets = batch.targets[ids]
    whole, p, chunks, used = gradient_gram(model, batch, ids, targets, method=method)
    assert (p, chunks, used) == (51, 1, method)
    # half the budget = 8 bytes x 10 samples x 7 columns: chunks cut through parameter
    # tensors, and the other half holds gradients of 2 or 3 samples at a time
    small, p2, chunks2, _ = gradient_gram(model, batch, ids, targets, method=method,
                                          memory_budget_bytes=2 * 8 * 10 * 7)
    assert p2 == 51 and chunks2 == 8
    torch.testing.assert_close(small, whole, rtol=1e-10, atol=1e-12)
    j = _dense_jacobian(model, batch, ids, targets)
    torch.testing.assert_close(whole, j @ j.T, rtol=1e-10, atol=1e-12)


def test_restriction_to_first_k_and_to_prefixes():
    model, batch = _mlp()
    ids = torch.arange(8)
    targets = batch.targets[ids]
    j = _dense_jacobian(model, batch, ids, targets)
    g, p, _, _ = gradient_gram(model, batch, ids, targets, first_k=27, memory_budget_bytes=100)
    assert p == 27
    torch.testing.assert_close(g, j[:, :27] @ j[:, :27].T, rtol=1e-10, atol=1e-12)
    # parameters: 0.weight (24), 0.bias (6), 2.weight (18), 2.bias (3)
    g, p, _, _ = gradient_gram(model, batch, ids, targets, params=("2.",))
    assert p == 21
    torch.testing.assert_close(g, j[:, 30:] @ j[:, 30:].T, rtol=1e-10, atol=1e-12)
    g, p, _, _ = gradient_gram(model, batch, ids, targets, params=("2.",), first_k=20)
    torch.testing.assert_close(g, j[:, 30:50] @ j[:, 30:50].T, rtol=1e-10, atol=1e-12)
    result = gradcov_effective_rank(model, batch, GradRankSettings(first_k=27))
    assert result.n_params == 27
    with pytest.raises(ValueError, match="did you mean"):
        gradcov_effective_rank(model, batch, GradRankSettings(params=("0.wieght",)))


def test_model_and_global_rng_left_alone_and_seeded_subset():
    model, batch = _mlp(n=30)
    model.train()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    a = fisher_effective_rank(model, batch, GradRankSettings(n_samples=16, seed=5))
    b = fisher_effective_rank(model, batch, GradRankSettings(n_samples=16, seed=5))
    c = fisher_effective_rank(model, batch, GradRankSettings(n_samples=16, seed=6))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert model[2].weight.grad is None and all(m.training for m in model.modules())
    assert a.n_samples == 16 and a.value == b.value != c.value


def test_gpt2_vmap_path_equals_loop_path():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=11, n_positions=12,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 11, (8, 10), generator=torch.Generator().manual_seed(0))
    batch = ScoredBatch.from_causal_lm(ids, 3)
    s = dict(n_samples=8, memory_budget_bytes=4 * 8 * 1000)  # several chunks
    by_vmap = gradcov_effective_rank(model, batch, GradRankSettings(method="vmap", **s))
    by_loop = gradcov_effective_rank(model, batch, GradRankSettings(method="loop", **s))
    auto = fisher_effective_rank(model, batch, GradRankSettings(**s))
    assert by_vmap.method == "vmap" and by_loop.method == "loop" and auto.method == "vmap"
    assert by_vmap.n_chunks > 1
    assert by_vmap.value == pytest.approx(by_loop.value, rel=1e-5)
    assert 1 < by_vmap.value < 8


def test_scored_batch_losses_respect_unscored_positions():
    logits = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[1, 2, IGNORE_INDEX, IGNORE_INDEX], [0, 0, 0, 0],
                            [IGNORE_INDEX, 4, IGNORE_INDEX, 3]])
    batch = ScoredBatch(targets=targets, forward=lambda m, ids: logits[ids])
    ce = -torch.log_softmax(logits, -1).gather(-1, targets.clamp_min(0)[..., None])[..., 0]
    ce = ce * (targets != IGNORE_INDEX)
    torch.testing.assert_close(batch.per_sample_loss(nn.Identity()), ce.sum(1))
    torch.testing.assert_close(batch.loss(nn.Identity()), ce.sum() / 8)
    torch.testing.assert_close(batch.loss(nn.Identity(), torch.tensor([2])), ce[2].sum() / 2)
    drawn = batch.sample_targets(nn.Identity(), torch.Generator().manual_seed(0))
    assert torch.equal(drawn == IGNORE_INDEX, targets == IGNORE_INDEX)
    with pytest.raises(ValueError, match="int64"):
        ScoredBatch(targets=targets.int(), forward=batch.forward)
    with pytest.raises(ValueError, match="expected"):
        ScoredBatch(targets=targets, forward=lambda m, ids: logits[ids, :2]).loss(nn.Identity())
