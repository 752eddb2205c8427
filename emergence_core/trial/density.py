"""Adaptive density: where the expensive measures run, decided while the trial runs.

Uniform sampling spends most of a trial's expensive budget where nothing happens, and leaves
an event ten probe intervals from the nearest Hessian. With ``probes.density`` a trial runs
its dense measures on a coarse uniform *backbone* (each measure's ``every``) and spends the
rest of a fixed *budget* around its *triggers*: live alerts (``emergence_core.trial.alerts``) and
confirmed emergence events.

- The weights of the last ``window`` probe steps are always on disk (a rolling window), so a
  trigger can reach back: an event is confirmed ``persistence`` probe steps after its onset,
  and an alert a probe step or two after its estimated onset.
- A trigger with onset at probe index ``t`` *pins* the probe steps ``t - around`` to
  ``t + around``: nearest to ``t`` first, skipping steps that already have jobs, while the
  budget lasts. Alerts may spend at most ``alert_share`` of the budget beyond the backbone,
  so that however many alerts fire early, the events still find budget left; each trigger
  may spend at most a fair share, what is left (of the alerts' share, for an alert) divided
  by the levels that may still emerge, so the first level does not take what the last
  one needs. Pinned steps
  in the past get their jobs at once (their weights are in the window); pinned steps ahead
  get them when the trial reaches them.
- A step that leaves the window unpinned, outside the backbone and the uniformly kept
  weights, has its weights deleted. Disk per trial is therefore bounded by ``window + 1``
  weights files plus those of the jobs (at most the budget, fewer once the pool retires
  them with ``keep_weights: false``).

Every decision is a function of the trial's own committed rows, so a resumed or retried trial
replays them and decides the same; the queue and the metric parts keep each job computed
exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emergence_core.plan import TrialPlan
from emergence_core.run_folder import ProbeJob

__all__ = ["DensePlanner", "Pins"]


@dataclass
class Pins:
    """What a probe step asks of the trial: jobs to enqueue now, weights to drop."""

    jobs: list[ProbeJob] = field(default_factory=list)
    drop_weights: list[int] = field(default_factory=list)


class DensePlanner:
    """The decisions of one trial's adaptive density (see the module docstring)."""

    def __init__(self, plan: TrialPlan) -> None:
        self.plan = plan
        self.density = plan.density
        self.steps = plan.probe_steps
        self.index = {s: i for i, s in enumerate(self.steps)}
        self.job_steps = {j.step for j in plan.jobs}
        d = self.density
        dense = set(d.measures) if d else set()
        backbone = {j.step for j in plan.jobs if j.measure in dense}
        self.left = (d.budget - len(backbone)) if d else 0
        self.alert_left = int(d.alert_share * self.left) if d else 0
        self.pinned: set[int] = set()  # probe indices given dense jobs beyond the backbone
        self.ahead: set[int] = set()  # pinned indices the trial has not reached yet
        self.unreachable = 0  # pinned steps whose weights had left the window (0 by design)

    @property
    def enabled(self) -> bool:
        return self.density is not None

    @property
    def spent(self) -> int:
        return len(self.pinned)

    def keeps_weights(self, step: int) -> bool:
        """Whether the trial saves the weights of ``step`` (every probe step, with density)."""
        return self.enabled or self.plan.keeps_weights(step)

    def _dense_jobs(self, index: int) -> list[ProbeJob]:
        return [ProbeJob(self.plan.trial, self.steps[index], m) for m in self.density.measures]

    def at_probe(self, index: int, onsets: list[tuple[str, int]], pending_events: int = 1
                 ) -> Pins:
        """Probe index ``index`` is measured and its weights saved; ``onsets``: (trigger,
        onset step) of the triggers that fired at it: an alert's kind (``precursor``,
        ``approach``) or ``event``;
        ``pending_events``: the events still possible, those firing now included (the levels
        without an event). Returns the jobs and the deletions due."""
        step = self.steps[index]
        out = Pins(list(self.plan.jobs_at(step)))
        if not self.enabled:
            return out
        if index in self.ahead:
            self.ahead.discard(index)
            out.jobs += self._dense_jobs(index)
        for trigger, onset in onsets:
            alert = trigger in ("precursor", "approach")
            if trigger not in self.density.triggers and not (
                    alert and "alert" in self.density.triggers):
                continue
            # fair shares: the first trigger does not take what the later levels need
            if alert:
                quota = max(1, self.alert_left // max(1, pending_events))
            else:
                quota = max(1, self.left // max(1, pending_events))
                pending_events -= 1
            for j in self._pin(index, onset, alert=alert, quota=quota):
                out.jobs += self._dense_jobs(j)
        gone = index - self.density.window - 1
        if gone >= 0 and gone not in self.pinned and self.steps[gone] not in self.job_steps \
                and not self.plan.keeps_weights(self.steps[gone]):
            out.drop_weights.append(self.steps[gone])
        return out

    def _pin(self, index: int, onset: int, alert: bool, quota: int | None = None
             ) -> list[int]:
        """Pin the window around ``onset``, at most ``quota`` new steps; the pinned indices
        at or before ``index``. An alert spends only from its share of the budget."""
        d = self.density
        t = self._index_at(onset)
        last = len(self.steps) - 1
        order = sorted(range(max(0, t - d.around), min(last, t + d.around) + 1),
                       key=lambda j: (abs(j - t), j))
        now = []
        for j in order:
            if self.left <= 0 or (alert and self.alert_left <= 0) or quota == 0:
                break
            if j in self.pinned or self.steps[j] in self.job_steps:
                continue
            if j < index - d.window and not self.plan.keeps_weights(self.steps[j]):
                self.unreachable += 1
                continue
            self.left -= 1
            self.alert_left -= alert
            quota = None if quota is None else quota - 1
            self.pinned.add(j)
            if j <= index:
                now.append(j)
            else:
                self.ahead.add(j)
        return now

    def _index_at(self, step: int) -> int:
        """The probe index of ``step``, or of the last probe step before it."""
        if step in self.index:
            return self.index[step]
        return max((i for s, i in self.index.items() if s <= step), default=0)
