"""Trial steps per second with the probe pool busy, against an idle pool, side by side.

A trainer runs in this process (MOD, s0) while one probe actor (0 CPUs, 1 thread, as the
sweep's default) either idles or computes Hessian jobs back to back on a checkpoint; rounds
alternate. With the trainer on 1 thread (a trial holding one CPU) the actor has the other
core; with the trainer on 2 threads the actor competes for a core.

    python benchmarks/bench_pool.py [--rounds 4] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import markdown_table, write_section

from emergence_core.config import resolve_config
from emergence_core.store import TrialStore
from emergence_core.trial.trainer import Trainer
from orchestrator.probe_pool.pool import ProbeWorker
from orchestrator.probe_pool.queue import ProbeJob

BLOCK = 40


def rate(trainer: Trainer, threads: int) -> float:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    for _ in range(BLOCK):
        trainer.train_step()
    return BLOCK / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    cfg = resolve_config("MOD", "s0", 0, device="cpu")
    trainer = Trainer(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        TrialStore(run, cfg.trial_name()).save_weights(trainer.model, 0, {})
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            actor = ray.remote(ProbeWorker).options(num_cpus=0).remote(str(run), "bench", 1)
            job = ProbeJob(cfg.trial_name(), 0, "hessian")
            args_ = (job, cfg.model_dump(mode="json"), 256, {"trace_probes": 64}, 0)
            ray.get(actor.run.remote(*args_))  # warm: the actor builds its model once
            results: dict[tuple[int, str], list[float]] = {}
            short = 0  # busy blocks that outlasted their job (not counted)
            for _ in range(args.rounds):
                for threads in (1, 2):
                    results.setdefault((threads, "idle"), []).append(rate(trainer, threads))
                    ref = actor.run.remote(*args_)
                    time.sleep(0.5)  # the actor is computing now
                    r = rate(trainer, threads)
                    if ray.wait([ref], timeout=0)[0]:
                        short += 1  # the job ended inside the block: not all of it was busy
                    else:
                        results.setdefault((threads, "busy"), []).append(r)
                    ray.get(ref)
        finally:
            ray.shutdown()
    med = {k: statistics.median(v) for k, v in results.items()}
    rows = [["trainer threads", "steps/s, pool idle", "steps/s, pool busy", "busy / idle"]]
    for threads in (1, 2):
        idle, busy = med[(threads, "idle")], med[(threads, "busy")]
        rows.append([str(threads), f"{idle:.1f}", f"{busy:.1f}", f"{busy / idle:.2f}"])
    text = ("### Trial throughput beside the probe pool (`benchmarks/bench_pool.py`)\n\n"
            f"Measured {time.strftime('%Y-%m-%d')} on this 2-core machine: MOD at s0 (batch "
            "192) trained in the driver process while one probe actor (0 CPUs, 1 torch "
            "thread) idles or runs Hessian jobs (batch 256, Lanczos plus a 64-probe trace) "
            f"back to back; {args.rounds} alternating rounds of {BLOCK} steps, medians.\n\n"
            + markdown_table(rows)
            + (f"\n\n({short} busy blocks outlasted their job and were left out.)"
               if short else ""))
    print(text)
    if args.write:
        write_section("pool", text)


if __name__ == "__main__":
    main()
