"""Training and diagnostic sets of a trial, deterministic from (task, level, seed).

Sequence layout, per sample: ``LEVEL, prompt..., SEP, answer..., EOS``; every sample of a
level has the same length, so levels are kept apart rather than padded together (a forward
pass per level wastes no compute on padding). Position ``sep + j`` predicts answer token
``j``; only those positions are scored, so loss and accuracy count the answer tokens only.

Split rule, per level, with U distinct problems:
  n_train = min(train_size, floor(train_fraction * U)),  n_diag = min(diag_size, U - n_train).
The diagnostic set is drawn first, so it depends on (task, level, seed, diag_size) only, not
on the training-set size. When the two sets cover at least half the universe, the universe
is enumerated and permuted (exact fractions, e.g. MOD's 40% of the p^2 table); otherwise
problems are drawn from the level's distribution until enough are distinct.

A level whose sampler is not uniform (CMP draws the length of the shared prefix uniformly)
declares its strata; an enumerated universe is then split by stratum (``_stratified``), so
both sets keep the sampler's stratum shares as far as the universe allows, and the
diagnostic set then depends on the training-set size too. CMP level 1 (n = 2) has only 100
equal pairs, so '=' cannot reach its sampler share of 1/3 there; ``TrialData.describe``
reports what each level got, and the chance rate of its diagnostic set follows from it.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from emergence_core.tasks.base import EOS, SEP, LevelSpec, TaskError, Vocabulary
from emergence_core.tasks.chance import Chance, answer_chance
from emergence_core.tasks.registry import get_task, trial_layout

__all__ = ["EncodedSet", "LevelData", "TrialData", "seed_key", "split_indices", "stream_indices",
           "trial_layout"]

IGNORE = -100
_MAX_DRAW_ROUNDS = 64


def seed_key(*parts: str | int) -> list[int]:
    """A numpy seed sequence key from strings and ints (crc32: stable across processes)."""
    return [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]


def split_indices(spec: LevelSpec, seed: int, *, train_size: int, train_fraction: float,
                  diag_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, diag) problem indices of one level; see the module docstring."""
    u = spec.universe
    n_train = min(train_size, int(train_fraction * u))
    n_diag = min(diag_size, u - n_train)
    if n_train < 1 or n_diag < 1:
        raise TaskError(f"{spec.task} level {spec.level} has only {u} distinct problems: too "
                        f"few for a training set (train_fraction={train_fraction}) and a "
                        f"diagnostic set")
    rng = np.random.default_rng(seed_key("split", spec.task, spec.level, seed))
    need = n_train + n_diag
    if 2 * need >= u and spec.strata is not None:
        return _stratified(spec, rng, n_train, n_diag)
    if 2 * need >= u:
        order = rng.permutation(u).astype(np.int64)
    else:
        order = np.empty(0, dtype=np.int64)
        for _ in range(_MAX_DRAW_ROUNDS):
            more = spec.draw(rng, max(1024, int(1.2 * (need - order.size))))
            drawn = np.concatenate([order, more])
            _, first = np.unique(drawn, return_index=True)
            order = drawn[np.sort(first)]
            if order.size >= need:
                break
        else:
            raise TaskError(f"{spec.task} level {spec.level}: could not draw {need} distinct "
                            f"problems; lower train_size or diag_size")
    return order[n_diag:need].copy(), order[:n_diag].copy()


