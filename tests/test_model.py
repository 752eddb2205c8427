"""Model scales: parameter counts, activation capture, second-order gradients."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from emergence_core.model import (
    SCALES,
    ScaleError,
    answer_logits,
    build_model,
    capture_residual,
    count_parameters,
    layer_names,
    scale_shape,
)
from emergence_core.tasks import TrialData


@pytest.mark.parametrize("scale", list(SCALES))
@pytest.mark.parametrize("task", ["COPY", "MOD"])
def test_parameter_counts_within_ten_percent_of_the_table(scale: str, task: str) -> None:
    data = TrialData(task, (1, 2, 3), seed=0, train_size=10)
    shape = SCALES[scale]
    with torch.device("meta"):  # count without allocating 85M parameters
        model = build_model(shape, data.vocab.size, data.seq_len, seed=0)
    n = count_parameters(model)
    assert n == shape.params(data.vocab.size, data.seq_len)
    assert abs(n / shape.approx_params - 1) < 0.10, (scale, n)


def test_scale_shapes_follow_the_table() -> None:
    got = {k: (s.n_layer, s.d_model, s.n_head, s.d_mlp) for k, s in SCALES.items()}
    assert got == {"s0": (2, 128, 4, 512), "s1": (4, 256, 4, 1024), "s2": (6, 384, 6, 1536),
                   "s3": (8, 512, 8, 2048), "s4": (12, 768, 12, 3072)}
    with pytest.raises(ScaleError, match="unknown scale"):
        scale_shape("s5")


def test_initialisation_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_model(SCALES["s0"], 20, 16, seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    b = build_model(SCALES["s0"], 20, 16, seed=1)
    c = build_model(SCALES["s0"], 20, 16, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters(), strict=True))


def test_capture_residual_sees_every_layer_and_removes_its_hooks() -> None:
    model = build_model(SCALES["s0"], 20, 16, seed=0).eval()
    x = torch.randint(0, 20, (3, 9))
    with capture_residual(model) as slots:
        final = model.transformer(input_ids=x).last_hidden_state
    assert len(slots) == len(layer_names(model)) == 3
    assert torch.allclose(model.transformer.ln_f(slots[-1]), final, atol=1e-6)
    emb = model.transformer.wte(x) + model.transformer.wpe(torch.arange(9))
    assert torch.allclose(slots[0], emb)
    with pytest.raises(RuntimeError), capture_residual(model):
        raise RuntimeError("boom")
    assert not model.transformer.h[0]._forward_hooks
    assert not model.transformer.drop._forward_hooks


def test_answer_logits_match_the_full_forward() -> None:
    model = build_model(SCALES["s0"], 20, 16, seed=0).eval()
    x = torch.randint(0, 20, (4, 10))
    pos = torch.tensor([[3, 4], [3, 4], [5, 6], [7, 8]])
    full = model(input_ids=x).logits
    picked = answer_logits(model, x, pos)
    assert torch.allclose(picked, full.gather(1, pos[..., None].expand(-1, -1, 20)), atol=1e-5)


def test_second_order_gradients_work_under_math_attention() -> None:
    model = build_model(SCALES["s0"], 20, 16, seed=0)
    x = torch.randint(0, 20, (2, 8))
    params = [p for p in model.parameters() if p.requires_grad]
    with sdpa_kernel(SDPBackend.MATH):
        loss = answer_logits(model, x, torch.tensor([[6], [6]])).logsumexp(-1).mean()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.ones_like(g) for g in grads]
        hv = torch.autograd.grad(grads, params, grad_outputs=v)
    assert all(torch.isfinite(h).all() for h in hv)
    assert any(h.abs().sum() > 0 for h in hv)
