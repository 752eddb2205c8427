"""A trial's plan, fixed by its config: its probe steps, the steps whose weights are kept, and
the expensive jobs due.

It is computed once (``trial_plan``) from the trial's config and the sweep's expensive
measures. The trial saves weights and enqueues jobs from it, the pool and ``emerge status``
count against it, so the three can never disagree. The jobs are the run folder's
``ProbeJob``s (``emergence_core.run_folder`` names their files).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from emergence_core.run_folder import ProbeJob, RunFolderError
from emergence_core.schedule import probe_schedule

if TYPE_CHECKING:
    from emergence_core.config import TrainConfig

__all__ = ["Density", "TrialPlan", "due", "trial_plan"]


@dataclass(frozen=True)
class Density:
    """Adaptive density of the expensive measures (a sweep's ``probes.density``), resolved
    for one trial: ``emergence_core.trial.density`` makes the decisions."""

    measures: tuple[str, ...]  # the dense measures; they share one backbone
    around: int  # probe steps on each side of a trigger's onset
    window: int  # weights of this many recent probe steps are kept, ready to pin
    budget: int  # jobs per dense measure in this trial, its backbone included
    triggers: tuple[str, ...]  # "event", "alert" (both kinds), "precursor", "approach"
    alert_share: float = 0.5  # most of the budget beyond the backbone that alerts may spend


@dataclass(frozen=True)
class TrialPlan:
    """What a trial will do, fixed by its config: see the module docstring. With
    ``density``, ``jobs`` is the backbone and the trial adds jobs as it runs, within the
    budget; they are found in the queue."""

    trial: str
    probe_steps: tuple[int, ...]
    weight_steps: frozenset[int]
    jobs: tuple[ProbeJob, ...]
    density: Density | None = None

    @cached_property
    def _by_step(self) -> dict[int, tuple[ProbeJob, ...]]:
        out: dict[int, list[ProbeJob]] = {}
        for j in self.jobs:
            out.setdefault(j.step, []).append(j)
        return {s: tuple(js) for s, js in out.items()}

    def jobs_at(self, step: int) -> tuple[ProbeJob, ...]:
        return self._by_step.get(step, ())

    def keeps_weights(self, step: int) -> bool:
        return step in self.weight_steps

    @property
    def job_budget(self) -> int:
        """The most jobs the trial can run: its backbone plus what density may add."""
        if self.density is None:
            return len(self.jobs)
        dense = set(self.density.measures)
        return sum(j.measure not in dense for j in self.jobs) \
            + self.density.budget * len(dense)


def due(index: int, last: int, every: int) -> bool:
    """The rule for 'every k-th probe step, and the last'."""
    return index % every == 0 or index == last


def trial_plan(cfg: TrainConfig, measures: Mapping[str, int] | None = None,
               density: Mapping[str, Any] | None = None) -> TrialPlan:
    """The plan of ``cfg`` with expensive ``measures`` (name -> every k-th probe step).

    ``density`` (``measures``, ``around``, ``window``, ``budget_every``, ``triggers``,
    ``alert_share``):
    the dense measures get their ``every`` as a backbone and a budget of as many jobs as
    uniform sampling at every ``budget_every``-th probe step would run.
    """
    name = cfg.trial_name()
    p = cfg.probe
    steps = tuple(probe_schedule(cfg.steps, p.n_probes, log_fraction=p.log_fraction,
                                 log_until=p.log_until).tolist())
    last = len(steps) - 1
    k = cfg.checkpoint.weights_every
    weights = frozenset(s for i, s in enumerate(steps) if k is not None and due(i, last, k))
    jobs = tuple(ProbeJob(name, s, m) for m, every in (measures or {}).items()
                 for i, s in enumerate(steps) if due(i, last, every))
    plan_density = None
    if density is not None and (measures or {}):
        dense = tuple(m for m in measures or {} if m in density["measures"])
        budget = sum(due(i, last, density["budget_every"]) for i in range(len(steps)))
        backbone = {j.step for j in jobs if j.measure in dense}
        plan_density = Density(dense, density["around"], density["window"],
                               max(budget, len(backbone)), tuple(density["triggers"]),
                               density.get("alert_share", 0.5))
        weights |= backbone
    missing = sorted({j.step for j in jobs} - weights)
    if missing:
        raise RunFolderError(f"trial {name}: expensive jobs are due at steps without weights "
                             f"(first: {missing[0]}); make the measures' 'every' a multiple of "
                             f"train.checkpoint.weights_every ({k})")
    return TrialPlan(name, steps, weights, jobs, plan_density)
