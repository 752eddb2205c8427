"""What a probe step costs under ``emerge multiverse``: recomputing every definition of the
collapse measure from one checkpoint, against the trial's own cheap probe step on the same
model (the baseline, side by side in the same process).

The multiverse side reads every layer (embedding, blocks, final layer norm, logits) at
every position for each level's diagnostic set and computes the grid (2 formulas x 2
centrings x 4 positions x 3 reading points x the sample counts: 96 definitions at two
counts); the baseline is ``run_cheap_probes`` at the trial's settings. Minimum over
alternating rounds, CPU seconds, one torch thread.

    python benchmarks/bench_multiverse.py [--task MOD] [--diag 300] [--write]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from _common import write_section

from emergence_core.config import resolve_config
from emergence_core.expensive import trial_model
from emergence_core.metrics import RowBuffer, TrialKey
from emergence_core.multiverse.definitions import definition_values, grid
from emergence_core.multiverse.recompute import read_all
from emergence_core.trial.cheap_probes import run_cheap_probes

SECTION = "multiverse"


def run(task: str, diag: int, rounds: int) -> str:
    torch.set_num_threads(1)
    cfg = resolve_config(task, "s0", 0, diag_size=diag)
    data, model = trial_model(cfg)
    k = min(cfg.probe.rankme_samples, diag)
    defs = grid((k, diag))
    positions = tuple(sorted({d.position for d in defs}))
    n_blocks = len(model.transformer.h)
    key = TrialKey(sweep="bench", trial="t", task=task, scale="s0", seed=0)
    best = {"cheap": float("inf"), "read": float("inf"), "values": float("inf")}
    n_values = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        run_cheap_probes(model, data, cfg.probe, 0, RowBuffer(key))
        best["cheap"] = min(best["cheap"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        layers, levels = read_all(model, data, positions, diag)
        t1 = time.perf_counter()
        n_values = len(definition_values(layers, n_blocks, defs, levels))
        t2 = time.perf_counter()
        best["read"] = min(best["read"], t1 - t0)
        best["values"] = min(best["values"], t2 - t1)
    total = best["read"] + best["values"]
    return "\n".join([
        f"## Multiverse: one probe step recomputed (`benchmarks/{Path(__file__).name}`)", "",
        f"{task} s0 at initialisation, {len(data.levels)} levels of "
        f"{', '.join(str(len(e)) for e in data.diag)} diagnostic samples, {len(defs)} "
        f"definitions (samples {k} and {diag}), {n_values} values per step. Minimum over "
        f"{rounds} alternating rounds, one torch thread, both sides in the same process. "
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, torch "
        f"{torch.__version__}.", "",
        "| path | seconds per probe step | ratio |", "|---|---|---|",
        f"| the trial's cheap probe step (`run_cheap_probes`, baseline) | {best['cheap']:.3f} "
        "| 1.0 |",
        f"| multiverse: read every layer at every position | {best['read']:.3f} | "
        f"{best['read'] / best['cheap']:.1f} |",
        f"| multiverse: every definition's value | {best['values']:.3f} | "
        f"{best['values'] / best['cheap']:.1f} |",
        f"| multiverse: the whole step | {total:.3f} | {total / best['cheap']:.1f} |", "",
        "A study's multiverse costs this per kept probe step and trial, once (the rows are "
        "kept in RUN_DIR/multiverse/); the claims' analysis over them is separate.",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="MOD")
    parser.add_argument("--diag", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    text = run(args.task, args.diag, args.rounds)
    print(text)
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
