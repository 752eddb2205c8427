"""The model: GPT-2-style pre-norm decoders on Hugging Face ``transformers``.

A scale's shape (``emergence_core.scales``, docs/methods.md §2) builds one here.

Activation points have stable names, after TransformerLens: layer 0 is ``hook_embed``
(token + position embedding), layer i >= 1 is ``blocks.{i-1}.hook_resid_post`` (the residual
stream after block i, before the final LayerNorm).

Pitfall: second-order autodiff (Hessian-vector products) through the default CPU SDPA kernel
fails; callers that need it wrap the computation in
``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``. Training uses SDPA for speed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

# The scale registry lives torch-free in scales.py; its names stay importable from here.
from emergence_core.scales import SCALES, ScaleError, ScaleShape, register_scale, scale_shape

__all__ = [
    "SCALES",
    "ScaleError",
    "ScaleShape",
    "answer_logits",
    "build_model",
    "capture_residual",
    "count_parameters",
    "layer_names",
    "register_scale",
    "scale_shape",
]


def build_model(shape: ScaleShape, vocab_size: int, n_positions: int, *, seed: int,
                init_std: float = 0.02, attn_implementation: str = "sdpa") -> GPT2LMHeadModel:
    """A freshly initialised model, deterministic from ``seed``.

    GPT-2's initialisation: weights ~ N(0, init_std), residual projections scaled by
    1/sqrt(2 * n_layer). The global RNG is forked, never reseeded, so building a model has no
    side effect on the caller's random state. Dropout is off: the study's tasks are
    deterministic and dropout would make probe values depend on RNG position.
    """
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=shape.d_model,
        n_layer=shape.n_layer, n_head=shape.n_head, n_inner=shape.d_mlp,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=init_std,
        # the tanh GELU of GPT-2, as one fused kernel (the default "gelu_new" is five ops)
        activation_function="gelu_pytorch_tanh",
        bos_token_id=None, eos_token_id=None, pad_token_id=None, use_cache=False,
    )
    config._attn_implementation = attn_implementation
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = GPT2LMHeadModel(config)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model


def count_parameters(model: nn.Module) -> int:
    """Distinct trainable parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def answer_logits(model: GPT2LMHeadModel, tokens: torch.Tensor,
                  positions: torch.Tensor) -> torch.Tensor:
    """Logits at the scored positions only: [B, A, V] for ``tokens`` [B, T], ``positions`` [B, A].

    Projecting only the answer positions through the unembedding halves the step time of
    small models against full-sequence logits. Sequences of one batch share a length, so no
    attention mask is needed beyond the causal one.
    """
    hidden = model.transformer(input_ids=tokens).last_hidden_state  # [B, T, d]
    d = hidden.shape[-1]
    picked = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, d))  # [B, A, d]
    return model.lm_head(picked)


def layer_names(model: GPT2LMHeadModel) -> list[str]:
    return ["hook_embed"] + [f"blocks.{i}.hook_resid_post"
                             for i in range(len(model.transformer.h))]


@contextmanager
def capture_residual(model: GPT2LMHeadModel) -> Iterator[list[torch.Tensor | None]]:
    """Record the residual stream at every layer during forward passes in the block.

    Yields a list with one slot per layer (see ``layer_names``); each forward pass overwrites
    the slots with that pass's [B, T, d] activations. The hooks are removed on exit, also when
    the block raises.
    """
    slots: list[torch.Tensor | None] = [None] * (len(model.transformer.h) + 1)

    def keep(i: int):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            slots[i] = output[0] if isinstance(output, tuple) else output
        return hook

    # The dropout module after the embeddings outputs wte + wpe (dropout is off).
    handles = [model.transformer.drop.register_forward_hook(keep(0))]
    handles += [block.register_forward_hook(keep(i + 1))
                for i, block in enumerate(model.transformer.h)]
    try:
        yield slots
    finally:
        for h in handles:
            h.remove()
