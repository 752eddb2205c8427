"""A full-scale (s4, 85M parameters) trial on a GPU: steps/s, memory, achieved FLOP/s.

Achieved FLOP/s counts 6 N per trained token (forward and backward through N parameters;
attention's T^2 terms are under 1% at these sequence lengths) and is set against the same
GPU's measured dense matmul rate in the trial's precision (fp32, and TF32 where allowed),
run side by side in the same process. "Probes on" adds the cheap probes of a full.yaml run
(201 probe steps over 40,000 steps) at their measured cost per probe. BF16 is the trial's
``precision: bf16`` (autocast, float32 master weights); on CUDA every row uses the fused
AdamW. The Hessian's lambda_max (128-sample probe batch, default settings, no trace) is
timed with the torch Lanczos and with ARPACK on the same s4 model at initialisation.

    python benchmarks/bench_gpu_trial.py [--task COPY] [--steps 60] [--out results.json]
    python benchmarks/bench_gpu_trial.py --from-json results.json --write   # the table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emergence_core.config import estimate, resolve_config  # noqa: E402
from emergence_core.expensive import trial_probe_batch  # noqa: E402
from emergence_core.measures import HessianSettings, estimate_hessian  # noqa: E402
from emergence_core.metrics import RowBuffer, TrialKey  # noqa: E402
from emergence_core.trial.trainer import Trainer  # noqa: E402


def matmul_rate(dtype: torch.dtype, n: int = 8192, reps: int = 10) -> float:
    """Dense n x n x n matmul FLOP/s (mean of ``reps`` after 3 warm-ups)."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def trial_rate(task: str, steps: int, tf32: bool, precision: str = "fp32") -> dict[str, float]:
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    cfg = resolve_config(task, "s4", 0, steps=40000, device="cuda", precision=precision)
    tr = Trainer(cfg)
    for _ in range(5):
        tr.train_step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.train_step()
    torch.cuda.synchronize()
    sps = steps / (time.perf_counter() - t0)
    train_mem = torch.cuda.max_memory_allocated()
    rows = RowBuffer(TrialKey("bench", cfg.trial_name(), cfg.task, cfg.scale, 0))
    tr.probe(rows)  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(3):
        tr.probe(rows)
    torch.cuda.synchronize()
    probe_s = (time.perf_counter() - t0) / 3
    est = estimate(cfg)
    flops_per_step = est.train_flops / cfg.steps
    n_probes = len(tr.probe_steps)
    whole_run_s = cfg.steps / sps + n_probes * probe_s
    return {"steps_per_s": sps, "tflops": sps * flops_per_step / 1e12,
            "peak_mem_gib": max(train_mem, torch.cuda.max_memory_allocated()) / 2**30,
            "probe_s": probe_s, "steps_per_s_with_probes": cfg.steps / whole_run_s,
            "params": est.params, "tokens_per_step": flops_per_step / (6 * est.params)}


def lanczos_rate(task: str) -> dict[str, dict[str, float]]:
    """lambda_max of the s4 model by each Lanczos: wall seconds, products, value."""
    torch.backends.cuda.matmul.allow_tf32 = False
    tr = Trainer(resolve_config(task, "s4", 0, steps=40000, device="cuda"))
    batch = trial_probe_batch(tr.data, 128, seed=0, device="cuda")
    out = {}
    for method in ("torch", "arpack"):
        r = estimate_hessian(tr.model, batch, HessianSettings(trace_probes=0, lanczos=method))
        out[method] = {"wall_s": r.wall_s, "n_hvps": r.n_hvps, "lambda_max": r.lambda_max,
                       "converged": r.converged}
    return out


