"""What a sweep's run folder says, for people: the dry run, ``emerge status``, progress.

The run folder (``emergence_core.run_folder``) records what was launched: the sweep file as
launched and the *launches*, one Tune experiment each. A sweep file that changed since
launch is refused unless the change only adds trials; those become a new launch, since Tune
cannot extend the grid of an experiment it restores. Nothing here imports Ray.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table

from emergence_core.calibrations import pilot_runs
from emergence_core.config import estimate
from emergence_core.folder_records import probe_actors, sweep_state, trial_state
from emergence_core.run_folder import RunFolder
from orchestrator.common.errors import UsageError
from orchestrator.probe_pool.queue import ProbeQueue
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
    new_trials = {p.name: p for p in new.trials()}
    for p in old.trials():
        q = new_trials.get(p.name)
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
    return [p for n, p in new_trials.items() if n not in old_names]


# -- dry run and status ---------------------------------------------------------------------

# Measured rates the dry run's estimates rest on (BENCHMARKS.md), stated as such:
# sustained FP32 training throughput at s4 on an H200 (the GPU trial section), the basis of
# the GPU-hours; and a whole MOD run at s0 on one CPU core, probes on (the trainer section),
# turned into a CPU FLOP rate through MOD s0's own estimate, the basis of CPU trial-hours.
GPU_FLOPS = 27.7e12
CPU_MOD_S0_STEPS_PER_S = 10.6
# Parquet (zstd) bytes per metric row, measured on the smoke sweep's run folder.
BYTES_PER_ROW = 25
# Trials listed one per row by the dry run; the per-scale table sums them all.
DRY_RUN_ROWS = 200


def _cpu_flops() -> float:
    from emergence_core.config import resolve_config

    e = estimate(resolve_config("MOD", "s0", 0, steps=1500, probe={"n_probes": 200}))
    return e.total_flops / (1500 / CPU_MOD_S0_STEPS_PER_S)


def _rows_per_probe(p: Trial) -> int:
    """Metric rows one probe step of the trial writes: behaviour per level and pooled,
    geometry per layer (embedding included), level (and pooled) and read position."""
    from emergence_core.scales import scale_shape

    cfg = p.config
    levels, layers = len(cfg.levels), scale_shape(cfg.scale).n_layer + 1
    per_layer = (3 if cfg.probe.linear_probe else 2) * len(cfg.probe.read_positions)
    return 4 * levels + 2 + 2 + layers * per_layer * (levels + (levels > 1))


def _weights_files(p: Trial) -> int:
    """The most weights files the trial holds at once (worst case: no job done yet)."""
    plan, n = p.plan, len(p.plan.probe_steps)
    if plan.density is None:
        return len(plan.weight_steps)
    backbone = {j.step for j in plan.jobs if j.measure in plan.density.measures}
    uniform = len(plan.weight_steps - backbone)  # train.checkpoint.weights_every's
    return min(n, plan.density.window + 1 + plan.density.budget + uniform)


def _kept_weights(p: Trial) -> int:
    """The most weights files the trial leaves when the pool keeps them (keep_weights): its
    plan's, and those adaptive density may add within its budget."""
    plan = p.plan
    extra = 0 if plan.density is None else plan.density.budget
    return min(len(plan.probe_steps), len(plan.weight_steps) + extra)


def _hours(p: Trial, e: Any, cpu_flops: float) -> float:
    """Wall hours of one trial from its FLOPs and the measured rates (module constants)."""
    if p.resources.gpus > 0:
        return e.total_flops / GPU_FLOPS / 3600
    return e.total_flops / (cpu_flops * max(1.0, p.resources.cpus)) / 3600


def _size(n: float) -> str:
    for unit, k in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n / 1e3:.0f} kB"


