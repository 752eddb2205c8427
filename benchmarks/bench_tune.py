"""A trial under Ray Tune against the same trial in-process and a bare loop, side by side;
and a sweep's fixed overhead (start of ``emerge sweep`` to the trial's first step).

Rounds alternate: each runs a one-trial sweep (``emerge sweep --address local``: a fresh
local Ray, the Tune driver, a worker, MLflow), then the same trial with ``run_trial`` in
this process, then the bare loop of ``bench_trainer`` on the same batches. Steps per second
come from the rows' own wall times (first to last probe), so start-up is not in them.

    python benchmarks/bench_tune.py [--rounds 2] [--steps 400] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import header, markdown_table, write_section
from bench_trainer import bare_loop

from emergence_core.store import read_metrics
from emergence_core.trial.runner import run_trial
from emergence_core.trial.trainer import Trainer
from orchestrator.sweep.spec import parse_spec
from tests.sweep_helpers import ray_tmpdir, run_sweep, write_spec


def _rate(run_dir: Path) -> tuple[float, float]:
    """(steps/s between the first and the last probe, wall time of the step-0 row)."""
    t = read_metrics(run_dir)
    t = t.filter(pc.equal(t["measure"], "accuracy"))
    steps = t["step"].to_pylist()
    times = [w.timestamp() for w in t["wall_time"].to_pylist()]
    first, last = times[steps.index(min(steps))], times[steps.index(max(steps))]
    return (max(steps) - min(steps)) / (last - first), first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a trial holds one CPU: same thread count on every side
    fields = {"name": "bench", "tasks": ["MOD"], "scales": ["s0"], "seeds": [0],
              "train": {"steps": args.steps, "probe": {"n_probes": 20},
                        "checkpoint": {"weights_every": None}}}
    cfg = parse_spec(fields).trials()[0].config
    tune_rate, local_rate, bare_rate, overhead = [], [], [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp, ray_tmpdir() as rt:
            tmp = Path(tmp)
            spec = write_spec(tmp / "s.yaml", **fields, run_dir=str(tmp / "tune"))
            t0 = time.time()
            assert run_sweep(["sweep", str(spec)], rt, tmp / "log") == 0, (tmp / "log").read_text()
            rate, first = _rate(tmp / "tune")
            tune_rate.append(rate)
            overhead.append(first - t0)
            run_trial(cfg, tmp / "local")
            local_rate.append(_rate(tmp / "local")[0])
            trainer = Trainer(cfg)
            bare_rate.append(100 / bare_loop(trainer, 100, start=0))
    med = statistics.median
    where = header(1).replace("both sides in the same process",
                              "the Tune side in its own driver and worker processes, the "
                              "others in this one")
    rows = [["side", "steps/s (median)", "ratio to bare loop"],
            ["bare PyTorch loop (no probes)", f"{med(bare_rate):.1f}", "1.00"],
            ["run_trial in-process (probes, commits)", f"{med(local_rate):.1f}",
             f"{med(local_rate) / med(bare_rate):.2f}"],
            ["run_trial under Ray Tune (emerge sweep)", f"{med(tune_rate):.1f}",
             f"{med(tune_rate) / med(bare_rate):.2f}"]]
    text = ("### A trial under Ray Tune (`benchmarks/bench_tune.py`)\n\n"
            f"{where} "
            f"MOD at s0, {args.steps} steps, 21 probe steps, batch 192; "
            f"{args.rounds} alternating rounds.\n\n" + markdown_table(rows) +
            f"\n\nFixed overhead of a sweep, from `emerge sweep` to the trial's step 0 "
            f"(local Ray start, Tune, worker start-up, model build, first probe): "
            f"{med(overhead):.1f} s median ({', '.join(f'{o:.1f}' for o in overhead)} s).")
    print(text)
    if args.write:
        write_section("tune", text)


if __name__ == "__main__":
    main()
