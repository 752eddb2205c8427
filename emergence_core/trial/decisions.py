"""What a trial decides at each probe step from its rows alone: emergence events
(``EmergenceTracker``, the docs/methods.md §4 rule), live alerts (``alerts.AlertDetector``)
and adaptive density (``density.DensePlanner``).

The same rows give the same decisions, whether fed live by ``runner`` or replayed from a
trial's committed rows (a resumed trial, the probe pool's tests, ``bench_density``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from emergence_core.config import TrainConfig
from emergence_core.emergence_rule import RULE, EmergenceRule, chance_corrected
from emergence_core.metrics import Measure
from emergence_core.plan import TrialPlan
from emergence_core.run_folder import ProbeJob
from emergence_core.trial.alerts import Alert, AlertDetector
from emergence_core.trial.density import DensePlanner, Pins

__all__ = ["Decisions", "EmergenceTracker", "committed_steps", "level_accuracy"]


@dataclass
class EmergenceTracker:
    """Accuracy history per level and the events confirmed in it (docs/methods.md §4 rule).

    The rule reads chance-corrected accuracy, ``(accuracy - chance) / (1 - chance)`` with
    ``chance[level]`` the level's best-constant-answer accuracy (``tasks.chance``); a level
    without a chance rate is read raw (chance 0). The same correction as the statistics
    stage's (``analysis.events``), so both find the same events.
    """

    rule: EmergenceRule = RULE
    chance: dict[int, float] = field(default_factory=dict)
    history: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)
    events: dict[int, int] = field(default_factory=dict)

    def update(self, step: int, accuracy: dict[int, float]) -> dict[int, int]:
        new = {}
        for level, value in accuracy.items():
            steps, values = self.history.setdefault(level, ([], []))
            steps.append(step)
            values.append(chance_corrected(value, self.chance.get(level, 0.0)))
            if level not in self.events:
                hit = self.rule.first_event(np.array(steps), np.array(values))
                if hit is not None:
                    self.events[level] = new[level] = hit
        return new



def committed_steps(table: pa.Table) -> Iterator[tuple[int, list]]:
    """A trial's committed rows step by step: (step, [(measure, layer, level, value)]), as
    ``RowBuffer.since`` gave them live, so a resumed trial can replay its decisions."""
    rows = table.sort_by("step")
    per_step: dict[int, list] = {}
    for s, m, layer, lv, v in zip(*(rows[c].to_pylist() for c in
                                     ("step", "measure", "layer", "level", "value")),
                                  strict=True):
        per_step.setdefault(s, []).append((m, layer, lv, v))
    yield from sorted(per_step.items())


def level_accuracy(rows: list) -> dict[int, float]:
    return {lv: v for m, _, lv, v in rows if m == Measure.ACCURACY and lv is not None}


class Decisions:
    """What a trial decides at each probe step from its rows alone: emergence events
    (``EmergenceTracker``), live alerts (``AlertDetector``) and adaptive density
    (``DensePlanner``). Fed live, or replayed from committed rows, it decides the same."""

    def __init__(self, cfg: TrainConfig, plan: TrialPlan, chance: dict[int, float],
                 rule: EmergenceRule) -> None:
        self.tracker = EmergenceTracker(rule, chance)
        self.detector = AlertDetector(cfg.alerts, total_steps=cfg.steps, threshold=rule.threshold,
                                      chance=chance)
        self.planner = DensePlanner(plan)
        self.levels = cfg.levels
        self.index_of = {s: i for i, s in enumerate(plan.probe_steps)}

    def at_probe(self, index: int, step: int, rows: list) -> tuple[dict, list[Alert], Pins]:
        """``rows``: the step's (measure, layer, level, value), as ``RowBuffer.since``."""
        new = self.tracker.update(step, level_accuracy(rows))
        alerts = self.detector.update(step, rows, self.tracker.events)
        onsets = [(a.kind, a.onset_step) for a in alerts] + [("event", e) for _, e in
                                                              sorted(new.items())]
        pending = len(self.levels) - len(self.tracker.events) + len(new)
        return new, alerts, self.planner.at_probe(index, onsets, pending)

    def replay(self, table: pa.Table) -> list[ProbeJob]:
        """Feed a trial's committed rows, step by step; the jobs it handed out."""
        jobs = []
        for step, rows in committed_steps(table):
            if step in self.index_of:
                jobs += self.at_probe(self.index_of[step], step, rows)[2].jobs
        return jobs

    @classmethod
    def of_rows(cls, cfg: TrainConfig, plan: TrialPlan, table: pa.Table,
                rule: EmergenceRule) -> Decisions:
        """Decisions for a finished trial's rows (its chance rates read from them)."""
        chance = {lv: v for m, _, lv, v in (r for _, rows in committed_steps(table)
                                            for r in rows) if m == Measure.CHANCE}
        return cls(cfg, plan, chance, rule)
