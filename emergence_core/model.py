"""Model scales: GPT-2-style pre-norm decoders on Hugging Face ``transformers``.

One name derives a scale's whole shape (docs/methods.md §2):

    scale  layers  d_model  heads  d_mlp   parameters (approx.)
    s0     2       128      4      512     0.4M
    s1     4       256      4      1024    3.2M
    s2     6       384      6      1536    10.6M
    s3     8       512      8      2048    25M
    s4     12      768      12     3072    85M

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
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from emergence_core.registry import Registry, RegistryError

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


class ScaleError(RegistryError):
    """An unknown scale name, or a second shape under a taken one; the message is one line."""


@dataclass(frozen=True)
class ScaleShape:
    """A model scale: its shape, and the training defaults and resources that go with it.

    One entry in ``SCALES`` is all a scale is: ``register_scale`` adds one (a plugin module's,
    or one declared in a sweep file), and every part of emerge then knows it.
    """

    name: str
    n_layer: int
    d_model: int
    n_head: int
    d_mlp: int
    approx_params: float | None = None  # the study's figure, for checks and dry runs
    lr: float = 3e-4  # peak learning rate: falls with width, as in GPT-2/3 practice
    batch_size: int = 192
    warmup_steps: int = 800  # capped at a tenth of a run (config.resolve_config)
    cpus: float = 1.0  # what one trial of this scale holds in a sweep, by default
    gpus: float = 0.0

    def __post_init__(self) -> None:
        problems = [f"{k} must be positive, got {getattr(self, k)}"
                    for k in ("n_layer", "d_model", "n_head", "d_mlp", "lr", "batch_size")
                    if not getattr(self, k) > 0]
        if self.d_model % max(self.n_head, 1):
            problems.append(f"d_model {self.d_model} is not a multiple of n_head {self.n_head}")
        if self.warmup_steps < 0 or self.cpus <= 0 or self.gpus < 0:
            problems.append("warmup_steps and gpus must be >= 0, cpus > 0")
        if problems:
            raise ScaleError(f"scale {self.name}: {problems[0]}")

    def params(self, vocab_size: int, n_positions: int) -> int:
        """Exact parameter count of this shape (tied input/output embedding)."""
        d, f = self.d_model, self.d_mlp
        block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
        return self.n_layer * block + 2 * d + vocab_size * d + n_positions * d

    def training_defaults(self) -> dict[str, float | int]:
        return {"lr": self.lr, "batch_size": self.batch_size, "warmup_steps": self.warmup_steps}


SCALES: Registry[ScaleShape] = Registry("scale", {
    s.name: s
    for s in (
        # The learning rate falls with width; the warm-up grows with it.
        ScaleShape("s0", 2, 128, 4, 512, 0.405e6, lr=1e-3, warmup_steps=100),
        ScaleShape("s1", 4, 256, 4, 1024, 3.2e6, lr=1e-3, warmup_steps=200),
        ScaleShape("s2", 6, 384, 6, 1536, 10.6e6, lr=6e-4, warmup_steps=400, cpus=2),
        ScaleShape("s3", 8, 512, 8, 2048, 25e6, lr=5e-4, warmup_steps=600, cpus=4, gpus=1),
        ScaleShape("s4", 12, 768, 12, 3072, 85e6, lr=3e-4, warmup_steps=800, cpus=4, gpus=1),
    )
}, key=str.lower, error=ScaleError)


def register_scale(shape: ScaleShape) -> ScaleShape:
    """Add a scale; registering an equal one again is a no-op, a different one a ScaleError."""
    held = SCALES.get(shape.name.lower())
    clash = "" if held is None else (f" with another shape ({held.n_layer} layers, d_model "
                                     f"{held.d_model})")
    return SCALES.register(shape.name, shape, clash=clash)


def scale_shape(name: str) -> ScaleShape:
    """The scale called ``name`` (case-insensitive), or a ScaleError with a suggestion."""
    return SCALES.lookup(name)


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
