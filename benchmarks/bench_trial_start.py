"""A trial worker's start: from a fresh Python process to the trial's probe at step 0.

A Tune trial starts in a new worker process (``reuse_workers: false``, the default). Before
its first step the worker imports the trainable's module (Ray Tune with it) and the trial
runner, builds the data and the model, and runs the cheap probes at step 0. This measures
that span, and which heavy libraries the imports pulled in, for this tree and for a
baseline tree side by side, alternating runs.

    python benchmarks/bench_trial_start.py --baseline /path/to/older/checkout [--runs 7]

The baseline is a checkout of an earlier commit (``git worktree add --detach DIR REV``); its
modules are put first on the child's path, so both sides use the same installed packages.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, markdown_table, write_section

HEAVY = ("polars", "matplotlib", "mlflow", "pandas")

# The child: what a Tune worker does before step 0 (the trainable module's imports, then
# _trainable's), then a short trial until its first probe.
CHILD = r"""
import importlib, json, sys, tempfile, time
t_start = float(sys.argv[1])
HEAVY = tuple(sys.argv[2].split(","))
for name in ("orchestrator.sweep.tune_run", "orchestrator.tune_run"):
    try:
        importlib.import_module(name)
        break
    except ModuleNotFoundError:
        continue
t_imported = time.time()
from emergence_core.config import resolve_config
from emergence_core.trial.runner import TrialHooks, run_trial
t_runner = time.time()
cfg = resolve_config("MOD", "s0", 0, steps=20, diag_size=200)
first = {}
def on_probe(r):
    first.setdefault("t", time.time())
with tempfile.TemporaryDirectory() as d:
    run_trial(cfg, d, hooks=TrialHooks(on_probe=on_probe, should_stop=lambda: "t" in first))
import emergence_core
print(json.dumps({"import_tune_s": t_imported - t_start, "import_runner_s": t_runner - t_imported,
                  "step0_s": first["t"] - t_start,
                  "heavy": sorted(m for m in HEAVY if m in sys.modules),
                  "tree": emergence_core.__file__}))
"""


def run_once(tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), env_path()]),
           "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    with tempfile.TemporaryDirectory() as cwd:  # no tree on the path through the cwd
        t0 = time.time()
        out = subprocess.run([sys.executable, "-c", CHILD, repr(t0), ",".join(HEAVY)],
                             capture_output=True,
                             text=True, env=env, cwd=cwd, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(result["tree"]).resolve().is_relative_to(tree.resolve()), result["tree"]
    return result


def env_path() -> str:
    return os.environ.get("PYTHONPATH", "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="an older checkout")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--label", default="before (baseline)")
    args = ap.parse_args()
    trees = {args.label: args.baseline, "after (this tree)": ROOT}
    results: dict[str, list[dict]] = {k: [] for k in trees}
    run_once(ROOT)  # warm the file cache once for both
    run_once(args.baseline)
    for _ in range(args.runs):
        for label, tree in trees.items():
            results[label].append(run_once(tree))

    def med(label: str, key: str) -> float:
        return statistics.median(r[key] for r in results[label])

    rows = [["tree", "import trainable module (s)", "import runner (s)",
             "worker start to step 0 (s)", "heavy modules loaded"]]
    for label in trees:
        rows.append([label, f"{med(label, 'import_tune_s'):.2f}",
                     f"{med(label, 'import_runner_s'):.2f}", f"{med(label, 'step0_s'):.2f}",
                     ", ".join(results[label][0]["heavy"]) or "none"])
    before, after = (med(label, "step0_s") for label in trees)
    text = (f"Measured {time.strftime('%Y-%m-%d')}, {args.runs} alternating runs per tree "
            f"(median), one torch thread, a fresh process each: what a Tune trial's worker "
            f"does before its first step (import the trainable's module and the runner, build "
            f"MOD s0, run the step-0 probes over 200 diagnostic samples per level).\n\n"
            + markdown_table(rows)
            + f"\n\nRatio after / before, start to step 0: {after / before:.2f}. "
              "Script: `benchmarks/bench_trial_start.py --baseline DIR`.")
    print(text)
    write_section("trial-start", "## Trial worker start to step 0\n\n" + text)


if __name__ == "__main__":
    main()
