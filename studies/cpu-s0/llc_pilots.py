"""The LLC's default procedure on the 24 trials of ``sweeps/cpu-study.yaml``: does every
trial's pilot choose a setting, and does every chosen setting pass all four checks?

For each (task, seed) of the sweep, ``emerge probe --measure llc --json`` runs the pilot and
the estimate at its choice on the trial's last checkpoint (the one its pilot runs on in the
sweep) with the sweep's own LLC settings (probe batch, chains, draws, minibatch). With
``--run`` the checkpoints are the sweep's own (``runs/cpu-s0-reissue``, which keeps every
probe step's weights); without, each trial is trained again by ``emerge train`` with the
sweep's training settings (deterministic on one machine; docs/methods.md §2 says how far
across machines). One
row per trial goes to ``llc_pilots.csv``; ``--summary`` prints the counts from that CSV.
The pilot chooses in one of two tiers (``kind``, docs/methods.md §3.4): gamma-independent
(checks 1-4 with a weaker localisation) or, failing that, localised at the stated
gamma = k * n_beta * lambda_max with chains relaxed under it.

    python studies/cpu-s0/llc_pilots.py --run runs/cpu-s0-reissue --work runs/llc-pilots
    python studies/cpu-s0/llc_pilots.py --work runs/llc-pilots   # trains; about an hour
    python studies/cpu-s0/llc_pilots.py --work runs/llc-pilots --shard 0/2 &   # two cores
    python studies/cpu-s0/llc_pilots.py --work runs/llc-pilots --shard 1/2
    python studies/cpu-s0/llc_pilots.py --merge   # once both shards have finished
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
GRIDS = HERE / "llc_pilot_grids.csv"  # every pilot's grid, a row per point it ran
# the same pilots before: S at w* in both tiers, on checkpoints trained again (another
# machine's digits); and before that, n_beta from the training set with a batch of 128
BEFORES = ((HERE / "llc_pilots_wstar.csv", "the localised tier's S at w*, on checkpoints "
            "trained again by an earlier version of this script"),
           (HERE / "llc_pilots_n128_train.csv", "n_beta from the training set, probe batch "
            "128"))
GRID_FIELDS = ["trial", "tier", "step", "localisation", "eps", "gamma", "n_draws", "n_burnin",
               "affordable", "value", "rise", "rhat", "stationary", "in_basin",
               "halving_change", "halving_noise", "localisation_change", "passed", "wall_s"]
FIELDS = ["trial", "task", "seed", "step", "chosen", "kind", "c", "k", "eps", "gamma",
          "n_draws", "n_burnin", "value", "std", "rise", "max_rise", "rhat", "stationary",
          "in_basin", "halving_change", "localisation_change", "localised_bound",
          "estimate_converged", "points_run", "lambda_max", "lambda_basin", "localised_stiffness",
          "wall_s"]


def _sweep() -> dict:
    return yaml.safe_load((ROOT / "sweeps" / "cpu-study.yaml").read_text())


def _emerge(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "orchestrator.cli.app", *args], cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"emerge {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def _part(shard: tuple[int, int]) -> Path:
    return CSV.with_name(f"llc_pilots.part{shard[0]}of{shard[1]}.csv")


def _trials(sweep: dict) -> list[tuple[str, int]]:
    return [(task, seed) for task in sweep["tasks"] for seed in sweep["seeds"]]


def run(work: Path, shard: tuple[int, int] = (0, 1), only: set[str] | None = None,
        sweep_run: Path | None = None) -> None:
    sweep = _sweep()
    llc = sweep["probes"]["measures"]["llc"]
    sets = [f"--set={k}={v}" for k, v in llc["settings"].items()] + [
        f"--set=calibration.{k}={v}" for k, v in llc.get("calibration", {}).items()]
    path = CSV if shard == (0, 1) else _part(shard)
    done = set()
    for p in {CSV, path}:
        if p.exists():
            with p.open() as f:
                done |= {row["trial"] for row in csv.DictReader(f)}
    new = not path.exists()
    with path.open("a", newline="") as f:
        out = csv.DictWriter(f, FIELDS)
        if new:
            out.writeheader()
        for i, (task, seed) in enumerate(_trials(sweep)):
            trial = f"{task}-s0-{seed}"
            if (only is None and i % shard[1] != shard[0]) or (only and trial not in only):
                continue
            steps = sweep["per_task"][task]["train"]["steps"]
            if trial in done:
                continue
            t0 = time.perf_counter()
            folder = work / trial
            where = ["--trial", trial] if sweep_run is not None else []
            if sweep_run is None and not (folder / "checkpoints").is_dir():
                _emerge("train", "--task", task, "--seed", str(seed), "--steps", str(steps),
                        "--out", str(folder), "--threads", "1",
                        "--set", f"diag_size={sweep['train']['diag_size']}",
                        "--set", f"probe.n_probes={sweep['train']['probe']['n_probes']}",
                        "--set", f"checkpoint.weights_every={steps}")
            res = json.loads(_emerge("probe", str(sweep_run or folder), *where, "--measure",
                                     "llc", "--step", str(steps), "--json", "--threads", "1",
                                     "--recalibrate", f"--set=batch_size={llc['batch_size']}",
                                     *sets).splitlines()[-1])
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "llc_pilot.json").write_text(json.dumps(res, indent=1))  # the grid
            cal = res["calibration"]
            at = next((p for p in cal["grid"] if p["passed"]), {})
            out.writerow({
                "trial": trial, "task": task, "seed": seed, "step": steps,
                "chosen": cal["chosen"] is not None, "kind": cal.get("kind") or "",
                "c": at.get("step"), "k": at.get("localisation"), "eps": at.get("eps"),
                "gamma": at.get("gamma"), "n_draws": at.get("n_draws"),
                "n_burnin": at.get("n_burnin"),
                "value": res.get("value"), "std": res.get("std"),
                "rise": res.get("loss_rise"), "max_rise": res.get("max_rise"),
                "rhat": res.get("rhat"), "stationary": at.get("stationary"),
                "in_basin": at.get("in_basin"), "halving_change": at.get("halving_change"),
                "localisation_change": at.get("localisation_change"),
                "localised_bound": (cal.get("criteria") or {}).get("localised"),
                "estimate_converged": res.get("converged"), "points_run": len(cal["grid"]),
                "lambda_max": cal.get("lambda_max"),
                "lambda_basin": cal.get("lambda_basin"),
                "localised_stiffness": cal.get("localised_stiffness"),
                "wall_s": round(time.perf_counter() - t0, 1)})
            f.flush()
            print(f"{trial}: chosen {cal['chosen'] is not None}, LLC {res.get('value')}",
                  flush=True)


def merge() -> None:
    """The shards' parts into ``llc_pilots.csv``, in the sweep's trial order."""
    parts = sorted(HERE.glob("llc_pilots.part*.csv"))
    if not parts:
        return
    rows = {}
    for p in [CSV, *parts]:
        if p.exists():
            with p.open() as f:
                rows.update({r["trial"]: r for r in csv.DictReader(f)})
    order = [f"{t}-s0-{s}" for t, s in _trials(_sweep())]
    with CSV.open("w", newline="") as f:
        out = csv.DictWriter(f, FIELDS)
        out.writeheader()
        out.writerows(rows[t] for t in order if t in rows)
    for p in parts:
        p.unlink()


def write_grids(work: Path) -> None:
    """Every trial's pilot grid (from its ``llc_pilot.json`` under ``work``) into ``GRIDS``,
    in the sweep's trial order and the order the pilot ran its points."""
    rows = []
    for task, seed in _trials(_sweep()):
        path = work / f"{task}-s0-{seed}" / "llc_pilot.json"
        if path.exists():
            grid = json.loads(path.read_text())["calibration"]["grid"]
            rows += [{"trial": f"{task}-s0-{seed}", **{k: p.get(k) for k in GRID_FIELDS[1:]}}
                     for p in grid]
    with GRIDS.open("w", newline="") as f:
        out = csv.DictWriter(f, GRID_FIELDS)
        out.writeheader()
        out.writerows(rows)


