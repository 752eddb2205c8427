"""What a sweep's run folder says, for people: the dry run, ``emerge status``, progress.

The run folder (``emergence_core.run_folder``) records what was launched: the sweep file as
launched and the *launches*, one Tune experiment each. A sweep file that changed since
launch is refused unless the change only adds trials; those become a new launch, since Tune
cannot extend the grid of an experiment it restores. Nothing here imports Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table

from emergence_core.config import estimate
from emergence_core.run_folder import RunFolder
from orchestrator.common.errors import UsageError
from orchestrator.probes.queue import ProbeQueue
from orchestrator.sweep.spec import SweepSpec, Trial, load_spec

__all__ = ["added_trials", "dry_run_table", "frozen_spec", "probe_progress", "run_folder_of",
           "status_data", "status_table"]


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

# Sustained FP32 training throughput measured at s4 on an H200 (BENCHMARKS.md, GPU trial):
# the basis of the dry run's GPU-hour estimate.
GPU_FLOPS = 27.7e12


def dry_run_table(spec: SweepSpec, plans: list[Trial]) -> Group:
    """The grid, trial by trial, then per scale, with the probe pool's work."""
    t = Table(title=f"sweep {spec.name}: {len(plans)} trials (dry run: nothing started)")
    for col in ("trial", "params", "steps", "CPUs", "GPUs", "est. PFLOP", "probe jobs"):
        t.add_column(col, justify="left" if col == "trial" else "right")
    by_scale: dict[str, list] = {}
    for p in plans:
        e = estimate(p.config)
        by_scale.setdefault(p.config.scale, []).append((p, e))
        t.add_row(p.name, f"{e.params / 1e6:.2f}M", str(p.config.steps), f"{p.resources.cpus:g}",
                  f"{p.resources.gpus:g}", f"{e.total_flops / 1e15:.3f}", str(p.plan.job_budget))
    roll = Table(title="per scale")
    for col in ("scale", "trials", "params", "est. PFLOP", "GPU-hours", "probe jobs"):
        roll.add_column(col, justify="left" if col == "scale" else "right")
    total = gpu_h = 0.0
    for scale, rows in by_scale.items():
        flops = sum(e.total_flops for _, e in rows)
        on_gpu = sum(e.total_flops for p, e in rows if p.resources.gpus > 0)
        total, gpu_h = total + flops, gpu_h + on_gpu / GPU_FLOPS / 3600
        params = sorted({e.params for _, e in rows})
        shown = f"{params[0] / 1e6:.2f}M" + (f"-{params[-1] / 1e6:.2f}M" if len(params) > 1
                                             else "")
        roll.add_row(scale, str(len(rows)), shown, f"{flops / 1e15:.2f}",
                     f"{on_gpu / GPU_FLOPS / 3600:.1f}" if on_gpu else "-",
                     str(sum(p.plan.job_budget for p, _ in rows)))
    n_jobs = sum(p.plan.job_budget for p in plans)
    pool = spec.probes
    every = ", ".join(f"{m} every {m_.every}" for m, m_ in pool.measures.items())
    d = pool.density
    dense = "" if d is None else (
        f"; adaptive density for {', '.join(d.measures or pool.measures)}: that backbone, "
        f"plus {d.around} probe steps each side of {' and '.join(d.triggers)} onsets, within a "
        f"budget of uniform every-{d.budget_every} sampling ({d.alert_share:.0%} of it for "
        f"alerts); {d.window} recent weights files kept per trial")
    probes = (f"probe pool: at most {n_jobs} expensive jobs ({every} probe steps{dense}) on "
              f"{pool.actors} actor(s) with {pool.resources.cpus:g} CPU, "
              f"{pool.resources.gpus:g} GPU each" if n_jobs else
              "probe pool: no expensive measures")
    roll.caption = (f"total {total / 1e15:.2f} PFLOP (training 6N per token, probes 2N per "
                    f"diagnostic token); GPU-hours of GPU trials at {GPU_FLOPS / 1e12:.1f} "
                    f"TFLOP/s (FP32 training at s4 on an H200, BENCHMARKS.md), expensive "
                    f"probes not included\n{probes}\nrun folder {run_folder_of(spec).path}")
    return Group(t, roll)


