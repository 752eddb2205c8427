"""Run one trial to completion in a run folder, resumably, with exactly-once metric rows.

``run_trial`` drives a ``Trainer``: at each probe step it runs the cheap probes, watches for
emergence events and live alerts (``alerts``), saves the weights the expensive probes will
need and hands their jobs out (``density`` decides where, when the sweep asks for adaptive
density), and now and then *commits* (rows up to the step, then the full state; see
``store``). Called again on the same
folder it resumes from the last commit; on a completed trial it returns at once.

Hooks let a caller (the CLI's progress bar, a Ray Tune trainable) watch and stop a run
without this module knowing about them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

from emergence_core.config import TrainConfig
from emergence_core.emergence_rule import RULE, EmergenceRule, chance_corrected
from emergence_core.metrics import EVENTS_SCHEMA, Measure, RowBuffer, TrialKey
from emergence_core.plan import TrialPlan, trial_plan
from emergence_core.run_folder import ProbeJob
from emergence_core.store import TrialStore
from emergence_core.trial.alerts import Alert, AlertDetector, alerts_table
from emergence_core.trial.density import DensePlanner, Pins
from emergence_core.trial.trainer import Trainer

__all__ = [
    "Decisions",
    "EmergenceTracker",
    "FileState",
    "ProbeReport",
    "StateStore",
    "TrialDiverged",
    "TrialHooks",
    "TrialOutcome",
    "run_trial",
]


@dataclass(frozen=True)
class ProbeReport:
    """What a progress hook sees after each probe step."""

    trial: str
    step: int
    total_steps: int
    train_loss: float | None
    accuracy: dict[int, float]
    events: dict[int, int]  # level -> emergence step, for events confirmed so far
    new_events: dict[int, int]  # the subset confirmed at this probe
    committed: bool
    new_alerts: tuple[Alert, ...] = ()  # live alerts raised at this probe
    n_alerts: int = 0  # raised so far in the run


class StateStore(Protocol):
    """Where a trial's full training state is kept between commits. A store may also have
    ``notes``: warnings about what ``load`` recovered from, shown like the run folder's."""

    def load(self) -> dict | None: ...

    def save(self, state: dict) -> None: ...


class FileState:
    """The default: ``checkpoints/<trial>/state.pt`` in the run folder."""

    def __init__(self, store: TrialStore) -> None:
        self.store = store

    def load(self) -> dict | None:
        return self.store.load_state()

    def save(self, state: dict) -> None:
        self.store.save_state(state)


class TrialDiverged(RuntimeError):
    """A trial's loss or weights became non-finite; its rows up to the last good probe step
    are kept, the run folder records why, and running it again would diverge again."""

    def __init__(self, trial: str, line: str, last_good: int | None) -> None:
        kept = "no rows" if last_good is None else f"rows up to step {last_good}"
        super().__init__(f"{trial} {line}; {kept} are kept; not retried (the same checkpoint "
                         "diverges again): lower the learning rate or change the config")
        self.trial = trial
        self.last_good = last_good


@dataclass
class TrialHooks:
    on_probe: Callable[[ProbeReport], None] | None = None
    on_commit: Callable[[int, TrialStore], None] | None = None  # rows and state are on disk
    # expensive jobs whose weights are on disk: the probe pool can start them
    on_jobs: Callable[[list[ProbeJob]], None] | None = None
    should_stop: Callable[[], bool] | None = None  # checked between updates
    on_note: Callable[[str], None] | None = None  # a warning (default: the "emerge" logger)


@dataclass(frozen=True)
class TrialOutcome:
    trial: str
    step: int
    completed: bool
    attempt: int
    events: dict[int, int | None]
    n_params: int
    wall_s: float
    train_wall_s: float = 0.0
    steps_run: int = 0


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


def _events_table(key: TrialKey, cfg: TrainConfig, tracker: EmergenceTracker) -> pa.Table:
    levels = list(cfg.levels)
    return pa.Table.from_pydict({
        "sweep": [key.sweep] * len(levels), "trial": [key.trial] * len(levels),
        "task": [key.task] * len(levels), "level": levels,
        "scale": [key.scale] * len(levels), "seed": [key.seed] * len(levels),
        "measure": [Measure.ACCURACY] * len(levels),
        "threshold": [tracker.rule.threshold] * len(levels),
        "persistence": [tracker.rule.persistence] * len(levels),
        "step": [tracker.events.get(lv) for lv in levels],
        "source": [key.source] * len(levels),
        "chance": [tracker.chance.get(lv) for lv in levels],
    }, schema=EVENTS_SCHEMA)


