"""Statistics-stage benchmark: ``analyze`` + ``write_report`` over a full-grid-sized table.

Generates a synthetic metrics dataset of the real schema (8 tasks x 3 levels x 5 scales x
3 seeds = 120 trials, ~375 probe steps, RankMe / uncentred RankMe at 3 read positions and a
linear probe per layer and per level, 5 expensive measures every 4th probe: about 10
million rows) as Parquet, one file per trial, in a temporary folder. A child process then
scans it lazily, analyses it and writes the report; its wall time is timed inside it and
its peak resident memory is read from ``ru_maxrss`` of the finished child (Arrow and
polars allocate outside Python's heap, which tracemalloc does not see).

Baseline, side by side: change-point detection on the same headline series by ours (the
vectorised binary segmentation of ``analysis.series``) and by ``ruptures.Binseg`` (l2,
jump 1), which returns the same change points.

    python benchmarks/bench_analyze.py [--rows 1e7] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_section

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(ROOT))

SECTION = "analyze"
SCALES = (("s0", 2), ("s1", 4), ("s2", 6), ("s3", 8), ("s4", 12))
TASKS = ("COPY", "REV", "CMP", "PAR", "ADD", "MOD", "SORT", "MUL")
ROWS_PER_PROBE = 26_820  # of the grid below, all trials together


def grid_config(rows: float):
    from emergence_core.testing import SyntheticConfig

    return SyntheticConfig(tasks=TASKS, scales=SCALES, seeds=(0, 1, 2),
                           n_probes=max(200, round(rows / ROWS_PER_PROBE)), max_step=50_000,
                           positions=("sep", "prompt_mean", "last"), sweep="bench")


def child(run_dir: str, out_dir: str) -> None:
    """Runs in the measured process: scan, analyse, report; prints timings as JSON."""
    t0 = time.perf_counter()
    from emergence_core.analysis import analyze, load_metrics, write_report

    t1 = time.perf_counter()
    lf = load_metrics(run_dir)
    a = analyze(lf)
    t2 = time.perf_counter()
    summary = write_report(lf, out_dir, analysis=a)
    t3 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "analyze_s": t2 - t1, "report_s": t3 - t2,
                      "rows": a.n_rows, "trials": a.trials.height,
                      "events": int(a.details["step"].is_not_null().sum()),
                      "files": len(summary.files)}))


def changepoint_baseline(run_dir: Path, n_series: int = 60) -> dict:
    """Seconds for ours and for ruptures.Binseg on the same final-layer RankMe series."""
    import numpy as np
    import polars as pl
    import ruptures as rpt

    from emergence_core.analysis.series import binseg, noise_scale, smooth

    rows = (pl.scan_parquet(str(run_dir / "metrics" / "**" / "*.parquet"))
            .filter((pl.col("measure") == "rankme") & pl.col("level").is_not_null())
            .filter(pl.col("layer") == pl.col("layer").max().over("trial"))
            .collect().sort("trial", "level", "step"))
    series = [g["value"].to_numpy() for _, g in rows.group_by(["trial", "level"],
                                                               maintain_order=True)]
    prepared = []
    for v in series[:n_series]:
        s = smooth(v, 5)
        sigma = max(noise_scale(v), 0.01 * float(np.ptp(s)))
        prepared.append(((s - np.median(s)) / sigma, 2.0 * np.log(v.size)))
    t = time.perf_counter()
    ours = [binseg(y, pen, 3, None) for y, pen in prepared]
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    theirs = [rpt.Binseg(model="l2", min_size=3, jump=1).fit(y).predict(pen=pen)[:-1]
              for y, pen in prepared]
    t_rpt = time.perf_counter() - t
    same = sum(list(a) == list(b) for a, b in zip(ours, theirs, strict=True))
    return {"n": len(prepared), "points": int(np.mean([y.size for y, _ in prepared])),
            "ours_s": t_ours, "ruptures_s": t_rpt, "same": same}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=float, default=1e7, help="target number of metric rows")
    p.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    p.add_argument("--child", nargs=2, metavar=("RUN_DIR", "OUT_DIR"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return
    from emergence_core.testing import write_synthetic

    with tempfile.TemporaryDirectory(prefix="bench-analyze-") as tmp:
        run_dir = Path(tmp) / "run"
        t = time.perf_counter()
        _, rows = write_synthetic(grid_config(args.rows), run_dir)
        gen_s = time.perf_counter() - t
        size_mb = sum(f.stat().st_size for f in run_dir.rglob("*.parquet")) / 2**20
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", str(run_dir),
                               str(Path(tmp) / "report")], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - t
        if proc.returncode:
            sys.exit(f"child failed:\n{proc.stderr}")
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        base = changepoint_baseline(run_dir)
    cores = len(os.sched_getaffinity(0))
    table = "\n".join([
        "| rows | trials | events | Parquet | analyze | report (tables, figures) | "
        "child wall (with imports) | peak RSS |",
        "|---|---|---|---|---|---|---|---|",
        f"| {rows:,} | {res['trials']} | {res['events']} | {size_mb:.0f} MB | "
        f"{res['analyze_s']:.1f} s | {res['report_s']:.1f} s | {wall:.1f} s | {peak_mb:.0f} MB |",
        "",
        "| change points on the same series | series x points | seconds | ratio |",
        "|---|---|---|---|",
        f"| emerge `series.binseg` (vectorised) | {base['n']} x {base['points']} | "
        f"{base['ours_s']:.3f} | 1.0 |",
        f"| `ruptures.Binseg(model='l2', jump=1)` | {base['n']} x {base['points']} | "
        f"{base['ruptures_s']:.3f} | {base['ruptures_s'] / max(base['ours_s'], 1e-9):.0f}x "
        f"slower |",
    ])
    text = (f"## Statistics stage (`emerge analyze`)\n\n"
            f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {cores} cores, "
            f"Python {platform.python_version()}; synthetic full-grid table generated in "
            f"{gen_s:.0f} s (not timed below). Per-trial figures are capped at "
            f"`max_trial_figures` (12 of {res['trials']} trials drawn). Change points agree "
            f"with ruptures on {base['same']}/{base['n']} series.\n\n{table}\n")
    print(text)
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