def status_data(run_dir: Path) -> dict[str, Any]:
    """Where a sweep stands, from its run folder alone (``emerge status --json``)."""
    folder = RunFolder(run_dir)
    folder.sweep_state()
    spec = frozen_spec(folder)
    queue = ProbeQueue(folder)
    done_jobs = queue.done_jobs() if spec.probes.measures else set()
    queued = _queued_by_trial(queue) if spec.probes.measures else {}
    alerts = _alert_counts(folder)
    trials = []
    for p in spec.trials():
        st = folder.trial_state(p.name)
        row: dict[str, Any] = {
            "trial": p.name, "state": st.state, "step": st.step,
            "total_steps": p.config.steps,
            "events": {str(lv): s for lv, s in sorted(st.events.items())}, "error": st.error,
            "alerts": alerts.get(p.name, {})}
        if spec.probes.measures:
            jobs = set(p.plan.jobs) | queued.get(p.name, set())
            row["probes_done"] = len(jobs & done_jobs)
            row["probes_due"] = len(jobs)  # so far: adaptive density adds jobs as it runs
            row["probes_budget"] = p.plan.job_budget
        trials.append(row)
    p_done, p_due, p_failed = probe_progress(folder, spec)
    counts: dict[str, int] = {}
    for row in trials:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return {"sweep": spec.name, "run_dir": str(folder.path), "counts": counts,
            "trials": trials,
            "probes": {"done": p_done, "due": p_due, "failed": p_failed}}


def status_table(run_dir: Path) -> tuple[Table, dict[str, int]]:
    data = status_data(run_dir)
    probes = data["probes"]["due"] > 0 or any("probes_due" in r for r in data["trials"])
    t = Table(title=f"sweep {data['sweep']} in {data['run_dir']}")
    cols = ["trial", "state", "step", "events", "alerts p/a"] + (["probes"] if probes else []) \
        + ["why"]
    for col in cols:
        t.add_column(col, justify="right" if col in ("step", "probes") else "left")
    for r in data["trials"]:
        ev = " ".join(f"L{lv}@{'-' if s is None else s}" for lv, s in r["events"].items())
        step = "-" if r["step"] is None else f"{r['step']}/{r['total_steps']}"
        al = (f"{r['alerts'].get('precursor', 0)}/{r['alerts'].get('approach', 0)}"
              if r["alerts"] else "-")
        row = [r["trial"], r["state"], step, ev, al]
        if probes:
            budget = r["probes_budget"]
            row.append(f"{r['probes_done']}/{r['probes_due']}"
                       + (f" (of {budget})" if budget != r["probes_due"] else ""))
        t.add_row(*row, r["error"] or "")
    p = data["probes"]
    t.caption = ", ".join(f"{v} {k}" for k, v in sorted(data["counts"].items())) + (
        f"; expensive probes {p['done']}/{p['due']} done, {len(p['failed'])} failed"
        if p["due"] else "") + "; alerts p/a: live precursor / approach alerts"
    return t, data["counts"]


# -- running --------------------------------------------------------------------------------

def probe_progress(folder: RunFolder, spec: SweepSpec) -> tuple[int, int, list[str]]:
    """(done, due, failed job names) of the expensive probes, from the run folder."""
    if not spec.probes.measures:
        return 0, 0, []
    queue = ProbeQueue(folder)
    queued = _queued_by_trial(queue)
    due = {j for p in spec.trials() for j in (*p.plan.jobs, *queued.get(p.name, ()))}
    done = queue.done_jobs() & due
    failed = [f"{j.trial} {j.measure} at step {j.step}" for j in queue.failures() if j in due]
    return len(done), len(due), failed


def _queued_by_trial(queue: ProbeQueue) -> dict[str, set]:
    out: dict[str, set] = {}
    for job in queue.queued():
        out.setdefault(job.trial, set()).add(job)
    return out


def _alert_counts(folder: RunFolder) -> dict[str, dict[str, int]]:
    """trial -> {alert kind: how many}, from ``alerts/``."""
    from emergence_core.store import read_alerts

    out: dict[str, dict[str, int]] = {}
    table = read_alerts(folder.path)
    for trial, kind in zip(table["trial"].to_pylist(), table["kind"].to_pylist(), strict=True):
        counts = out.setdefault(trial, {})
        counts[kind] = counts.get(kind, 0) + 1
    return out
