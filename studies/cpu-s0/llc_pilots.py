"""The LLC's default procedure on the 24 trials of ``sweeps/cpu-study.yaml``: does every
trial's pilot choose a setting, and does every chosen setting pass all four checks?

For each (task, seed) of the sweep, the trial's last checkpoint (the one its pilot runs on in
the sweep) is rebuilt with ``emerge train`` (the run is deterministic: the same weights as
the sweep's), then ``emerge probe --measure llc --json`` runs the pilot and the estimate at
its choice with the sweep's own LLC settings (probe batch, chains, draws, minibatch). One
row per trial goes to ``llc_pilots.csv``; ``--summary`` prints the counts from that CSV.

    python studies/cpu-s0/llc_pilots.py --work runs/llc-pilots   # about 40 minutes, 1 core
    python studies/cpu-s0/llc_pilots.py --summary
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSV = HERE / "llc_pilots.csv"
FIELDS = ["trial", "task", "seed", "step", "chosen", "c", "k", "eps", "gamma", "value", "std",
          "rise", "max_rise", "rhat", "stationary", "in_basin", "halving_change",
          "localisation_change", "estimate_converged", "points_run", "lambda_max", "wall_s"]


def _sweep() -> dict:
    return yaml.safe_load((ROOT / "sweeps" / "cpu-study.yaml").read_text())


def _emerge(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "orchestrator.cli.app", *args], cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"emerge {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def run(work: Path) -> None:
    sweep = _sweep()
    llc = sweep["probes"]["measures"]["llc"]
    sets = [f"--set={k}={v}" for k, v in llc["settings"].items()]
    done = set()
    if CSV.exists():
        with CSV.open() as f:
            done = {row["trial"] for row in csv.DictReader(f)}
    new = not CSV.exists()
    with CSV.open("a", newline="") as f:
        out = csv.DictWriter(f, FIELDS)
        if new:
            out.writeheader()
        for task in sweep["tasks"]:
            steps = sweep["per_task"][task]["train"]["steps"]
            for seed in sweep["seeds"]:
                trial = f"{task}-s0-{seed}"
                if trial in done:
                    continue
                t0 = time.perf_counter()
                folder = work / trial
                _emerge("train", "--task", task, "--seed", str(seed), "--steps", str(steps),
                        "--out", str(folder), "--threads", "1", "--set", "probe.n_probes=1",
                        "--set", "diag_size=50", "--set", f"checkpoint.weights_every={steps}")
                res = json.loads(_emerge("probe", str(folder), "--measure", "llc", "--step",
                                         str(steps), "--json", "--threads", "1",
                                         f"--set=batch_size={llc['batch_size']}", *sets)
                                 .splitlines()[-1])
                cal = res["calibration"]
                at = next((p for p in cal["grid"] if p["passed"]), {})
                out.writerow({
                    "trial": trial, "task": task, "seed": seed, "step": steps,
                    "chosen": cal["chosen"] is not None, "c": at.get("step"),
                    "k": at.get("localisation"), "eps": at.get("eps"), "gamma": at.get("gamma"),
                    "value": res.get("value"), "std": res.get("std"),
                    "rise": res.get("loss_rise"), "max_rise": res.get("max_rise"),
                    "rhat": res.get("rhat"), "stationary": at.get("stationary"),
                    "in_basin": at.get("in_basin"), "halving_change": at.get("halving_change"),
                    "localisation_change": at.get("localisation_change"),
                    "estimate_converged": res.get("converged"), "points_run": len(cal["grid"]),
                    "lambda_max": cal.get("lambda_max"),
                    "wall_s": round(time.perf_counter() - t0, 1)})
                f.flush()
                print(f"{trial}: chosen {cal['chosen'] is not None}, LLC {res.get('value')}",
                      flush=True)


def summary() -> str:
    with CSV.open() as f:
        rows = list(csv.DictReader(f))
    chosen = [r for r in rows if r["chosen"] == "True"]
    passing = [r for r in chosen if r["stationary"] == "True" and r["in_basin"] == "True"
               and float(r["halving_change"]) <= 0.1 and float(r["localisation_change"]) <= 0.05]
    converged = [r for r in chosen if r["estimate_converged"] == "True"]
    failed = ", ".join(r["trial"] for r in rows if r["chosen"] != "True") or "none"
    return (f"LLC pilots on the {len(rows)} trials of sweeps/cpu-study.yaml: "
            f"{len(chosen)}/{len(rows)} chose a setting; {len(passing)}/{len(chosen)} chosen "
            f"settings pass all four checks; {len(converged)}/{len(chosen)} estimates at the "
            f"choice pass stationarity and the basin. No setting: {failed}.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "llc-pilots")
    parser.add_argument("--summary", action="store_true")
    args = parser.parse_args()
    if not args.summary:
        run(args.work)
    print(summary())