def dry_run_table(spec: SweepSpec, trials: list[Trial], capacity: Any = None) -> Group:
    """Per scale first (compute, trial-hours, GPU-hours, disk, the probe pool's work, and
    the time to finish on the cluster in view, ``capacity``), then the grid trial by trial:
    a large grid's rows would otherwise push the answer off the screen."""
    cpu_flops = _cpu_flops()
    shown = trials if len(trials) <= DRY_RUN_ROWS else trials[:DRY_RUN_ROWS]
    t = Table(title=f"sweep {spec.name}: {len(trials)} trials (dry run: nothing started)",
              caption=None if shown is trials else
              f"the first {DRY_RUN_ROWS} of {len(trials)} trials; the per-scale table "
              "covers them all")
    for col in ("trial", "params", "steps", "CPUs", "GPUs", "est. PFLOP", "hours", "probe jobs"):
        t.add_column(col, justify="left" if col == "trial" else "right")
    by_scale: dict[str, list] = {}
    estimates: dict[str, Any] = {}  # seeds of a (task, scale) share their shapes
    for i, p in enumerate(trials):
        key = p.config.model_dump_json(exclude={"seed", "data_seed"})
        e = estimates.get(key) or estimates.setdefault(key, estimate(p.config))
        by_scale.setdefault(p.config.scale, []).append((p, e))
        if i >= len(shown):
            continue
        t.add_row(p.name, f"{e.params / 1e6:.2f}M", str(p.config.steps), f"{p.resources.cpus:g}",
                  f"{p.resources.gpus:g}", f"{e.total_flops / 1e15:.3f}",
                  f"{_hours(p, e, cpu_flops):.2f}", str(p.plan.job_budget))
    roll = Table(title="per scale")
    for col in ("scale", "trials", "params", "est. PFLOP", "trial-hours", "GPU-hours",
                "weights (max)", "metrics", "probe jobs"):
        roll.add_column(col, justify="left" if col == "scale" else "right")
    total = gpu_h = disk = kept = 0.0
    kept_steps = probe_steps = 0
    every_step = 0.0
    cpu_load = gpu_load = longest = 0.0
    for scale, rows in by_scale.items():
        flops = sum(e.total_flops for _, e in rows)
        hours = [_hours(p, e, cpu_flops) for p, e in rows]
        on_gpu = sum(h for (p, _), h in zip(rows, hours, strict=True) if p.resources.gpus > 0)
        total, gpu_h = total + flops, gpu_h + on_gpu
        cpu_load += sum(h * p.resources.cpus for (p, _), h in zip(rows, hours, strict=True))
        gpu_load += sum(h * p.resources.gpus for (p, _), h in zip(rows, hours, strict=True))
        longest = max(longest, *hours)
        weights = sum(_weights_files(p) * 4 * e.params for p, e in rows)
        metrics = sum(len(p.plan.probe_steps) * _rows_per_probe(p) * BYTES_PER_ROW
                      for p, _ in rows)
        disk += weights + metrics
        if spec.probes.keep_weights:
            kept_steps += sum(_kept_weights(p) for p, _ in rows)
            kept += sum(_kept_weights(p) * 4 * e.params for p, e in rows)
        probe_steps += sum(len(p.plan.probe_steps) for p, _ in rows)
        every_step += sum(len(p.plan.probe_steps) * 4 * e.params for p, e in rows)
        params = sorted({e.params for _, e in rows})
        shown = f"{params[0] / 1e6:.2f}M" + (f"-{params[-1] / 1e6:.2f}M" if len(params) > 1
                                             else "")
        roll.add_row(scale, str(len(rows)), shown, f"{flops / 1e15:.2f}", f"{sum(hours):.1f}",
                     f"{on_gpu:.1f}" if on_gpu else "-", _size(weights), _size(metrics),
                     str(sum(p.plan.job_budget for p, _ in rows)))
    n_jobs = sum(p.plan.job_budget for p in trials)
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
    lines = [
        f"total {total / 1e15:.2f} PFLOP (training 6N per token, probes 2N per diagnostic "
        f"token); hours from measured rates: GPU trials at {GPU_FLOPS / 1e12:.1f} TFLOP/s "
        f"(FP32 training at s4 on an H200), CPU trials at {cpu_flops / 1e9:.1f} GFLOP/s per "
        f"core (a whole MOD s0 run, probes on: {CPU_MOD_S0_STEPS_PER_S} steps/s), both in "
        "BENCHMARKS.md; expensive probes not included",
        f"disk at most {_size(disk)}: weights files at their most (fp32) and metrics at "
        f"{BYTES_PER_ROW} bytes per row (Parquet, measured on the smoke sweep)",
        probes, _multiverse_line(kept, kept_steps, every_step, probe_steps,
                                         spec.probes.keep_weights)]
    if capacity is not None:
        lines.append(_finish_line(capacity, cpu_load, gpu_load, longest, spec))
    lines.append(f"run folder {run_folder_of(spec).path}")
    roll.caption = "\n".join(lines)
    return Group(roll, t)


