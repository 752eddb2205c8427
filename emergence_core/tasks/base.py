"""What a task is: data in a registry, declared once.

A task is a family of sequence problems with three difficulty levels. Every sample is an
integer *index* into the level's finite universe of problems (for ADD at n digits, the
index is ``a * 10**n + b``); ``decode`` turns indices into prompt and answer symbols,
vectorised over numpy arrays. Indices make the train / diagnostic split exact: two sets are
disjoint exactly when their index sets are.

Symbols are task-local integers (digit ``d`` is symbol ``d``); the trial's ``Vocabulary``
maps them to token ids after the special tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from emergence_core.registry import RegistryError, choice_hint

__all__ = [
    "SPECIAL_TOKENS",
    "LevelSpec",
    "TaskDef",
    "TaskError",
    "Vocabulary",
]

SPECIAL_TOKENS = ("<pad>", "<sep>", "<eos>", "<L1>", "<L2>", "<L3>")
PAD, SEP, EOS = 0, 1, 2


class TaskError(RegistryError):
    """A bad task name, level or difficulty parameter; the message is one line."""


Decode = Callable[[Mapping[str, Any], np.ndarray], tuple[np.ndarray, np.ndarray]]
Sample = Callable[[Mapping[str, Any], np.random.Generator, int], np.ndarray]
# (params, indices) -> stratum of each index in 0..S-1, and S; the sampler draws a stratum
# uniformly, then a problem uniformly within it (CMP: the length of the shared prefix).
Strata = Callable[[Mapping[str, Any], np.ndarray], tuple[np.ndarray, int]]


@dataclass(frozen=True)
class LevelSpec:
    """One difficulty level of a task with its parameters fixed."""

    task: str
    level: int  # 1, 2 or 3
    params: Mapping[str, Any]
    prompt_len: int
    answer_len: int
    universe: int  # number of distinct problems
    decode: Decode = field(repr=False, compare=False)
    sampler: Sample | None = field(default=None, repr=False, compare=False)
    strata: Strata | None = field(default=None, repr=False, compare=False)

    @property
    def seq_len(self) -> int:
        """LEVEL, prompt, SEP, answer, EOS."""
        return self.prompt_len + self.answer_len + 3

    @property
    def sep_pos(self) -> int:
        return self.prompt_len + 1

    def draw(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """``k`` problem indices, with replacement, from the level's distribution."""
        if self.sampler is not None:
            return self.sampler(self.params, rng, k)
        return rng.integers(0, self.universe, size=k, dtype=np.int64)

    def problems(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Prompt symbols [n, prompt_len] and answer symbols [n, answer_len] of ``idx``."""
        idx = np.asarray(idx, dtype=np.int64)
        return self.decode(self.params, idx)


@dataclass(frozen=True)
class TaskDef:
    """A task: its levels' default parameters and the functions that define it.

    ``shape(params) -> (prompt_len, answer_len)``, ``universe(params) -> int``,
    ``decode(params, idx) -> (prompt, answer)`` and ``symbols(all_level_params) -> names``.
    ``sample(params, rng, k)`` draws indices (uniform over the universe unless the task
    needs another distribution, as CMP does); a task with a sampler declares ``strata``, so
    that a small universe, which is enumerated rather than sampled, is split with the
    sampler's stratum shares (``data.split_indices``).
    """

    name: str
    description: str
    defaults: tuple[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]]
    shape: Callable[[Mapping[str, Any]], tuple[int, int]]
    universe: Callable[[Mapping[str, Any]], int]
    decode: Decode
    symbols: Callable[[list[Mapping[str, Any]]], list[str]]
    sample: Sample | None = None
    strata: Strata | None = None
    train_fraction: float = 0.5  # most of a small universe that training may take
    # Default steps, measured at s0 on a 2-core CPU (lr 1e-3, batch 192): a few times the step
    # at which the hardest level s0 learns crosses 50% accuracy, so cheap sweeps see the whole
    # transition and its aftermath. Sweeps over larger scales set steps per scale.
    steps: int = 1500
    train_size: int = 20000  # training problems per level, at most
    validate: Callable[[Mapping[str, Any]], None] | None = None

    def level(self, level: int, **overrides: Any) -> LevelSpec:
        """The level's spec, with difficulty parameters overridden by ``overrides``."""
        if level not in (1, 2, 3):
            raise TaskError(f"unknown level {level!r} of task {self.name}; levels are 1, 2, 3")
        base = dict(self.defaults[level - 1])
        unknown = sorted(set(overrides) - set(base))
        if unknown:
            raise TaskError(f"unknown parameter {unknown[0]!r} for {self.name} level {level}"
                            + choice_hint(unknown[0], tuple(base)))
        params = {**base, **overrides}
        for k, v in params.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TaskError(f"{self.name} level {level}: {k} must be a positive integer, "
                                f"got {v!r}")
        if self.validate is not None:
            self.validate(params)
        prompt_len, answer_len = self.shape(params)
        frozen = MappingProxyType(params)
        return LevelSpec(
            task=self.name, level=level, params=frozen, prompt_len=prompt_len,
            answer_len=answer_len, universe=int(self.universe(params)), decode=self.decode,
            sampler=self.sample, strata=self.strata,
        )


@dataclass(frozen=True)
class Vocabulary:
    """Token ids of one trial: the special tokens, then the task's symbols."""

    symbols: tuple[str, ...]

    @property
    def tokens(self) -> tuple[str, ...]:
        return SPECIAL_TOKENS + self.symbols

    @property
    def size(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.symbols)

    @property
    def offset(self) -> int:
        return len(SPECIAL_TOKENS)

    @staticmethod
    def level_token(level: int) -> int:
        return 2 + level  # <L1> is id 3

    def decode(self, ids: np.ndarray | list[int]) -> str:
        toks = self.tokens
        return " ".join(toks[int(i)] for i in ids)
