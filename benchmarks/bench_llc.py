"""LLC benchmark: emerge's SGLD sampler + estimator against devinterp 2.0.1's ``llc()``.

Same model, probe batch, settings (4 chains, 200 draws, n_beta = n / log n over the batch),
for plain SGLD (the first defaults, eps 1e-4, gamma 100) and RMSProp-SGLD (eps 2e-6, gamma
1000, G updated every step as devinterp does: ``rms_freeze=False``), same process and torch
thread count, run one after the other
(alternating when ``--rounds`` > 1, minimum kept). Times are CPU seconds of the process
(``time.process_time``, devinterp's Zarr writer threads included), which other jobs on a
shared machine do not inflate. Two configurations: minibatches of 32
(the default), and full batches, where both samplers draw the same noise (chain c seeded
with seed + c) so their loss traces must agree to float rounding. Values are compared
like with like: devinterp's ``llc_mean`` includes its burn-in draws, so emerge's estimator
(100 burn-in draws excluded) is also applied to devinterp's own trace.

    python benchmarks/bench_llc.py [--threads 1] [--rounds 1] [--write]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from dataclasses import replace

os.environ.setdefault("TQDM_DISABLE", "1")  # devinterp's progress bars

import torch
from _common import benchmark_model, header, markdown_table, write_section

from emergence_core.measures.llc import LLCSettings, default_n_beta, estimate_llc, llc_from_trace


def _devinterp(model, probe, s: LLCSettings, batch_size: int):
    """devinterp's llc() on the probe batch: row i of its dataset stands for sample i."""
    from datasets import Dataset
    from devinterp.slt.llc import llc

    n, a = probe.targets.shape
    dataset = Dataset.from_dict({"input_ids": [[i] + [0] * a for i in range(n)]})

    def loss_fn(m, input_ids):  # per "token" loss [b, A]: the answer positions of sample i
        ids = input_ids[:, 0]
        logits = probe.logits(m, ids)
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), probe.targets[ids],
                                                 reduction="none")

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extra = {} if s.sampler == "sgld" else dict(
            sampling_method="rmsprop_sgld", rmsprop_eps=s.rms_eps, rmsprop_alpha=s.rms_alpha)
        out = llc(model, dataset.with_format("torch"), {}, lr=s.eps, **extra,
                  n_beta=default_n_beta(n), loss_fn=loss_fn, num_chains=s.n_chains,
                  num_draws=s.n_draws, batch_size=batch_size, localization=s.gamma,
                  init_seed=s.seed, output_path=os.path.join(tmp, "s.zarr"), device="cpu")
        return (torch.tensor(out.loss_trace.values, dtype=torch.float64),
                float(out.init_loss), float(out.llc_mean))


def run(threads: int, rounds: int) -> str:
    torch.set_num_threads(threads)
    model, probe = benchmark_model()
    n = probe.n_samples
    rows = [["sampler", "minibatch", "emerge CPU s (chains looped)",
             "emerge CPU s (chains batched)", "devinterp CPU s", "time ratio (looped)",
             "time ratio (batched)",
             "LLC emerge", "LLC devinterp (burn-in excluded)",
             "devinterp llc_mean (burn-in included)", "max trace difference"]]
    f = lambda x: f"{x:.3g}"  # noqa: E731
    configs = [("sgld", 1e-4, 100.0, 32), ("sgld", 1e-4, 100.0, None),
               ("rmsprop", 2e-6, 1000.0, 32)]
    for sampler, eps, gamma, minibatch in configs:
        # devinterp's own RMSProp step: G tracking the chain, no bias correction
        s = LLCSettings(minibatch_size=minibatch, seed=0, sampler=sampler, eps=eps,
                        gamma=gamma, n_beta_of="batch", rms_freeze=False,
                        rms_bias_correction=False, batch_chains=False)
        ours_s, batched_s, theirs_s = [], [], []
        for _ in range(rounds):
            t0 = time.process_time()
            batched = estimate_llc(model, probe, replace(s, batch_chains=True))
            batched_s.append(time.process_time() - t0)
            t0, w0 = time.process_time(), time.perf_counter()
            ours = estimate_llc(model, probe, s)
            ours_s.append(time.process_time() - t0)
            w1 = time.perf_counter()
            t0 = time.process_time()
            trace, init, llc_mean = _devinterp(model, probe, s, minibatch or n)
            theirs_s.append(time.process_time() - t0)
            print(f"minibatch {minibatch}: emerge {ours_s[-1]:.1f} CPU s ({w1 - w0:.1f} wall), "
                  f"devinterp {theirs_s[-1]:.1f} CPU s ({time.perf_counter() - w1:.1f} wall)",
                  file=sys.stderr, flush=True)
        like = llc_from_trace(trace, init, default_n_beta(n), s.n_burnin)
        diff = float((torch.tensor(ours.loss_trace, dtype=torch.float64) - trace).abs().max())
        same = float((torch.tensor(ours.loss_trace, dtype=torch.float64)
                      - torch.tensor(batched.loss_trace, dtype=torch.float64)).abs().max())
        print(f"batched against looped: max trace difference {same:.3g}", file=sys.stderr)
        rows.append([f"{sampler} eps {eps:g} gamma {gamma:g}", str(minibatch or f"{n} (full)"),
                     f(min(ours_s)), f(min(batched_s)), f(min(theirs_s)),
                     f(min(ours_s) / min(theirs_s)), f(min(batched_s) / min(theirs_s)),
                     f"{ours.value:.4g} +- {ours.std:.2g}",
                     f"{like.value:.4g} +- {like.std:.2g}", f"{llc_mean:.4g}",
                     f(diff) if minibatch is None else "(different batches)"])
    return "\n".join([
        "## LLC: localised SGLD (`benchmarks/bench_llc.py`)",
        "",
        f"GPT-2, 2 layers, d 128, 4 heads, vocab 30, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters; probe batch of {n} "
        f"sequences (loss on 10 answer tokens), n_beta = n / log n = {default_n_beta(n):.4g}; "
        "4 chains x 200 draws, 100 burn-in draws excluded (+- is the std across chains). "
        "Time ratio: emerge's CPU time over devinterp's (goal: at most 0.5), with the chains "
        "one at a time (the CPU default) and as one vmapped computation (the accelerator "
        "default); the two give the same draws to float rounding. "
        f"Minimum over {rounds} round(s). " + header(threads),
        "",
        markdown_table(rows),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    text = run(args.threads, args.rounds)
    print(text)
    if args.write:
        write_section("llc", text)


if __name__ == "__main__":
    main()
