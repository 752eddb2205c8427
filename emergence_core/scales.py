"""Model scales: the shape a scale's name stands for, with no torch in sight.

One name derives a scale's whole shape (docs/methods.md §2):

    scale  layers  d_model  heads  d_mlp   parameters (approx.)
    s0     2       128      4      512     0.4M
    s1     4       256      4      1024    3.2M
    s2     6       384      6      1536    10.6M
    s3     8       512      8      2048    25M
    s4     12      768      12     3072    85M

Apart from ``model.py`` (which builds the network on torch and ``transformers``) so that
what only reads a sweep's shape (its file's check, the dry run, ``emerge status``) starts in
a fraction of a second instead of importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from emergence_core.registry import Registry, RegistryError

__all__ = ["SCALES", "ScaleError", "ScaleShape", "register_scale", "scale_shape"]


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
