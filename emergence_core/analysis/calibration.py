"""The report's section on the per-trial calibration of expensive measures (the LLC's pilot).

Reads the calibration records a run folder keeps (``calibrations.calibrations``: per trial and
measure, the pilot's grid and the choice fixed for the trial) and renders them, so a reader
sees which step size and localisation every LLC value was computed with, and which trials'
values are "not converged" because no setting met the criteria.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["calibration_section"]


def _num(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _stiffness(r: Mapping[str, Any]) -> str:
    """S of the gamma-independent tier, and the localised tier's where it was measured."""
    s, loc = r.get("n_beta_lambda_max"), r.get("localised_stiffness")
    return _num(s) + (f" ({_num(loc)})" if loc is not None and loc != s
                      and r.get("lambda_basin") is not None else "")


def calibration_section(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: one row per (trial, measure) calibration; nothing when there is none."""
    if not records:
        return []
    lines = ["## Calibration of the expensive measures", "",
             "Each trial's pilot ran on one checkpoint and fixed the settings below for all its "
             "checkpoints (docs/methods.md, the LLC's default procedure). A setting passes "
             "when its chains are stationary (split R-hat <= rhat_max), stay in the basin "
             "(0 < rise of the sampled loss <= max_rise_fraction x max(untrained loss - "
             "L(w*), L(w*))), and the value moves by at most max_halving_change when eps "
             "halves and by at most max_localisation_change when gamma is ten times weaker. "
             "With the relaxation budget on, each setting's chains run a burn-in of "
             "relaxation_burnin and keep relaxation_kept relaxation times tau = 1 / (eps x "
             "gamma), and a setting needing more than max_draws per chain is not run. When no "
             "setting passes, the localised tier estimates the LLC at the stated gamma = "
             "localised x n_beta x lambda_max, its chains relaxed under gamma, and check 4 is "
             "that bound: a localised value compares across the checkpoints of its trial, not "
             "with another model's learning coefficient. The grid's eps and gamma are relative "
             "to the stiffness S = n_beta x lambda_max at w*; the localised tier's to the "
             "larger of that and lambda_max where the loss has risen by stiffness_rise x "
             "max_rise (in brackets).",
             "",
             "| trial | measure | pilot step | tier | chosen | value at choice | loss rise | "
             "untrained loss | R-hat | change at eps/2 | change at gamma/10 | settings tried "
             "| stiffness S (localised tier's) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        grid = r.get("grid") or []
        chosen = r.get("chosen")
        at = next((p for p in grid if chosen and p.get("eps") == chosen.get("eps")
                   and p.get("gamma") == chosen.get("gamma")), {})
        what = ", ".join(f"{k} {_num(v)}" for k, v in chosen.items()) if chosen \
            else "**not converged**"
        lines.append(f"| {r.get('trial')} | {r.get('measure')} | {r.get('step')} | "
                     f"{r.get('kind') or '-'} | {what} | "
                     f"{_num(at.get('value'))} | {_num(at.get('rise'))} | "
                     f"{_num(r.get('untrained_loss'))} | {_num(at.get('rhat'))} | "
                     f"{_num(at.get('halving_change'))} | {_num(at.get('localisation_change'))} | "
                     f"{len(grid)} | {_stiffness(r)} |")
    failed = [r for r in records if r.get("chosen") is None]
    kinds = [r.get("kind") for r in records if r.get("chosen") is not None]
    tiers = ", ".join(f"{kinds.count(k)} {k}" for k in ("gamma-independent", "localised")
                      if k in kinds)
    lines += ["", f"{len(records) - len(failed)}/{len(records)} pilots chose a setting"
                  + (f" ({tiers})." if tiers else ".")]
    if failed:
        lines += ["", f"{len(failed)}/{len(records)} calibrations found no valid setting: those "
                      "trials' values are written as nan with the convergence flag 0."]
    return [*lines, ""]
