"""Trainer steps per second, probes off and on, against a bare PyTorch loop, side by side.

The bare loop is what a researcher would write by hand for the same model and the same
batches: ``model(input_ids).logits``, cross-entropy on the answer positions, backward,
clip, AdamW. It skips everything emerge adds (batch sampling, the lr schedule, per-level
forwards, logits at answer positions only), so the ratio shows what emerge costs or saves.

"Probes on" is a whole default run: 200+ probe steps, each a forward pass over the 1,000-
sample diagnostic set per level with RankMe and linear probes per layer, commits and weight
checkpoints included. Its steps/s is total steps over total wall time, and the run's wall
time is split (``--split``) into training steps, the probe steps' forward passes, their
geometry (RankMe, linear probes), weight checkpoints, commits, the decisions (alerts,
density) and the rest, by timing those functions where the run calls them.

    python benchmarks/bench_trainer.py [--tasks MOD,COPY,ADD] [--threads 1] [--write]
    python benchmarks/bench_trainer.py --scale s1 --tasks MOD,COPY --steps 300 \
        --n-probes 60 --diag-size 300 --weights-every 1 --split --write   # the s1 study trial
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, markdown_table, write_section

import emergence_core.trial.cheap_probes as cheap_probes
import emergence_core.trial.runner as runner
from emergence_core.config import resolve_config
from emergence_core.store import TrialStore
from emergence_core.trial.decisions import Decisions
from emergence_core.trial.runner import run_trial
from emergence_core.trial.trainer import Trainer

# where a run's wall time goes: (label, owner, attribute) of the functions timed in place
PARTS = (("train steps", Trainer, "train_step"), ("probe forward", cheap_probes, "read_level"),
         ("probe geometry", cheap_probes, "geometry_rows"),
         ("weights", TrialStore, "save_weights"), ("commits", runner._Attempt, "commit"),
         ("decisions", Decisions, "at_probe"))


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


def probe_forward(trainer: Trainer, rounds: int) -> tuple[float, float]:
    """(bare, emerge) seconds of one probe step's forward passes over every level's
    diagnostic set, median over ``rounds`` alternating: the bare side runs the transformer
    and the unembedding at the answer positions under ``inference_mode``; emerge's is
    ``read_level`` (hooks capturing every layer, reading the positions, scoring)."""
    from emergence_core.model import answer_logits

    model, cfg = trainer.model, trainer.cfg.probe
    model.eval()
    sets = list(zip(trainer.data.levels, trainer.data.diag, strict=True))
    bare, ours = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _, enc in sets:
                for start in range(0, len(enc), cfg.eval_batch_size):
                    part = enc.select(torch.arange(start, min(start + cfg.eval_batch_size,
                                                              len(enc))))
                    answer_logits(model, part.inputs, part.positions)
        bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for ld, enc in sets:
            cheap_probes.read_level(model, enc, sep=ld.spec.sep_pos,
                                    answer_len=ld.spec.answer_len,
                                    positions=cfg.read_positions,
                                    batch_size=cfg.eval_batch_size)
        ours.append(time.perf_counter() - t0)
    model.train()
    return statistics.median(bare), statistics.median(ours)


def timed_run(cfg, split: bool) -> tuple[float, int, dict[str, float]]:
    """(wall s, steps run, seconds per part) of a whole ``run_trial`` of ``cfg``."""
    spent: dict[str, float] = defaultdict(float)

    def timer(label, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - t0
        return wrapper

    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        for label, owner, name in PARTS if split else ():
            stack.enter_context(mock.patch.object(owner, name,
                                                  timer(label, getattr(owner, name))))
        out = run_trial(cfg, Path(tmp))
    return out.train_wall_s, out.steps_run, dict(spent)


def measure(task: str, block: int, rounds: int, scale: str = "s0", split: bool = False,
            **overrides) -> dict:
    cfg = resolve_config(task, scale, 0, device="cpu", **overrides)
    trainer = Trainer(cfg)
    bare, ours = [], []
    for r in range(rounds):  # alternate, so drift in machine load hits both sides alike
        bare.append(block / bare_loop(trainer, block, start=r * block))
        ours.append(block / trainer_loop(trainer, block))
    fwd_bare, fwd_ours = probe_forward(trainer, rounds)
    wall, steps, parts = timed_run(cfg, split)
    return {
        "bare": statistics.median(bare), "off": statistics.median(ours),
        "on": steps / wall, "steps": cfg.steps, "probes": len(trainer.probe_steps),
        "wall": wall, "parts": parts, "params": trainer.n_params,
        "fwd_bare": fwd_bare, "fwd_ours": fwd_ours, "train_step": 1 / statistics.median(bare),
    }


def split_row(task: str, m: dict) -> list[str]:
    """The run's wall time by part, in seconds and shares; 'bare' is what its steps cost
    in the hand-written loop, so 'train steps' minus it is emerge's training overhead."""
    parts, wall = m["parts"], m["wall"]
    # nested: the forward and geometry run inside the trainer's probe, not in train_step
    rest = wall - sum(parts.values())
    cells = [f"{parts.get(label, 0.0):.1f} ({parts.get(label, 0.0) / wall:.0%})"
             for label, _, _ in PARTS]
    return [task, f"{wall:.1f}", f"{m['steps'] / m['bare']:.1f}", *cells,
            f"{rest:.1f} ({rest / wall:.0%})", f"{m['steps']} / {m['probes']}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="MOD,COPY,ADD")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--block", type=int, default=40, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scale", default="s0")
    ap.add_argument("--steps", type=int, help="the whole run's steps (default: the task's)")
    ap.add_argument("--n-probes", type=int, help="probe steps in the whole run")
    ap.add_argument("--diag-size", type=int, help="diagnostic problems per level")
    ap.add_argument("--weights-every", type=int, help="keep weights every k probe steps")
    ap.add_argument("--split", action="store_true", help="split the whole run's wall time")
    ap.add_argument("--section", help="BENCHMARKS.md section (default: trainer, or "
                    "trainer-SCALE)")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides: dict = {}
    if args.steps:
        overrides["steps"] = args.steps
    if args.diag_size:
        overrides["diag_size"] = args.diag_size
    if args.n_probes:
        overrides["probe"] = {"n_probes": args.n_probes}
    if args.weights_every:
        overrides["checkpoint"] = {"weights_every": args.weights_every}
    s = args.scale
    rows = [[f"task ({s})", "bare loop steps/s", "emerge, probes off", "ratio",
             "emerge, probes on (whole run)", "ratio", "run: steps / probes"]]
    split = [["task", "whole run s", "its steps in the bare loop s",
              *[f"{label} s" for label, _, _ in PARTS], "rest s", "steps / probes"]]
    forward = [["task", "one training step s (bare loop)", "probe forward, bare s",
                "probe forward, emerge s", "ratio", "probe forward / training step"]]
    params = 0
    for task in args.tasks.split(","):
        m = measure(task, args.block, args.rounds, s, args.split, **overrides)
        params = m["params"]
        rows.append([task, f"{m['bare']:.1f}", f"{m['off']:.1f}", f"{m['off'] / m['bare']:.2f}",
                     f"{m['on']:.2f}", f"{m['on'] / m['bare']:.2f}",
                     f"{m['steps']} / {m['probes']}"])
        print(markdown_table(rows), flush=True)
        forward.append([task, f"{m['train_step']:.3f}", f"{m['fwd_bare']:.3f}",
                        f"{m['fwd_ours']:.3f}", f"{m['fwd_ours'] / m['fwd_bare']:.2f}",
                        f"{m['fwd_ours'] / m['train_step']:.1f}"])
        print(markdown_table(forward), flush=True)
        if args.split:
            split.append(split_row(task, m))
            print(markdown_table(split), flush=True)
    cut = "".join(f", {k.replace('_', ' ')} {v}" for k, v in sorted(overrides.items()))
    text = (f"### Trainer throughput{'' if s == 's0' else f' at {s}'} "
            "(`benchmarks/bench_trainer.py`)\n\n"
            f"{header(args.threads)} Batch 192 (64 per level), scale {s} "
            f"({params / 1e6:.2f}M parameters){cut}, CPU. Ratios are emerge / bare loop "
            "(above 1: emerge is faster).\n\n" + markdown_table(rows)
            + "\n\nOne probe step's forward passes over every level's diagnostic set, against "
            "a bare forward of the same inputs (the transformer and the unembedding at the "
            "answer positions under `inference_mode`, nothing captured); emerge's captures "
            "every layer's residual stream, reads the positions and scores the answers. Medians "
            "of the same alternating rounds.\n\n" + markdown_table(forward))
    if args.split:
        text += ("\n\nThe whole run's wall time by part (seconds, share of the run), each "
                 "timed where the run calls it; the probe forward and geometry run inside the "
                 "probe step, the rest is what no timer covers (the probe step's behaviour "
                 "rows, data, the loop itself).\n\n" + markdown_table(split))
    if args.write:
        write_section(args.section or ("trainer" if s == "s0" else f"trainer-{s}"), text)


if __name__ == "__main__":
    main()
