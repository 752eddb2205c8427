"""Uniform against adaptive density, at equal budget: how densely the expensive measures
sample the moments that matter.

The sampling decisions are a pure function of a trial's cheap rows (``trial.decisions.Decisions``),
so this replays finished trials' committed rows under each policy, without computing any
expensive measure. For every accuracy event it reports, per policy, the expensive measure's
local sampling interval at the event (``analysis.series.local_spacing`` of its job steps, in
training steps and in the trial's cheap-probe intervals there) and whether a value lies
within 3 cheap-probe intervals on each side of the event (strictly before and strictly
after it). Both policies get the same budget: uniform sampling at every ``--every``-th probe step
and the last, against a backbone at every ``--backbone``-th probe step plus jobs pinned
around live alerts and events, capped at the uniform count.

    python benchmarks/bench_density.py RUN_DIR [RUN_DIR ...] [--write]

RUN_DIR: sweep run folders (their frozen spec gives each trial's config, threshold and
persistence), e.g. ``runs/smoke`` after ``emerge sweep sweeps/smoke.yaml``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
from _common import markdown_table, write_section

from emergence_core.analysis.series import local_spacing
from emergence_core.plan import trial_plan
from emergence_core.run_folder import RunFolder
from emergence_core.store import TrialStore
from emergence_core.trial.decisions import Decisions
from orchestrator.sweep.views import frozen_spec

MEASURE = "hessian"  # any dense measure: all share the decisions


def _policies(every: int, backbone: int) -> dict[str, tuple[dict, dict | None]]:
    dense = {"measures": (MEASURE,), "around": 3, "window": 8, "budget_every": every,
             "alert_share": 0.5}
    return {
        f"uniform every {every}": ({MEASURE: every}, None),
        "adaptive, alerts and events": ({MEASURE: backbone},
                                        {**dense, "triggers": ("alert", "event")}),
        "adaptive, approach alerts and events": (
            {MEASURE: backbone}, {**dense, "triggers": ("approach", "event")}),
        "adaptive, events only": ({MEASURE: backbone}, {**dense, "triggers": ("event",)}),
    }


def replay(run_dir: Path, every: int, backbone: int) -> list[dict]:
    """One row per (policy, trial, event): the sampling around it."""
    folder = RunFolder(run_dir)
    spec = frozen_spec(folder)
    out = []
    for trial in spec.trials():
        table = TrialStore(folder, trial.name).read()
        if table.num_rows == 0:
            continue
        for policy, (measures, density) in _policies(every, backbone).items():
            plan = trial_plan(trial.config, measures, density)
            d = Decisions.of_rows(trial.config, plan, table, spec.emergence.rule)
            jobs = {j.step for j in d.replay(table)}
            grid = np.array(plan.probe_steps)
            got = np.array(sorted(jobs))
            for level, e in sorted(d.tracker.events.items()):
                i = int(np.searchsorted(grid, e))
                before = got[(got < e) & (got >= grid[max(0, i - 3)])]
                after = got[(got > e) & (got <= grid[min(grid.size - 1, i + 3)])]
                cheap = local_spacing(grid, e)
                spacing = local_spacing(got, e)
                out.append({"policy": policy, "trial": trial.name, "level": level, "event": e,
                            "jobs": len(jobs), "budget": plan.job_budget,
                            "n_probes": len(grid),
                            "spacing_steps": spacing, "spacing_probes": spacing / cheap,
                            "both_sides": bool(before.size and after.size)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", nargs="+", type=Path)
    ap.add_argument("--every", type=int, default=10, help="uniform: every k-th probe step")
    ap.add_argument("--backbone", type=int, default=50, help="adaptive: its backbone")
    ap.add_argument("--write", action="store_true", help="rewrite BENCHMARKS.md's section")
    args = ap.parse_args()
    rows = [r for d in args.run_dirs for r in replay(d, args.every, args.backbone)]
    table = []
    for policy in _policies(args.every, args.backbone):
        mine = [r for r in rows if r["policy"] == policy]
        if not mine:
            continue
        per_trial = {r["trial"]: (r["jobs"], r["budget"]) for r in mine}
        table.append([
            policy, str(len(mine)),
            f"{sum(j for j, _ in per_trial.values())}/{sum(b for _, b in per_trial.values())}",
            f"{statistics.median(r['spacing_steps'] for r in mine):.1f}",
            f"{statistics.median(r['spacing_probes'] for r in mine):.1f}",
            f"{sum(r['both_sides'] for r in mine)}/{len(mine)}"])
    head = ["policy", "events", "jobs used / budget (events' trials)",
            f"median {MEASURE} interval at events (steps)",
            "... (cheap-probe intervals)",
            "events with values within 3 probe steps before and after"]
    text = (f"## Adaptive density against uniform, at equal budget (`benchmarks/"
            f"bench_density.py`)\n\nReplayed from the committed cheap rows of "
            f"{', '.join(str(d) for d in args.run_dirs)} ({len({r['trial'] for r in rows})} "
            f"trials): each policy's decisions are those the trial would have made live. "
            f"Uniform: every {args.every}th probe step and the last; adaptive: a backbone every "
            f"{args.backbone}th plus 3 probe steps on each side of each trigger's onset, "
            f"budget capped at the uniform count per trial "
            f"({', '.join(sorted({str(r['n_probes']) for r in rows}))} probe steps per trial: "
            f"budgets of {', '.join(sorted({str(r['budget']) for r in rows}))} jobs). Medians "
            f"over the events; the interval is the local spacing of the measure's steps at "
            f"the event.\n\n"
            + markdown_table([head, *table]))
    print(text)
    if args.write:
        write_section("density", text)


if __name__ == "__main__":
    main()
