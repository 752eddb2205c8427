"""The sweep driver at grid scale: peak memory and wall time against the number of trials.

Sweeps of N very short trials (MOD at s0, 5 steps) run end to end through ``emerge sweep``
on a local Ray (2 trials at a time); the driver's peak resident memory is read from
``/proc/<pid>/status`` (VmHWM) while it runs, the time is from launch to the last trial's
completion marker. N and N/2 give the growth per trial; a third run at N/2 with 25x more
metric rows per trial shows whether memory follows the metrics (it must not: the driver
holds no per-step history, Parquet and MLflow hold it).

    python benchmarks/bench_driver.py [--trials 200] [--write]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import markdown_table, write_section

from emergence_core.store import read_metrics
from tests.sweep_helpers import ray_tmpdir, start_sweep, stop, write_spec


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def run(n: int, n_probes: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, ray_tmpdir() as rt:
        tmp = Path(tmp)
        spec = write_spec(
            tmp / "s.yaml", name="grid", run_dir=str(tmp / "run"), tasks=["MOD"],
            scales=["s0"], seeds=list(range(n)), max_concurrent_trials=2, retries=1,
            reuse_workers=True,
            train={"steps": 5 if n_probes <= 5 else n_probes, "train_size": 60, "diag_size": 20,
                   "warmup_steps": 1, "batch_size": 12,
                   "probe": {"n_probes": n_probes, "rankme_samples": 10},
                   "checkpoint": {"weights_every": None, "every_probes": 5}})
        t0 = time.time()
        proc = start_sweep(["sweep", str(spec)], rt, tmp / "log")
        peak = 0
        try:
            while proc.poll() is None:
                peak = max(peak, _vm_hwm_kib(proc.pid) or 0)
                time.sleep(0.2)
        finally:
            stop(proc)
        assert proc.returncode == 0, (tmp / "log").read_text()[-2000:]
        ends = [p.stat().st_mtime for p in (tmp / "run" / "checkpoints").glob("*/COMPLETE.json")]
        assert len(ends) == n
        rows = read_metrics(tmp / "run").num_rows
        return {"trials": n, "wall_s": max(ends) - t0, "peak_mib": peak / 1024, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    half = args.trials // 2
    results = [run(half, 2), run(args.trials, 2), run(half, 50)]
    rows = [["trials", "metric rows", "driver peak RSS", "launch to last trial", "per trial"]]
    for r in results:
        rows.append([str(r["trials"]), f"{r['rows']:,}", f"{r['peak_mib']:.0f} MiB",
                     f"{r['wall_s']:.0f} s", f"{r['wall_s'] / r['trials']:.2f} s"])
    small, big, heavy = results
    growth_mem = (big["peak_mib"] - small["peak_mib"]) / (big["trials"] - small["trials"])
    growth_t = (big["wall_s"] - small["wall_s"]) / (big["trials"] - small["trials"])
    text = ("### The driver at grid scale (`benchmarks/bench_driver.py`)\n\n"
            f"Measured {time.strftime('%Y-%m-%d')} on this 2-core machine: `emerge sweep` of "
            "N trials of 5 steps (MOD, s0) on a local Ray, 2 at a time, MLflow in SQLite. "
            "Peak RSS is the driver process's own (VmHWM), Ray's daemons excluded.\n\n"
            + markdown_table(rows) +
            f"\n\nGrowth from {small['trials']} to {big['trials']} trials: "
            f"{growth_mem * 1024:.0f} KiB of driver memory and {growth_t:.2f} s per trial. "
            f"With {heavy['rows'] / small['rows']:.0f}x the metric rows per trial, the driver's "
            f"peak moves by {heavy['peak_mib'] - small['peak_mib']:+.0f} MiB: it keeps no "
            "per-step history.")
    print(text)
    if args.write:
        write_section("driver", text)


if __name__ == "__main__":
    main()
