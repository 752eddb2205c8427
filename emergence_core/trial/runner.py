"""Run one trial to completion in a run folder, resumably, with exactly-once metric rows.

``run_trial`` drives a ``Trainer``: at each probe step it runs the cheap probes, watches for
emergence events and live alerts, saves the weights the expensive probes will need and hands
their jobs out (``decisions`` decides all three from the rows), and now and then *commits*
(rows up to the step, then the full state; see ``store``). Called again on the same folder
it resumes from the last commit; on a completed trial it returns at once.

Hooks let a caller (the CLI's progress bar, a Ray Tune trainable) watch and stop a run
without this module knowing about them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from emergence_core.config import TrainConfig
from emergence_core.emergence_rule import RULE, EmergenceRule
from emergence_core.environment import describe_environment
from emergence_core.folder_records import completion, failure_record
from emergence_core.metrics import EVENTS_SCHEMA, Measure, RowBuffer, TrialKey
from emergence_core.plan import TrialPlan, trial_plan
from emergence_core.run_folder import ProbeJob
from emergence_core.store import TrialStore
from emergence_core.trial.alerts import Alert, alerts_table
from emergence_core.trial.decisions import Decisions, EmergenceTracker
from emergence_core.trial.trainer import Divergence, Trainer

__all__ = [
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
    store = TrialStore(run_dir, cfg.trial_name())
    done = _finished(cfg, store, t0)  # raises TrialDiverged for a trial that diverged
    if done is not None:
        return done
    run = _Attempt.resume(cfg, store, sweep=sweep, hooks=hooks or TrialHooks(),
                          state_store=state_store or FileState(store), attempt=attempt,
                          stop_after=stop_after, device=device, rule=rule,
                          plan=plan or trial_plan(cfg))
    run.trainer.run(run.on_probe, run.hooks.should_stop)
    return run.finish(t0)


def _finished(cfg: TrainConfig, store: TrialStore, t0: float) -> TrialOutcome | None:
    """The outcome of a trial this config already completed; TrialDiverged for one it
    diverged in (running it again would diverge again); None for one still to run."""
    trial, folder = store.trial, store.folder
    done = completion(folder, trial)
    if done is not None and done["fingerprint"] == cfg.fingerprint():
        return TrialOutcome(trial, done["step"], True, done["attempt"], done["events"],
                            done["n_params"], time.perf_counter() - t0)
    failed = failure_record(folder, trial)
    if failed is not None and failed.get("kind") == "diverged" \
            and failed.get("fingerprint") == cfg.fingerprint():
        raise TrialDiverged(trial, failed["line"], failed.get("last_good"))
    return None


class _Attempt:
    """One attempt at a trial: resumed from its last commit (``resume``), driven by the
    trainer through ``on_probe``, then ended (``finish``). Its state between probe steps is
    these attributes: the last commit (step, time, probes since), the last probe step run and
    the divergence found, if any."""

    def __init__(self, cfg: TrainConfig, store: TrialStore, trainer: Trainer,
                 decisions: Decisions, key: TrialKey, attempt: int, *, hooks: TrialHooks,
                 state_store: StateStore, stop_after: int | None) -> None:
        self.cfg, self.store, self.trainer, self.decisions = cfg, store, trainer, decisions
        self.key, self.attempt = key, attempt
        self.hooks, self.state_store, self.stop_after = hooks, state_store, stop_after
        self.rows = RowBuffer(key, attempt)
        self.meta = {"fingerprint": cfg.fingerprint(), "trial": store.trial, "task": cfg.task,
                     "scale": cfg.scale, "seed": str(cfg.seed),
                     "vocab_size": str(trainer.data.vocab.size),
                     "n_positions": str(trainer.data.seq_len)}
        self.committed_step = trainer.step
        self.committed_at = time.monotonic()
        self.probes_since_commit = 0
        self.last_probe: int | None = None  # the last probe step whose rows were taken
        self.diverged: Divergence | None = None
        self.start_step = trainer.step
        self.t_train = time.perf_counter()

    @classmethod
    def resume(cls, cfg: TrainConfig, store: TrialStore, *, sweep: str, hooks: TrialHooks,
               state_store: StateStore, attempt: int | None, stop_after: int | None,
               device: str | None, rule: EmergenceRule, plan: TrialPlan) -> _Attempt:
        """From the last commit: the saved state loaded, the store healed and pruned to it,
        and the decisions of the committed rows replayed."""
        trainer = Trainer(cfg, device=device)
        state = state_store.load()
        for note in [*store.notes, *getattr(state_store, "notes", ())]:  # what it recovered from
            if hooks.on_note is not None:
                hooks.on_note(note)
            else:
                logging.getLogger("emerge").warning(note)
        if state is not None:
            trainer.load_state_dict(state)  # raises StateMismatch for a different config
        if attempt is None:
            attempt = state["attempt"] + 1 if state is not None else 0
        store.heal()
        store.prune_after(trainer.step if state is not None else -1)

        key = TrialKey(sweep=sweep, trial=store.trial, task=cfg.task, scale=cfg.scale,
                       seed=cfg.seed)
        chance = {lv: c.accuracy for lv, c in trainer.data.chance.items()}
        decisions = Decisions(cfg, plan, chance, rule)
        if state is not None:
            store.prune_alerts_after(trainer.step)
            decisions.replay(store.read())  # what it did then is on disk
        return cls(cfg, store, trainer, decisions, key, attempt, hooks=hooks,
                   state_store=state_store, stop_after=stop_after)

    def commit(self, step: int) -> None:
        """Rows up to ``step``, then the full state (``store``'s order)."""
        self.store.write_part(self.rows.take(step))
        self.state_store.save({**self.trainer.state_dict(), "attempt": self.attempt})
        self.committed_step, self.committed_at, self.probes_since_commit = \
            step, time.monotonic(), 0
        if self.hooks.on_commit is not None:
            self.hooks.on_commit(step, self.store)

    def on_probe(self, tr: Trainer) -> bool:
        """The trainer's hook: probe, decide, hand out, commit when due; True stops the loop
        (the model diverged, or ``stop_after`` is reached)."""
        step, index = tr.step, tr.next_probe - 1
        self.diverged = tr.divergence()  # before the probes: a broken model writes no rows
        if self.diverged is not None:
            return True
        store, decisions = self.store, self.decisions
        before = len(self.rows)
        summary = tr.probe(self.rows)
        self.last_probe = step
        final = index == len(tr.probe_steps) - 1
        if decisions.planner.keeps_weights(step):
            store.save_weights(tr.model, step, self.meta)
        new, alerts, pins = decisions.at_probe(index, step, self.rows.since(before))
        if alerts:
            store.write_alerts(alerts_table(self.key, self.attempt, alerts))
        if pins.jobs and self.hooks.on_jobs is not None:
            self.hooks.on_jobs(pins.jobs)
        for old in pins.drop_weights:
            store.weights_path(old).unlink(missing_ok=True)
        self.probes_since_commit += 1
        stop = self.stop_after is not None and step >= self.stop_after
        ck = self.cfg.checkpoint
        due = (final or stop or self.probes_since_commit >= ck.every_probes
               or time.monotonic() - self.committed_at >= ck.interval_s)
        if due:
            self.commit(step)
        if self.hooks.on_probe is not None:
            self.hooks.on_probe(ProbeReport(store.trial, step, self.cfg.steps,
                                            summary.train_loss, summary.accuracy,
                                            dict(decisions.tracker.events), new, due,
                                            tuple(alerts), len(decisions.detector.fired)))
        return stop

    def finish(self, t0: float) -> TrialOutcome:
        """After the loop: record a divergence (and raise), or commit what is left, and mark
        a finished trial complete."""
        if self.diverged is not None:
            raise self._record_divergence(self.diverged)
        cfg, store, trainer = self.cfg, self.store, self.trainer
        if trainer.step != self.committed_step or len(self.rows):
            self.commit(trainer.step)  # stopped between probes: keep what was done
        train_wall = time.perf_counter() - self.t_train
        tracker = self.decisions.tracker
        events = {lv: tracker.events.get(lv) for lv in cfg.levels}
        if trainer.done:
            store.write_events(_events_table(self.key, cfg, tracker))
            store.compact()
            store.folder.mark_complete(store.trial, {
                "fingerprint": cfg.fingerprint(), "step": trainer.step,
                "attempt": self.attempt, "n_params": trainer.n_params, "events": events,
                "environment": describe_environment(trainer.device)})
        return TrialOutcome(store.trial, trainer.step, trainer.done, self.attempt, events,
                            trainer.n_params, time.perf_counter() - t0, train_wall,
                            trainer.step - self.start_step)

    def _record_divergence(self, div: Divergence) -> TrialDiverged:
        """Keep the rows of the good probes, but never save the broken state over the good
        one; the run folder records why. Returns the error to raise."""
        store = self.store
        store.write_part(self.rows.take())
        last_good = self.last_probe if self.last_probe is not None else (
            None if not store.parts() else store.parts()[-1][1])
        line = div.line()
        store.folder.record_failure(store.trial, f"{line}; rows up to step {last_good} are kept",
                                    kind="diverged", line=line, step=div.step,
                                    last_good=last_good, fingerprint=self.cfg.fingerprint())
        return TrialDiverged(store.trial, line, last_good)