def _passes(r: dict) -> bool:
    """All four checks, in the chosen tier's form of check 4 (docs/methods.md §3.4)."""
    common = r["stationary"] == "True" and r["in_basin"] == "True" \
        and float(r["halving_change"]) <= 0.1
    if r["kind"] == "localised":  # the stated bound, with chains relaxed under gamma
        tau = 1 / (float(r["c"]) * float(r["k"]))
        return common and float(r["k"]) <= float(r["localised_bound"]) \
            and float(r["n_burnin"]) >= 2 * tau - 1 \
            and float(r["n_draws"]) - float(r["n_burnin"]) >= 2 * tau - 1
    return common and float(r["localisation_change"]) <= 0.05


def summary(path: Path = CSV) -> str:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    chosen = [r for r in rows if r["chosen"] == "True"]
    kinds = {k: sum(r["kind"] == k for r in chosen) for k in ("gamma-independent", "localised")}
    passing = [r for r in chosen if _passes(r)]
    converged = [r for r in chosen if r["estimate_converged"] == "True"]
    strict = [r for r in chosen if r["kind"] == "gamma-independent"]
    relaxed = [r for r in strict  # check 4 has power only once gamma has acted (methods §3.4)
               if float(r["n_draws"]) >= 1 / (float(r["c"]) * float(r["k"]))]
    failed = ", ".join(r["trial"] for r in rows if r["chosen"] != "True") or "none"
    ran = {r["trial"] for r in rows}
    missing = [f"{t}-s0-{s}" for t, s in _trials(_sweep()) if f"{t}-s0-{s}" not in ran]
    return (f"LLC pilots on the {len(rows)} trials of sweeps/cpu-study.yaml: "
            f"{len(chosen)}/{len(rows)} chose a setting ({kinds['gamma-independent']} "
            f"gamma-independent, {kinds['localised']} localised); {len(passing)}/{len(chosen)} "
            f"chosen settings pass all four checks; {len(converged)}/{len(chosen)} estimates "
            f"at the choice pass stationarity and the basin"
            + (f"; {len(relaxed)}/{len(strict)} gamma-independent choices ran chains of at "
               "least one relaxation time 1 / (c k)" if strict else "")
            + f". No setting: {failed}."
            + (f" Not run yet: {', '.join(missing)}." if missing else ""))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "llc-pilots")
    parser.add_argument("--run", type=Path, help="the sweep's run folder, whose checkpoints "
                        "the pilots read (else each trial is trained again)")
    parser.add_argument("--summary", action="store_true")
    parser.add_argument("--merge", action="store_true",
                        help="merge the shards' parts into llc_pilots.csv (after they finish)")
    parser.add_argument("--shard", default="0/1", help="I/N: every N-th trial from the I-th")
    parser.add_argument("--only", help="these trials (comma-separated), into shard I/N's part")
    args = parser.parse_args()
    i, n = (int(x) for x in args.shard.split("/"))
    if not (args.summary or args.merge):
        run(args.work, (i, n), set(args.only.split(",")) if args.only else None, args.run)
    if args.merge or (n == 1 and not args.summary):  # never under a shard still writing
        merge()
    if args.summary or args.merge or n == 1:
        if args.work.is_dir():
            write_grids(args.work)
        print(summary())
        for path, what in BEFORES:
            print(f"Before ({what}; `{path.name}`): " + summary(path))
