"""How the LLC moves with the step size, on real checkpoints: the calibration's evidence.

On the checkpoints of an ``emerge train`` folder (default: COPY s0 seed 0), the LLC and its
diagnostics (mean sampled loss against the untrained model's, split R-hat) for the first
defaults (plain SGLD, eps 1e-4, gamma 100, n_beta over the 1,024-sample probe batch) and for
RMSProp-SGLD with n_beta over the training set across a grid of step sizes at one gamma.
A row "passes" the calibration's criteria when R-hat <= 1.1, the mean sampled loss is at
most a quarter of the untrained model's, and the value moves less than 20% at eps / 2.

    emerge train --task COPY --scale s0 --out /tmp/copy_s0
    python benchmarks/bench_llc_steps.py /tmp/copy_s0 --steps 600 99 [--write]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from _common import header, markdown_table, write_section

from emergence_core.config import TrainConfig
from emergence_core.expensive import trial_model, trial_probe_batch, untrained_loss
from emergence_core.folder_records import read_run_record
from emergence_core.measures.llc import LLCSettings, estimate_llc
from emergence_core.run_folder import RunFolder
from emergence_core.store import TrialStore

FIRST = LLCSettings(sampler="sgld", eps=1e-4, gamma=100.0, n_beta_of="batch")


def run(run_dir: Path, steps: list[int], eps_grid: list[float], gamma: float,
        threads: int) -> str:
    torch.set_num_threads(threads)
    folder = RunFolder(run_dir)
    cfg = TrainConfig.model_validate(read_run_record(folder)["config"])
    data, model = trial_model(cfg)
    batch = trial_probe_batch(data, 1024, cfg.seed)
    untrained = untrained_loss(cfg, batch)
    rows = [["step", "sampler", "n_beta", "eps", "gamma", "LLC", "mean sampled loss",
             "loss at w*", "R-hat", "change at eps/2", "passes", "CPU s"]]
    for step in steps:
        TrialStore(folder, cfg.trial_name()).load_weights(model, step)
        runs = [FIRST] + [LLCSettings(eps=e, gamma=gamma) for e in eps_grid]
        results = []
        for s in runs:
            t0 = time.process_time()
            r = estimate_llc(model, batch, s)
            results.append((s, r, time.process_time() - t0))
            print(f"step {step} {s.sampler} eps {s.eps:g}: {r.value:.4g} (R-hat {r.rhat:.3f}, "
                  f"mean loss {r.mean_loss:.4f})", file=sys.stderr, flush=True)
        for i, (s, r, cpu) in enumerate(results):
            half = results[i + 1][1] if 1 <= i < len(results) - 1 else None
            change = abs(r.value - half.value) / abs(half.value) if half else None
            ok = (r.converged and r.mean_loss <= untrained / 4 and change is not None
                  and change <= 0.2)
            rows.append([str(step), s.sampler, f"{r.n_beta:.4g}", f"{s.eps:g}", f"{s.gamma:g}",
                         f"{r.value:.4g}", f"{r.mean_loss:.4g}", f"{r.init_loss:.3g}",
                         f"{r.rhat:.3f}", "-" if change is None else f"{change:.0%}",
                         "yes" if ok else "no", f"{cpu:.0f}"])
    return "\n".join([
        "## LLC against the step size (`benchmarks/bench_llc_steps.py`)",
        "",
        f"{cfg.task} {cfg.scale} seed {cfg.seed}, {cfg.steps} training steps; probe batch of "
        f"1,024 training samples; untrained model's loss {untrained:.3f} (a quarter: "
        f"{untrained / 4:.3f}). 4 chains x 200 draws, 100 burn-in. First row of each step: the "
        "first defaults (plain SGLD, n_beta over the probe batch); then RMSProp-SGLD (G frozen "
        "after half the burn-in) with n_beta over the training set. " + header(threads),
        "",
        markdown_table(rows),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, nargs="+", default=[600, 99])
    parser.add_argument("--eps", type=float, nargs="+", default=[4e-6, 2e-6, 1e-6, 5e-7])
    parser.add_argument("--gamma", type=float, default=1000.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    text = run(args.run_dir, args.steps, args.eps, args.gamma, args.threads)
    print(text)
    if args.write:
        write_section("llc-steps", text)


if __name__ == "__main__":
    main()
