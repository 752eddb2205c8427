"""The LLC pilot with check 3 carrying its lengthened chains on, against running them again.

When check 3 cannot yet decide a halving (its Monte Carlo error is above the change it
judges), both runs' kept draws double. Since 0bec365 the longer run carries the shorter
run's chains on (``carry_on``) instead of running them again from w*; the draws are the same
bit for bit (tests/test_measures_llc.py::test_a_run_carried_on_draws_what_a_longer_run_draws),
so only the time differs. Both pilots run here side by side in one process, on the same
model, with lambda_max given (the Lanczos is the same on both sides and not timed), and
their grids must agree value for value.

    python benchmarks/bench_llc_pilot.py --model quadratic [--write]
    python benchmarks/bench_llc_pilot.py --model gpt2 [--write]

``quadratic``: the regular model of lambda = d / 2 = 1 of the known-truth tests, whose
halving check is undecidable at the default 100 kept draws (chains double to >= 800).
``gpt2``: the benchmark GPT-2 (``_common.benchmark_model``), a grid of three step sizes and
two localisations plus the localised tier, two chains.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace

import torch
from _common import benchmark_model, header, markdown_table, write_section
from torch import nn

from emergence_core.measures import llc_runs
from emergence_core.measures.llc import LLCSettings, stiffness
from emergence_core.measures.llc_calibration import CalibrationSettings, calibrate_llc


class Quadratic(nn.Module):
    """L(w) = 1 + 1/2 sum_i w_i^2 at w* = 0 (h = 1): lambda = d / 2."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d, dtype=torch.float64))


class QuadraticBatch:
    n_samples, n_population = 8, None

    def loss(self, model: nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
        return 1.0 + 0.5 * (model.w**2).sum()


@contextlib.contextmanager
def rerun_from_w_star() -> Iterator[None]:
    """The pilot as before 0bec365: a lengthened run starts again from w*."""
    estimate = llc_runs.PilotLedger.estimate

    def fresh(self, model, batch, s, init_loss, carry_on):
        return estimate(self, model, batch, s, init_loss, None)

    llc_runs.PilotLedger.estimate = fresh
    try:
        yield
    finally:
        llc_runs.PilotLedger.estimate = estimate


def case(name: str):
    if name == "quadratic":
        base = LLCSettings(n_chains=4, n_beta=1000.0, minibatch_size=None)
        return Quadratic(2), QuadraticBatch(), base, None, 2.0, 1.0
    model, batch = benchmark_model()
    base = LLCSettings(n_chains=2, minibatch_size=32)
    grid = CalibrationSettings(steps=(0.2, 0.1, 0.05), localisations=(1e-2, 1e-3))
    _, lambda_max = stiffness(model, batch, base, grid.stiffness_samples)
    return model, batch, base, grid, float(torch.log(torch.tensor(30.0))), lambda_max


def run(name: str, rounds: int, threads: int) -> list[list[str]]:
    torch.set_num_threads(threads)
    model, batch, base, grid, untrained, lambda_max = case(name)
    kw = dict(untrained_loss=untrained, calibration=grid, lambda_max=lambda_max)
    best = {"carried": float("inf"), "rerun": float("inf")}
    records = {}
    for _ in range(rounds):  # alternating, so a drift in the machine's load hits both
        for side in ("carried", "rerun"):
            t0 = time.process_time()
            with contextlib.nullcontext() if side == "carried" else rerun_from_w_star():
                records[side] = calibrate_llc(model, batch, replace(base), **kw)
            best[side] = min(best[side], time.process_time() - t0)
    a, b = records["carried"], records["rerun"]
    assert [p.value for p in a.points] == [p.value for p in b.points], "the draws differ"
    assert a.chosen == b.chosen
    draws = sum(p.n_draws for p in a.points if p.affordable)
    rows = [["model", "points", "chosen", "runs carried on",
             "draws per chain, summed over the points run",
             "CPU s carried", "CPU s rerun", "time ratio (carried / rerun)"],
            [name, str(len(a.points)), a.kind or "nothing", str(a.carried), str(draws),
             f"{best['carried']:.3g}", f"{best['rerun']:.3g}",
             f"{best['carried'] / best['rerun']:.3g}"]]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("quadratic", "gpt2", "both"), default="both")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args()
    names = ("quadratic", "gpt2") if args.model == "both" else (args.model,)
    rows = []
    for name in names:
        got = run(name, args.rounds, args.threads)
        rows = rows or got[:1]
        rows += got[1:]
    text = ("## LLC pilot: lengthened runs carried on against run again "
            "(`benchmarks/bench_llc_pilot.py`)\n\n"
            "Check 3 doubles both runs' kept draws until its Monte Carlo error lets it decide. "
            "Carried: the longer run continues the shorter run's chains (the same draws, bit "
            "for bit); rerun: it starts again from w* (the pilot before 0bec365). lambda_max "
            "given, so the Lanczos is not timed; both grids agree value for value. "
            f"Minimum over {args.rounds} alternating round(s). {header(args.threads)}\n\n"
            + markdown_table(rows))
    print(text)
    if args.write:
        write_section("llc_pilot", text)


if __name__ == "__main__":
    main()
