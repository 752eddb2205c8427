"""Emergence events (docs/methods.md §4).

The emergence event of a series is the first probe step at which the value reaches
``threshold`` and stays at or above it for the following ``persistence`` probe steps.
A crossing that the run ends before confirming is no event: the rule needs the
``persistence`` later probes to exist, so a run cannot report an event it has not seen hold.

The accuracy rule reads chance-corrected accuracy (``chance_corrected``), so a model that
answers one constant answer, which scores the level's chance rate, sits at 0 and never
emerges however long it holds there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["RULE", "EmergenceRule", "chance_corrected", "emergence_index", "emergence_step"]


@dataclass(frozen=True)
class EmergenceRule:
    """The emergence rule: the first probe step from which the value stays at or above
    ``threshold`` for the ``persistence`` probe steps that follow (see the module docstring).

    Spelled here once: the sweep file's ``emergence:``, the trial's tracker and live alerts,
    the statistics stage and the MLflow description all take their defaults from ``RULE``.
    """

    threshold: float = 0.5
    persistence: int = 5

    def first_event(self, steps: np.ndarray, values: np.ndarray) -> int | None:
        """The step of the emergence event of ``values`` measured at ``steps``, or None."""
        return emergence_step(steps, values, self.threshold, self.persistence)

    @classmethod
    def from_mapping(cls, fields: Mapping[str, Any] | None) -> EmergenceRule:
        """The rule a sweep file's (already parsed) ``emergence:`` names; defaults for what
        it leaves out."""
        fields = fields if isinstance(fields, Mapping) else {}
        return cls(fields.get("threshold", RULE.threshold),
                   fields.get("persistence", RULE.persistence))


RULE = EmergenceRule()


def chance_corrected(accuracy: float, chance: float) -> float:
    """``(accuracy - chance) / (1 - chance)``: 0 at chance, 1 when every answer is right.

    NaN when chance is 1 (every answer is the same one: nothing to learn, no event).
    """
    return (accuracy - chance) / (1.0 - chance) if chance < 1.0 else float("nan")


def emergence_index(values: np.ndarray, threshold: float = RULE.threshold,
                    persistence: int = RULE.persistence) -> int | None:
    """Index of the first value that starts a run of ``persistence + 1`` values >= threshold."""
    if persistence < 0:
        raise ValueError(f"persistence must be >= 0, got {persistence}")
    v = np.asarray(values, dtype=np.float64)
    window = persistence + 1
    if v.size < window:
        return None
    ok = (v >= threshold).astype(np.int64)  # NaN compares False: a missing value breaks a run
    run = np.convolve(ok, np.ones(window, dtype=np.int64), mode="valid")  # run[i] = sum ok[i:i+w]
    hits = np.flatnonzero(run == window)
    return int(hits[0]) if hits.size else None


def emergence_step(steps: np.ndarray, values: np.ndarray, threshold: float = RULE.threshold,
                   persistence: int = RULE.persistence) -> int | None:
    """The step of the emergence event of ``values`` measured at ``steps`` (sorted), or None."""
    steps = np.asarray(steps)
    if steps.shape != np.shape(values):
        raise ValueError(f"steps and values differ in shape: {steps.shape} vs {np.shape(values)}")
    if steps.size > 1 and np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be strictly increasing")
    i = emergence_index(values, threshold, persistence)
    return None if i is None else int(steps[i])