def _multiverse_line(kept: float, kept_steps: int, every: float, probe_steps: int,
                     keep: bool) -> str:
    """What the definition multiverse (``emerge multiverse``) can recompute from once the
    sweep is done, the disk it holds, and the switch; ``every``: the bytes of weights at every
    probe step."""
    if not kept_steps:
        why = ("probes.keep_weights is false" if not keep
               else "train.checkpoint.weights_every is null")
        return (f"definition multiverse: off ({why}): no weights remain for `emerge "
                f"multiverse` to recompute from; weights_every: 1 and keep_weights: true keep "
                f"all {probe_steps} probe steps ({_size(every)} fp32)")
    return (f"definition multiverse: weights kept at up to {kept_steps} of {probe_steps} probe "
            f"steps ({_size(kept)} fp32 after the sweep), where `emerge multiverse` recomputes "
            "every definition; train.checkpoint.weights_every: null or probes.keep_weights: false "
            "turns it off")


def _finish_line(capacity: Any, cpu_load: float, gpu_load: float, longest: float,
                 spec: SweepSpec) -> str:
    """A lower bound on the time to finish: resource-hours over capacity, or the longest
    trial, whichever is larger (packing and the probe pool only add to it)."""
    if gpu_load and not capacity.gpus:
        return (f"time to finish: never on {capacity.where} ({capacity.cpus:g} CPUs, no GPU): "
                "its GPU trials cannot be placed")
    bound = max(cpu_load / max(capacity.cpus, 1.0),
                gpu_load / capacity.gpus if capacity.gpus else 0.0, longest)
    limit = "" if spec.max_concurrent_trials is None else (
        f", max_concurrent_trials {spec.max_concurrent_trials} may stretch it")
    return (f"time to finish: at least {bound:.1f} h on {capacity.where} "
            f"({capacity.cpus:g} CPUs, {capacity.gpus:g} GPUs){limit}")


def status_data(run_dir: Path) -> dict[str, Any]:
    """Where a sweep stands, from its run folder alone (``emerge status --json``)."""
    folder = RunFolder(run_dir)
    sweep_state(folder)
    spec = frozen_spec(folder)
    queue = ProbeQueue(folder)
    done_jobs = queue.done_jobs() if spec.probes.measures else set()
    queued = _queued_by_trial(queue) if spec.probes.measures else {}
    alerts = _alert_counts(folder)
    trials = []
    for p in spec.trials():
        st = trial_state(folder, p.name)
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
    calibrated = {name for name, m in spec.probes.measures.items() if m.calibrate}
    actors = [{**a, "pilot_runs": pilot_runs(folder, a["trial"], a["measure"])
               if a["measure"] in calibrated else None} for a in probe_actors(folder)]
    return {"sweep": spec.name, "run_dir": str(folder.path), "counts": counts,
            "trials": trials,
            "probes": {"done": p_done, "due": p_due, "failed": p_failed, "actors": actors}}


def _actor_line(a: dict[str, Any], now: float) -> str:
    """``COPY-s0-0 llc@0 for 42 min (pilot: 5 runs finished)``: one probe actor's job."""
    minutes = max(0.0, now - a["since"]) / 60
    pilot = "" if a.get("pilot_runs") is None else \
        f" (pilot: {a['pilot_runs']} run{'s' * (a['pilot_runs'] != 1)} finished)"
    return f"{a['trial']} {a['measure']}@{a['step']} for {minutes:.0f} min{pilot}"


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
        if p["due"] else "") + "; alerts p/a: live precursor / approach alerts" + (
        "\nprobe actors: " + "; ".join(_actor_line(a, time.time()) for a in p["actors"])
        if p.get("actors") else "")
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
