"""The checks an LLC estimate is judged by, run by run (their statement, references and
failure modes are in :mod:`emergence_core.measures.llc_calibration` and docs/methods.md
§3.4): stationarity and the basin (checks 1 and 2, every estimate), and the relative change
with its Monte Carlo error that checks 3 and 4 compare between two runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from emergence_core.measures.llc import LLCResult

__all__ = ["basin_scale", "change", "change_noise", "not_a_minimum", "sound"]


def basin_scale(init_loss: float, untrained_loss: float) -> float:
    """The scale the basin check measures the rise against (check 2)."""
    return max(untrained_loss - init_loss, abs(init_loss))


def change(a: LLCResult, b: LLCResult) -> float | None:
    """|a - b| / |b|, the change checks 3 and 4 bound; None when either is not finite."""
    if not (math.isfinite(a.value) and math.isfinite(b.value)):
        return None
    return abs(a.value - b.value) / max(abs(b.value), 1e-12)


def change_noise(a: LLCResult, b: LLCResult, z: float | None) -> float | None:
    """z x the Monte Carlo error of a - b, relative to |b| as ``change`` is; None when not
    judged (z None) or not computable."""
    if z is None or not (math.isfinite(a.value) and math.isfinite(b.value)):
        return None
    se = math.hypot(a.mcse, b.mcse)
    return z * se / max(abs(b.value), 1e-12) if math.isfinite(se) else None


def sound(r: LLCResult, max_rise: float) -> tuple[bool, bool]:
    """(check 1, check 2) of a run: stationary (every chain finite, split-R-hat), and a rise
    in (0, max_rise]."""
    rise = r.loss_rise
    return r.checks.get("stationary", False), math.isfinite(rise) and 0 < rise <= max_rise


def not_a_minimum(runs: Iterable[LLCResult | None], init_loss: float) -> str:
    """The verdict that opens the reason when most points' chains found lower loss than
    L(w*): w* is then no local minimum of the batch loss and the LLC is not defined there, a
    property of the checkpoint that no step size or localisation changes. Empty otherwise."""
    rises = sorted(r.loss_rise for r in runs if r is not None and math.isfinite(r.loss_rise))
    down = [x for x in rises if x <= 0]
    if not rises or 2 * len(down) <= len(rises):
        return ""
    return (f"not a minimum: the chains found lower loss than L(w*) = {init_loss:.3g} at "
            f"{len(down)} of {len(rises)} points (rises {down[0]:.3g} to {down[-1]:.3g}), so "
            "w* is no local minimum of the batch loss and its LLC is undefined; a checkpoint "
            "nearer one (trained longer) can be measured. ")
