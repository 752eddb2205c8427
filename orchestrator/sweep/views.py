"""What a sweep's run folder says, for people: the dry run, ``emerge status``, progress.

The run folder (``emergence_core.run_folder``) records what was launched: the sweep file as
launched and the *launches*, one Tune experiment each. A sweep file that changed since
launch is refused unless the change only adds trials; those become a new launch, since Tune
cannot extend the grid of an experiment it restores. Nothing here imports Ray.
"""

from __future__ import annotations

from dataclasses import astuple
from pathlib import Path

from rich.table import Table

from emergence_core.config import estimate
from emergence_core.run_folder import RunFolder
from orchestrator.common.errors import UsageError
from orchestrator.probes.queue import ProbeQueue
from orchestrator.sweep.spec import SweepSpec, Trial, load_spec

__all__ = ["added_trials", "dry_run_table", "frozen_spec", "probe_progress", "run_folder_of",
           "status_table"]


def run_folder_of(spec: SweepSpec) -> RunFolder:
    return RunFolder(spec.run_dir or Path("runs") / spec.name)


def frozen_spec(folder: RunFolder) -> SweepSpec:
    """The sweep as launched (its plugins applied in this process)."""
    return load_spec(folder.spec_path)


def added_trials(old: SweepSpec, new: SweepSpec) -> list[Trial]:
    """The trials ``new`` adds to ``old``; UsageError if it changes anything else."""
    problems = []
    for key in ("name", "emergence", "retries", "max_concurrent_trials", "tracking_uri",
                "probes", "plugins", "define_scales"):
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

def dry_run_table(spec: SweepSpec, plans: list[Trial]) -> Table:
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
                 f"diagnostic token); run folder {run_folder_of(spec).path}")
    return t


def status_table(run_dir: Path) -> tuple[Table, dict[str, int]]:
    folder = RunFolder(run_dir)
    folder.sweep_state()
    spec = frozen_spec(folder)
    t = Table(title=f"sweep {spec.name} in {folder.path}")
    cols = ["trial", "state", "step", "events"] + (
        ["probes"] if spec.probes.measures else []) + ["why"]
    for col in cols:
        t.add_column(col, justify="right" if col in ("step", "probes") else "left")
    counts: dict[str, int] = {}
    done_jobs = ProbeQueue(folder).done_jobs() if spec.probes.measures else set()
    for p in spec.trials():
        state, step, events, error = astuple(folder.trial_state(p.name))
        counts[state] = counts.get(state, 0) + 1
        ev = " ".join(f"L{lv}@{'-' if s is None else s}" for lv, s in sorted(events.items()))
        row = [p.name, state, "-" if step is None else f"{step}/{p.config.steps}", ev]
        if spec.probes.measures:
            due = p.plan.jobs
            row.append(f"{sum(j in done_jobs for j in due)}/{len(due)}")
        row.append(error or "")
        t.add_row(*row)
    p_done, p_due, p_failed = probe_progress(folder, spec)
    t.caption = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + (
        f"; expensive probes {p_done}/{p_due} done, {len(p_failed)} failed" if p_due else "")
    return t, counts


# -- running --------------------------------------------------------------------------------

def probe_progress(folder: RunFolder, spec: SweepSpec) -> tuple[int, int, list[str]]:
    """(done, due, failed job names) of the expensive probes, from the run folder."""
    if not spec.probes.measures:
        return 0, 0, []
    queue = ProbeQueue(folder)
    due = {j for p in spec.trials() for j in p.plan.jobs}
    done = queue.done_jobs() & due
    failed = [f"{j.trial} {j.measure} at step {j.step}" for j in queue.failures() if j in due]
    return len(done), len(due), failed