def run_trial(cfg: TrainConfig, run_dir: str | Path, *, sweep: str = "local",
              hooks: TrialHooks | None = None, state_store: StateStore | None = None,
              attempt: int | None = None,
              stop_after: int | None = None, device: str | None = None,
              rule: EmergenceRule = RULE,
              plan: TrialPlan | None = None) -> TrialOutcome:
    """Train ``cfg`` in ``run_dir`` from its last commit; see the module docstring.

    ``stop_after``: stop (and commit) at the first probe step at or after it (for tests and
    for splitting a run). ``attempt`` defaults to one more than the saved state's.
    ``state_store`` defaults to a state file in the run folder; a Ray Tune trial keeps it in
    Tune's checkpoints instead. ``plan`` (default: ``trial_plan(cfg)``) says at which probe
    steps the weights are kept for the expensive probes.
    """
    t0 = time.perf_counter()
    hooks = hooks or TrialHooks()
    trial = cfg.trial_name()
    store = TrialStore(run_dir, trial)
    folder = store.folder
    done = folder.completion(trial)
    if done is not None and done["fingerprint"] == cfg.fingerprint():
        return TrialOutcome(trial, done["step"], True, done["attempt"], done["events"],
                            done["n_params"], time.perf_counter() - t0)
    failed = folder.failure_record(trial)
    if failed is not None and failed.get("kind") == "diverged" \
            and failed.get("fingerprint") == cfg.fingerprint():
        raise TrialDiverged(trial, failed["line"], failed.get("last_good"))
    plan = plan or trial_plan(cfg)

    trainer = Trainer(cfg, device=device)
    state_store = state_store or FileState(store)
    state = state_store.load()
    for note in [*store.notes, *getattr(state_store, "notes", ())]:  # what it recovered from
        if hooks.on_note is not None:
            hooks.on_note(note)
        else:
            import logging

            logging.getLogger("emerge").warning(note)
    if state is not None:
        trainer.load_state_dict(state)  # raises StateMismatch for a different config
    attempt = (state["attempt"] + 1 if state is not None else 0) if attempt is None else attempt
    store.heal()
    store.prune_after(trainer.step if state is not None else -1)

    key = TrialKey(sweep=sweep, trial=trial, task=cfg.task, scale=cfg.scale, seed=cfg.seed)
    rows = RowBuffer(key, attempt)
    chance = {lv: c.accuracy for lv, c in trainer.data.chance.items()}
    decisions = Decisions(cfg, plan, chance, rule)
    tracker, detector = decisions.tracker, decisions.detector
    if state is not None:
        store.prune_alerts_after(trainer.step)
        decisions.replay(store.read())  # what it did then is on disk
    meta = {"fingerprint": cfg.fingerprint(), "trial": trial, "task": cfg.task,
            "scale": cfg.scale, "seed": str(cfg.seed), "vocab_size": str(trainer.data.vocab.size),
            "n_positions": str(trainer.data.seq_len)}
    ck = cfg.checkpoint
    last_commit = {"step": trainer.step, "time": time.monotonic(), "probes": 0}
    start_step = trainer.step
    t_train = time.perf_counter()

    def commit(step: int) -> None:
        store.write_part(rows.take(step))
        state_store.save({**trainer.state_dict(), "attempt": attempt})
        last_commit.update(step=step, time=time.monotonic(), probes=0)
        if hooks.on_commit is not None:
            hooks.on_commit(step, store)

    diverged: list = []
    last_probe: list[int] = []

    def on_probe(tr: Trainer) -> bool:
        step, index = tr.step, tr.next_probe - 1
        div = tr.divergence()  # before the probes: a broken model writes no rows
        if div is not None:
            diverged.append(div)
            return True
        before = len(rows)
        summary = tr.probe(rows)
        last_probe[:] = [step]
        acc = summary.accuracy
        final = index == len(tr.probe_steps) - 1
        if decisions.planner.keeps_weights(step):
            store.save_weights(tr.model, step, meta)
        new, alerts, pins = decisions.at_probe(index, step, rows.since(before))
        if alerts:
            store.write_alerts(alerts_table(key, attempt, alerts))
        if pins.jobs and hooks.on_jobs is not None:
            hooks.on_jobs(pins.jobs)
        for old in pins.drop_weights:
            store.weights_path(old).unlink(missing_ok=True)
        last_commit["probes"] += 1
        stop = stop_after is not None and step >= stop_after
        due = (final or stop or last_commit["probes"] >= ck.every_probes
               or time.monotonic() - last_commit["time"] >= ck.interval_s)
        if due:
            commit(step)
        if hooks.on_probe is not None:
            hooks.on_probe(ProbeReport(trial, step, cfg.steps, summary.train_loss, acc,
                                       dict(tracker.events), new, due, tuple(alerts),
                                       len(detector.fired)))
        return stop

    trainer.run(on_probe, hooks.should_stop)
    if diverged:
        # keep the rows of the good probes, but never save the broken state over the good one
        store.write_part(rows.take())
        last_good = last_probe[0] if last_probe else (
            None if not store.parts() else store.parts()[-1][1])
        line = diverged[0].line()
        folder.record_failure(trial, f"{line}; rows up to step {last_good} are kept",
                              kind="diverged", line=line, step=diverged[0].step,
                              last_good=last_good, fingerprint=cfg.fingerprint())
        raise TrialDiverged(trial, line, last_good)
    if trainer.step != last_commit["step"] or len(rows):
        commit(trainer.step)  # stopped between probes: keep what was done
    train_wall = time.perf_counter() - t_train
    events = {lv: tracker.events.get(lv) for lv in cfg.levels}
    if trainer.done:
        store.write_events(_events_table(key, cfg, tracker))
        store.compact()
        folder.mark_complete(trial, {"fingerprint": cfg.fingerprint(), "step": trainer.step,
                                     "attempt": attempt, "n_params": trainer.n_params,
                                     "events": events})
    return TrialOutcome(trial, trainer.step, trainer.done, attempt, events, trainer.n_params,
                        time.perf_counter() - t0, train_wall, trainer.step - start_step)
