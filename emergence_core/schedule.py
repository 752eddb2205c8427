"""Schedules: the probe steps of a run and its learning rate, as pure functions of the step."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["lr_at", "probe_schedule"]


def probe_schedule(steps: int, n_probes: int = 200, *, log_fraction: float = 0.5,
                   log_until: float = 0.1) -> np.ndarray:
    """Sorted probe steps in [0, steps]: step 0, log-spaced early, then linear, then ``steps``.

    About ``log_fraction`` of the probes are log-spaced over the first ``log_until`` of
    training (collapse happens early, and emergence can be sudden); the rest are evenly
    spaced over the remainder. Duplicates from rounding are topped up, so the result has
    exactly ``min(n_probes, steps) + 1`` distinct steps (step 0 included) whenever the run has
    that many steps.
    """
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    if n_probes < 1:
        raise ValueError(f"n_probes must be positive, got {n_probes}")
    return np.array(_schedule(steps, n_probes, log_fraction, log_until), dtype=np.int64)


@lru_cache(maxsize=4096)
def _schedule(steps: int, n_probes: int, log_fraction: float, log_until: float
              ) -> tuple[int, ...]:
    """``probe_schedule``'s steps, computed once per setting: the rounding search costs
    about 10 ms, and a sweep's trials share their settings across seeds."""
    if n_probes >= steps:
        return tuple(range(steps + 1))
    split = max(1, round(log_until * steps))
    n_log = min(split, round(n_probes * log_fraction))
    early = _distinct(lambda k: np.geomspace(1, split, k), n_log, set())
    late = _distinct(lambda k: np.linspace(split, steps, k + 1)[1:], n_probes - len(early), early)
    chosen = {0} | early | late | {steps}
    return tuple(sorted(int(x) for x in chosen))


def _distinct(points, need: int, taken: set[int]) -> set[int]:
    """At least ``need`` distinct rounded steps from ``points(k)``, growing k past collisions."""
    if need <= 0:
        return set()
    k = need
    while True:
        got = {round(x) for x in points(k)} - taken
        if len(got) >= need or k > 4 * need + 10_000:
            return got
        k += 1


def lr_at(step: int, *, lr: float, steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr``.

    ``step`` counts updates already made, so the first update uses ``lr_at(0)`` > 0.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = min_lr_ratio * lr
    return floor + 0.5 * (lr - floor) * (1.0 + math.cos(math.pi * progress))
