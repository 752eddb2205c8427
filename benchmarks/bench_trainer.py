"""Trainer steps per second, probes off and on, against a bare PyTorch loop, side by side.

The bare loop is what a researcher would write by hand for the same model and the same
batches: ``model(input_ids).logits``, cross-entropy on the answer positions, backward,
clip, AdamW. It skips everything emerge adds (batch sampling, the lr schedule, per-level
forwards, logits at answer positions only), so the ratio shows what emerge costs or saves.

"Probes on" is a whole default run: 200+ probe steps, each a forward pass over the 1,000-
sample diagnostic set per level with RankMe and linear probes per layer, commits and weight
checkpoints included. Its steps/s is total steps over total wall time.

    python benchmarks/bench_trainer.py [--tasks MOD,COPY,ADD] [--threads 1] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, markdown_table, write_section

from emergence_core.config import resolve_config
from emergence_core.trial.runner import run_trial
from emergence_core.trial.trainer import Trainer


def bare_loop(trainer: Trainer, steps: int, start: int) -> float:
    """Seconds for ``steps`` updates of a hand-written loop on the trainer's own batches."""
    model = trainer.model
    opt = torch.optim.AdamW(model.parameters(), lr=trainer.cfg.lr, betas=trainer.cfg.betas,
                            weight_decay=trainer.cfg.weight_decay)
    batches = [trainer.batch(start + i) for i in range(steps)]  # data prepared outside timing
    t0 = time.perf_counter()
    for parts in batches:
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for p in parts:
            logits = model(input_ids=p.inputs).logits  # [b, T, V], every position
            picked = logits.gather(1, p.positions[..., None].expand(-1, -1, logits.shape[-1]))
            loss = loss + F.cross_entropy(picked.flatten(0, 1), p.targets.flatten())
        (loss / len(parts)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return time.perf_counter() - t0


def trainer_loop(trainer: Trainer, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return time.perf_counter() - t0


def measure(task: str, block: int, rounds: int) -> dict[str, float]:
    cfg = resolve_config(task, "s0", 0, device="cpu")
    trainer = Trainer(cfg)
    bare, ours = [], []
    for r in range(rounds):  # alternate, so drift in machine load hits both sides alike
        bare.append(block / bare_loop(trainer, block, start=r * block))
        ours.append(block / trainer_loop(trainer, block))
    with tempfile.TemporaryDirectory() as tmp:
        out = run_trial(cfg, Path(tmp))
    return {
        "bare": statistics.median(bare), "off": statistics.median(ours),
        "on": out.steps_run / out.train_wall_s, "steps": cfg.steps,
        "probes": len(trainer.probe_steps),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="MOD,COPY,ADD")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--block", type=int, default=40, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [["task (s0)", "bare loop steps/s", "emerge, probes off", "ratio",
             "emerge, probes on (whole run)", "ratio", "run: steps / probes"]]
    for task in args.tasks.split(","):
        m = measure(task, args.block, args.rounds)
        rows.append([task, f"{m['bare']:.1f}", f"{m['off']:.1f}", f"{m['off'] / m['bare']:.2f}",
                     f"{m['on']:.1f}", f"{m['on'] / m['bare']:.2f}",
                     f"{m['steps']} / {m['probes']}"])
        print(markdown_table(rows), flush=True)
    text = ("### Trainer throughput (`benchmarks/bench_trainer.py`)\n\n"
            f"{header(args.threads)} Batch 192 (64 per level), scale s0, CPU. Ratios are "
            "emerge / bare loop (above 1: emerge is faster).\n\n" + markdown_table(rows))
    if args.write:
        write_section("trainer", text)


if __name__ == "__main__":
    main()