def table(res: dict) -> str:
    """BENCHMARKS.md's section from a results file."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import markdown_table

    rows = [["precision", "steps/s", "achieved TFLOP/s", "matmul TFLOP/s (same GPU)",
             "share of matmul", "peak memory", "one probe step", "steps/s, probes on"]]
    for key, peak in (("fp32", "matmul_fp32_tflops"), ("tf32", "matmul_tf32_tflops"),
                      ("bf16", "matmul_bf16_tflops")):
        if key not in res:  # results recorded before the bf16 path existed
            continue
        r = res[key]
        rows.append([key.upper() if key != "fp32" else "FP32 (default)",
                     f"{r['steps_per_s']:.1f}", f"{r['tflops']:.1f}", f"{res[peak]:.0f}",
                     f"{r['tflops'] / res[peak]:.0%}", f"{r['peak_mem_gib']:.1f} GiB",
                     f"{r['probe_s']:.2f} s", f"{r['steps_per_s_with_probes']:.1f}"])
    r = res["fp32"]
    return (
        "### A full-scale trial on a GPU (`benchmarks/bench_gpu_trial.py`)\n\n"
        f"{res['gpu']}, torch {res['torch']}; scale s4 ({r['params'] / 1e6:.1f}M parameters), "
        f"task {res['task']} (its three levels: {r['tokens_per_step']:.0f} tokens per step at "
        "batch 192), AdamW, probes as in sweeps/full.yaml (201 probe steps over 40,000 steps, "
        "1,000 diagnostic samples per level). Achieved FLOP/s counts 6 N per trained token; "
        f"the same GPU's dense 8192^3 matmul ran at {res['matmul_fp32_tflops']:.0f} TFLOP/s "
        f"in FP32, {res['matmul_tf32_tflops']:.0f} in TF32 and "
        f"{res['matmul_bf16_tflops']:.0f} in BF16, measured in the same process.\n\n"
        + markdown_table(rows) + "\n\n" + (_reading(res) if "bf16" in res else
        "Reading: in FP32 a step reaches half of the GPU's FP32 matmul rate; with TF32 "
        "the matmuls get 8x faster but a step only 13%: the per-level batches (64 sequences "
        "of 10 to 34 tokens) are too small to fill an H200, so kernel launches and the "
        "optimizer dominate. Larger batches, BF16 autocast or CUDA graphs are where the next "
        "factor lies. A probe step costs ~60 training steps (RankMe's SVDs and the linear "
        "probes per layer run as many small kernels; cuSOLVER also warned of slow SVD "
        "convergence), so probes take a quarter of a full.yaml run's time on this GPU."))


def _reading(res: dict) -> str:
    """What a run with the bf16 row and the Lanczos timings shows, in numbers."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import markdown_table

    fp32, bf16 = res["fp32"], res["bf16"]
    lz = res["lanczos"]
    rows = [["Lanczos", "wall s", "HVPs", "lambda_max", "converged"]]
    rows += [[m, f"{lz[m]['wall_s']:.2f}", str(lz[m]["n_hvps"]), f"{lz[m]['lambda_max']:.6g}",
              str(lz[m]["converged"])] for m in ("torch", "arpack")]
    return (f"Reading: BF16 trains at {bf16['steps_per_s'] / fp32['steps_per_s']:.2f}x FP32's "
            f"steps/s; a probe step costs {fp32['probe_s'] * fp32['steps_per_s']:.0f} FP32 "
            f"training steps ({bf16['probe_s'] * bf16['steps_per_s']:.0f} BF16 ones). "
            "The Hessian's lambda_max at s4 (128 samples, residual product included):\n\n"
            + markdown_table(rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="COPY")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--from-json", type=Path, help="print (and --write) a saved result")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if args.from_json:
        text = table(json.loads(args.from_json.read_text()))
        print(text)
        if args.write:
            from _common import write_section

            write_section("gpu", text)
        return
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "task": args.task}
    torch.backends.cuda.matmul.allow_tf32 = False
    res["matmul_fp32_tflops"] = matmul_rate(torch.float32) / 1e12
    torch.backends.cuda.matmul.allow_tf32 = True
    res["matmul_tf32_tflops"] = matmul_rate(torch.float32) / 1e12
    res["matmul_bf16_tflops"] = matmul_rate(torch.bfloat16) / 1e12
    res["fp32"] = trial_rate(args.task, args.steps, tf32=False)
    res["tf32"] = trial_rate(args.task, args.steps, tf32=True)
    res["bf16"] = trial_rate(args.task, args.steps, tf32=True, precision="bf16")
    res["lanczos"] = lanczos_rate(args.task)
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
