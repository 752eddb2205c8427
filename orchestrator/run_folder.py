"""What a sweep's run folder says, read without Ray: launches, trial states, probes.

The run folder (DESIGN.md) records what was launched: ``spec.yaml`` (the sweep file as
launched) and ``sweep.json`` (its absolute location, the tracking URI, and the *launches*:
one Tune experiment per launch under ``tune/``). A sweep file that changed since launch is
refused unless the change only adds trials; those become a new launch, since Tune cannot
extend the grid of an experiment it restores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from emergence_core.config import estimate
from emergence_core.store import TrialStore, atomic_path
from orchestrator.errors import UsageError
from orchestrator.spec import SweepSpec, TrialPlan, parse_spec

__all__ = ["RunFolder", "added_trials", "dry_run_table", "probe_progress", "run_dir_of",
           "status_table", "trial_state"]


class RunFolder:
    """What the run folder says was launched."""

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        self.spec_path = self.path / "spec.yaml"
        self.state_path = self.path / "sweep.json"

    def exists(self) -> bool:
        return self.state_path.exists()

    def state(self) -> dict[str, Any]:
        if not self.exists():
            raise UsageError(f"{self.path} is not a sweep's run folder (no sweep.json); "
                             "start one with `emerge sweep SPEC`")
        return json.loads(self.state_path.read_text())

    def frozen_spec(self) -> SweepSpec:
        return parse_spec(yaml.safe_load(self.spec_path.read_text()), str(self.spec_path))

    def write(self, spec_text: str, tracking_uri: str, launches: list[dict[str, Any]]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.spec_path) as tmp:
            tmp.write_text(spec_text)
        with atomic_path(self.state_path) as tmp:
            tmp.write_text(json.dumps({"run_dir": str(self.path), "tracking_uri": tracking_uri,
                                       "launches": launches}, indent=1))


def run_dir_of(spec: SweepSpec) -> Path:
    return Path(spec.run_dir or Path("runs") / spec.name).absolute()


def added_trials(old: SweepSpec, new: SweepSpec) -> list[TrialPlan]:
    """The trials ``new`` adds to ``old``; UsageError if it changes anything else."""
    problems = []
    for key in ("name", "emergence", "retries", "max_concurrent_trials", "tracking_uri",
                "probes"):
        if getattr(old, key) != getattr(new, key):
            problems.append(f"{key} changed from {getattr(old, key)!r} to {getattr(new, key)!r}")
    new_plans = {p.name: p for p in new.trials()}
    for p in old.trials():
        q = new_plans.get(p.name)
        if q is None:
            problems.append(f"trial {p.name} was removed")
        elif q.config.fingerprint() != p.config.fingerprint():
            problems.append(f"trial {p.name}: its training settings changed")
        elif q.resources != p.resources:
            problems.append(f"trial {p.name}: its resources changed")
    if problems:
        raise UsageError(*(f"the sweep file changed since launch: {p}; only adding trials "
                           "(tasks, scales, seeds) is allowed; use a new name or run_dir for "
                           "other changes" for p in problems))
    old_names = {p.name for p in old.trials()}
    return [p for n, p in new_plans.items() if n not in old_names]


# -- dry run and status ---------------------------------------------------------------------

def dry_run_table(spec: SweepSpec, plans: list[TrialPlan]) -> Table:
    t = Table(title=f"sweep {spec.name}: {len(plans)} trials (dry run: nothing started)")
    for col in ("trial", "params", "steps", "CPUs", "GPUs", "est. PFLOP"):
        t.add_column(col, justify="left" if col == "trial" else "right")
    total = 0.0
    for p in plans:
        e = estimate(p.config)
        total += e.total_flops
        t.add_row(p.name, f"{e.params / 1e6:.2f}M", str(p.config.steps), f"{p.resources.cpus:g}",
                  f"{p.resources.gpus:g}", f"{e.total_flops / 1e15:.3f}")
    t.caption = (f"total {total / 1e15:.2f} PFLOP (training 6N per token, probes 2N per "
                 f"diagnostic token); run folder {run_dir_of(spec)}")
    return t


def trial_state(run_dir: Path, name: str) -> tuple[str, int | None, dict[int, int | None]]:
    """(state, last committed step, events) of a trial, from the run folder alone."""
    store = TrialStore(run_dir, name)
    marker = store.checkpoint_dir / "COMPLETE.json"
    if marker.exists():
        done = json.loads(marker.read_text())
        return "done", done["step"], {int(k): v for k, v in done["events"].items()}
    failure = run_dir / "status" / f"{name}.json"
    parts = store.parts()
    step = parts[-1][1] if parts else None
    if failure.exists():
        return "failed", step, {}
    return ("incomplete" if parts else "pending"), step, {}


def status_table(run_dir: Path) -> tuple[Table, dict[str, int]]:
    folder = RunFolder(run_dir)
    folder.state()
    spec = folder.frozen_spec()
    from orchestrator.probe_pool import due_jobs
    from orchestrator.probe_queue import ProbeQueue

    t = Table(title=f"sweep {spec.name} in {folder.path}")
    cols = ["trial", "state", "step", "events"] + (["probes"] if spec.probes.measures else [])
    for col in cols:
        t.add_column(col, justify="right" if col in ("step", "probes") else "left")
    counts: dict[str, int] = {}
    done_jobs = ProbeQueue(folder.path).done_jobs() if spec.probes.measures else set()
    for p in spec.trials():
        state, step, events = trial_state(folder.path, p.name)
        counts[state] = counts.get(state, 0) + 1
        ev = " ".join(f"L{lv}@{'-' if s is None else s}" for lv, s in sorted(events.items()))
        row = [p.name, state, "-" if step is None else f"{step}/{p.config.steps}", ev]
        if spec.probes.measures:
            due = due_jobs(p.name, p.config, spec.probes)
            row.append(f"{sum(j in done_jobs for j in due)}/{len(due)}")
        t.add_row(*row)
    p_done, p_due, p_failed = probe_progress(folder.path, spec)
    t.caption = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + (
        f"; expensive probes {p_done}/{p_due} done, {len(p_failed)} failed" if p_due else "")
    return t, counts


# -- running --------------------------------------------------------------------------------

def probe_progress(folder: Path, spec: SweepSpec) -> tuple[int, int, list[str]]:
    """(done, due, failed job names) of the expensive probes, from the run folder."""
    from orchestrator.probe_pool import due_jobs
    from orchestrator.probe_queue import ProbeQueue

    if not spec.probes.measures:
        return 0, 0, []
    queue = ProbeQueue(folder)
    due = {j for p in spec.trials() for j in due_jobs(p.name, p.config, spec.probes)}
    done = queue.done_jobs() & due
    failed = [f"{j.trial} {j.measure} at step {j.step}" for j in queue.failures() if j in due]
    return len(done), len(due), failed
