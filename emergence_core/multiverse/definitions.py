"""The definitions a collapse measure can take, and its value under each (docs/methods.md §4.1).

The study names "RankMe of the representation" without saying which representation or
which spectrum; the committed CPU study found that MOD's floor of about 2.0 holds under no
reading of RankMe's own formula and under two readings of other formulas. A
:class:`Definition` fixes every choice:

- ``formula``: ``singular``, RankMe's (Garrido et al. 2023): exp-entropy of the normalised
  singular values of Z; ``covariance``: the same entropy of the eigenvalues of Z^T Z (the
  squared singular values; Roy and Vetterli's effective rank of the covariance). Not
  RankMe, so not named so;
- ``centre``: subtract the column means first (the study's RankMe) or not (Garrido et
  al.'s). The four (formula, centring) pairs have their own names (``FORMULAS``):
  ``rankme``, ``rankme_uncentred``, ``erank_cov``, ``erank_moment``;
- ``position``: which token's vector is a sample: ``sep``, ``last_answer``,
  ``prompt_mean`` (the mean over the prompt tokens), or ``all`` (every position of every
  sequence is a sample);
- ``reading``: where the stack ends: ``blocks`` (the embedding and each block's residual
  output, layers 0..L), ``ln_f`` (and the final layer norm's output as layer L+1), or
  ``logits`` (and the unembedding's logits as layer L+2). The top layer is the "final
  layer" of the floors, and every layer above the embedding may vote in the top-down test;
- ``samples``: the first k diagnostic samples of each level.

Per level or pooled over levels (level null) is the analysis's choice, not the
definition's: every definition gives both. :func:`definition_values` computes every
definition of a grid from one set of readings, each SVD once per (position, layer,
samples, centring, group): the two formulas share it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from emergence_core.measures.rankme import _ZERO_VARIANCE, RANKME_EPS, effective_ranks

__all__ = ["FORMULAS", "POSITIONS", "READINGS", "Definition", "definition_values", "grid",
           "parse_definition"]

FORMULAS = {("singular", True): "rankme", ("singular", False): "rankme_uncentred",
            ("covariance", True): "erank_cov", ("covariance", False): "erank_moment"}
_BY_NAME = {v: k for k, v in FORMULAS.items()}
POSITIONS = ("sep", "last_answer", "prompt_mean", "all")
READINGS = ("blocks", "ln_f", "logits")


@dataclass(frozen=True, order=True)
class Definition:
    formula: str  # "singular" | "covariance"
    centre: bool
    position: str
    reading: str
    samples: int

    def __post_init__(self) -> None:
        if (self.formula, self.centre) not in FORMULAS:
            raise ValueError(f"formula must be 'singular' or 'covariance', got {self.formula!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got "
                             f"{self.position!r}")
        if self.reading not in READINGS:
            raise ValueError(f"reading must be one of {', '.join(READINGS)}, got "
                             f"{self.reading!r}")
        if self.samples < 2:
            raise ValueError(f"samples must be >= 2, got {self.samples}")

    @property
    def base(self) -> str:
        return FORMULAS[self.formula, self.centre]

    @property
    def name(self) -> str:
        """The measure name its rows carry: ``rankme@sep:blocks:n300``."""
        return f"{self.base}@{self.position}:{self.reading}:n{self.samples}"

    def top_layer(self, n_blocks: int) -> int:
        return n_blocks + READINGS.index(self.reading)


def parse_definition(name: str) -> Definition:
    """The :class:`Definition` of a measure name written by :attr:`Definition.name`."""
    try:
        base, rest = name.split("@", 1)
        position, reading, n = rest.split(":")
        formula, centre = _BY_NAME[base]
        if not n.startswith("n"):
            raise ValueError
        return Definition(formula, centre, position, reading, int(n[1:]))
    except (ValueError, KeyError):
        raise ValueError(f"{name!r} is not a multiverse measure name "
                         "(base@position:reading:n<samples>, e.g. rankme@sep:blocks:n300)"
                         ) from None


def grid(samples: tuple[int, ...], *, formulas: tuple[str, ...] = ("singular", "covariance"),
         centres: tuple[bool, ...] = (True, False), positions: tuple[str, ...] = POSITIONS,
         readings: tuple[str, ...] = READINGS) -> list[Definition]:
    """Every combination of the choices, in a stable order."""
    return [Definition(f, c, p, r, k) for f, c, p, r, k in itertools.product(
        formulas, centres, positions, readings, sorted(set(samples)))]


def _spectra(z: torch.Tensor, centre: bool) -> torch.Tensor:
    """Singular values of each matrix of ``z`` [batch, n, d] (centred first if asked),
    scaled so the largest entry is 1; rows of zeros where the matrix has no variance."""
    x = z.to(torch.float64)
    magnitude = x.abs().amax(dim=(1, 2))
    if centre:
        x = x - x.mean(dim=1, keepdim=True)
    spread = x.abs().amax(dim=(1, 2))
    flat = ~torch.isfinite(spread) | (spread <= _ZERO_VARIANCE * magnitude) | (spread == 0)
    x = x / torch.where(flat, 1.0, spread)[:, None, None]
    s = torch.linalg.svdvals(x)
    return torch.where(flat[:, None], 0.0, s)


def definition_values(layers: dict[str, list[list[torch.Tensor]]], n_blocks: int,
                      definitions: list[Definition], levels: list[int] | None = None,
                      eps: float = RANKME_EPS
                      ) -> dict[tuple[Definition, int, int | None], float]:
    """The value of every definition at every layer and group, from one probe step's
    readings.

    ``layers``: per position, per level (in level order), per layer a tensor [n, d] (``all``:
    [n, T, d], its sequences' positions flattened after the first ``samples`` sequences are
    taken) whose layers are the embedding, each block, the final layer norm and the logits
    (``n_blocks + 3``; the logits' d is the vocabulary's). Groups: ``levels`` (default
    1, 2, ...), and ``None`` for their union when there are several. Returns
    {(definition, layer, level): value}.
    """
    out: dict[tuple[Definition, int, int | None], float] = {}
    shared: dict[tuple, dict[int, list[list[float]]]] = {}  # (position, samples, centre)
    for d in definitions:
        per_level = layers[d.position]
        key = (d.position, d.samples, d.centre)
        if key not in shared:
            shared[key] = _group_values(per_level, d.samples, d.centre, eps)
        values = shared[key][1 if d.formula == "singular" else 2]  # [groups][layers]
        ids = list(levels) if levels is not None else list(range(1, len(per_level) + 1))
        groups = [*ids, *([None] if len(ids) > 1 else [])]
        for g, level in enumerate(groups):
            for layer in range(d.top_layer(n_blocks) + 1):
                out[d, layer, level] = values[g][layer]
    return out


def _group_values(levels: list[list[torch.Tensor]], samples: int, centre: bool,
                  eps: float) -> dict[int, list[list[float]]]:
    """Both formulas' values [groups][layers] for each level's first ``samples`` sequences
    and their union: one batched SVD per layer and shape (the logits' width differs), the
    squared singular values giving the covariance formula."""
    def take(m: torch.Tensor) -> torch.Tensor:
        m = m[:samples]
        return m.flatten(0, 1) if m.ndim == 3 else m

    groups = [[take(m) for m in per_layer] for per_layer in levels]
    if len(groups) > 1:
        groups.append([torch.cat(ms) for ms in zip(*groups, strict=True)])
    n_layers = len(groups[0])
    out = {p: [[0.0] * n_layers for _ in groups] for p in (1, 2)}
    for layer in range(n_layers):
        by_shape: dict[torch.Size, list[int]] = {}
        for gi, g in enumerate(groups):
            by_shape.setdefault(g[layer].shape, []).append(gi)
        for idx in by_shape.values():
            s = _spectra(torch.stack([groups[i][layer] for i in idx]), centre)
            for p in (1, 2):
                for gi, v in zip(idx, effective_ranks(s ** p, eps).tolist(), strict=True):
                    out[p][gi][layer] = v
    return out