def _quotas(sizes: np.ndarray, total: int) -> np.ndarray:
    """Problems to take per stratum: equal shares of ``total``, capped at each stratum's
    size, the excess of full strata handed to the others (water-filling)."""
    take = np.zeros(sizes.size, dtype=np.int64)
    left, open_ = total, sizes > 0
    while left > 0 and open_.any():
        share = max(1, left // int(open_.sum()))
        for s in np.flatnonzero(open_):
            add = min(share, int(sizes[s] - take[s]), left)
            take[s] += add
            left -= add
            if take[s] == sizes[s]:
                open_[s] = False
            if left == 0:
                break
    return take


def _stratified(spec: LevelSpec, rng: np.random.Generator, n_train: int,
                n_diag: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, diag) of an enumerated universe with the sampler's (equal) stratum shares.

    Each stratum contributes ``_quotas`` problems, split between the two sets in the ratio
    n_diag : n_train (largest remainders), so both sets have the same composition.
    """
    assert spec.strata is not None
    universe = np.arange(spec.universe, dtype=np.int64)
    stratum, n_strata = spec.strata(spec.params, universe)
    members = [rng.permutation(universe[stratum == s]) for s in range(n_strata)]
    take = _quotas(np.array([m.size for m in members]), n_train + n_diag)
    exact = take * n_diag / (n_train + n_diag)
    diag_k = np.floor(exact).astype(np.int64)
    extra = n_diag - int(diag_k.sum())
    diag_k[np.argsort(-(exact - diag_k), kind="stable")[:extra]] += 1
    diag = np.concatenate([m[:d] for m, d in zip(members, diag_k, strict=True)])
    train = np.concatenate([m[d:t] for m, d, t in zip(members, diag_k, take, strict=True)])
    return rng.permutation(train), rng.permutation(diag)


def stream_indices(n: int, start: int, count: int, key: Sequence[int],
                   cache: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """Positions ``start .. start+count`` of an endless stream of permutations of ``range(n)``.

    Epoch ``e`` of the stream is a permutation seeded by ``(*key, e)``: the batch of any step is
    a pure function of the step, so resuming needs no data-loader state beyond the step.
    """
    out = []
    pos = start
    while count > 0:
        epoch, offset = divmod(pos, n)
        perm = cache.get(epoch) if cache is not None else None
        if perm is None:
            perm = np.random.default_rng([*key, epoch]).permutation(n)
            if cache is not None:
                cache.clear()  # keep one epoch: the stream only moves forward
                cache[epoch] = perm
        take = min(count, n - offset)
        out.append(perm[offset:offset + take])
        pos += take
        count -= take
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class EncodedSet:
    """Token tensors for a set of samples of one level (one sequence shape).

    ``tokens[:, :-1]`` is all a forward pass needs: the final EOS is never scored or read.
    """

    tokens: torch.Tensor  # [n, T] int64
    targets: torch.Tensor  # [n, A] int64 answer tokens
    positions: torch.Tensor  # [n, A] int64, the position that predicts each target
    level: torch.Tensor  # [n] int64, 1..3

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def inputs(self) -> torch.Tensor:
        """The model's input: every token but the final EOS."""
        return self.tokens[:, :-1]

    def select(self, ids: torch.Tensor | np.ndarray) -> EncodedSet:
        ids = torch.as_tensor(ids, device=self.tokens.device)
        return EncodedSet(self.tokens[ids], self.targets[ids], self.positions[ids],
                          self.level[ids])

    def to(self, device: torch.device | str) -> EncodedSet:
        return EncodedSet(*(t.to(device) for t in (self.tokens, self.targets, self.positions,
                                                    self.level)))

    @staticmethod
    def cat(sets: Sequence[EncodedSet]) -> EncodedSet:
        return EncodedSet(*(torch.cat([getattr(s, f) for s in sets])
                            for f in ("tokens", "targets", "positions", "level")))


@dataclass(frozen=True)
class LevelData:
    spec: LevelSpec
    train_idx: np.ndarray
    diag_idx: np.ndarray


class TrialData:
    """Everything a trial needs from its task: vocabulary, splits and encoded tensors."""

    def __init__(self, task: str, levels: Sequence[int], seed: int, *, train_size: int,
                 train_fraction: float | None = None, diag_size: int = 1000,
                 level_params: Mapping[int, Mapping[str, Any]] | None = None) -> None:
        tdef = get_task(task)
        self.task = tdef.name
        self.seed = seed
        self.diag_size = diag_size  # asked for; a small universe can give fewer
        self.specs, self.vocab = trial_layout(task, levels, level_params)
        frac = tdef.train_fraction if train_fraction is None else train_fraction
        self.levels = [
            LevelData(s, *split_indices(s, seed, train_size=train_size, train_fraction=frac,
                                        diag_size=diag_size))
            for s in self.specs
        ]
        self.seq_len = max(s.seq_len for s in self.specs)
        self.answer_len = max(s.answer_len for s in self.specs)

    def encode(self, spec: LevelSpec, idx: np.ndarray) -> EncodedSet:
        """Token tensors [n, spec.seq_len] of problems ``idx`` of one level."""
        prompt, answer = spec.problems(idx)
        n, off = len(idx), self.vocab.offset
        tokens = np.empty((n, spec.seq_len), dtype=np.int64)
        tokens[:, 0] = Vocabulary.level_token(spec.level)
        tokens[:, 1:spec.sep_pos] = prompt + off
        tokens[:, spec.sep_pos] = SEP
        tokens[:, spec.sep_pos + 1:spec.sep_pos + 1 + spec.answer_len] = answer + off
        tokens[:, -1] = EOS
        positions = np.broadcast_to(spec.sep_pos + np.arange(spec.answer_len),
                                    (n, spec.answer_len)).copy()
        return EncodedSet(torch.from_numpy(tokens), torch.from_numpy(answer + off),
                          torch.from_numpy(positions), torch.full((n,), spec.level))

    @cached_property
    def train(self) -> list[EncodedSet]:
        """Per level, the encoded training set (order: ``self.levels``)."""
        return [self.encode(ld.spec, ld.train_idx) for ld in self.levels]

    @cached_property
    def diag(self) -> list[EncodedSet]:
        """Per level, the encoded diagnostic set."""
        return [self.encode(ld.spec, ld.diag_idx) for ld in self.levels]

    @cached_property
    def chance(self) -> dict[int, Chance]:
        """Per level, the chance baselines of its diagnostic set (``tasks.chance``)."""
        return {ld.spec.level: answer_chance(ld.spec.problems(ld.diag_idx)[1])
                for ld in self.levels}

    def short_levels(self) -> dict[int, int]:
        """Levels whose diagnostic set is smaller than asked (universe too small): size."""
        return {ld.spec.level: len(ld.diag_idx) for ld in self.levels
                if len(ld.diag_idx) < self.diag_size}

    def describe(self) -> list[dict[str, Any]]:
        return [{"level": ld.spec.level, **ld.spec.params, "universe": ld.spec.universe,
                 "train": len(ld.train_idx), "diag": len(ld.diag_idx),
                 "diag_asked": self.diag_size,
                 "chance": round(self.chance[ld.spec.level].accuracy, 4)}
                for ld in self.levels]
