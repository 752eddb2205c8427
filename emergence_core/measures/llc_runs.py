"""Where an LLC pilot's finished work is kept, so that a pilot stopped midway (a stopped
sweep, a lost actor) resumes at its first unfinished run and chooses what it would have
chosen uninterrupted (:mod:`emergence_core.measures.llc_calibration`).

Everything a pilot computes is deterministic given what it states: its runs are seeded by
their settings, its Lanczos curvatures by theirs, and both depend on the checkpoint only
through the weights, whose loss L(w*) is part of every key. A value read back is the value
it would compute again. ``emergence_core.calibrations.PilotRuns`` keeps them in the run
folder, one file each.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol

from torch import nn

from emergence_core.measures.llc import (
    LLCResult,
    LLCSettings,
    LossBatch,
    SGLDChains,
    estimate_llc_chains,
)

__all__ = ["PilotLedger", "RunStore"]


class RunStore(Protocol):
    """Where a pilot keeps its finished runs. ``key`` states the run whole (its settings and
    L(w*) at the checkpoint); the value is the run's ``LLCResult`` as JSON-safe fields, or a
    curvature the pilot measured (``{"values": [...]}``: lambda_max at w* and at the basin's
    edge, minutes of Lanczos each on a CPU)."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any]) -> None: ...


def _key(what: dict[str, Any]) -> str:
    return json.dumps(what, sort_keys=True, default=str)


class PilotLedger:
    """One pilot's runs and curvatures, computed or read back from ``store`` (None: always
    computed), with the counts its record reports: ``reused`` (read back) and ``carried``
    (runs lengthened from where their chains stopped rather than from w*)."""

    def __init__(self, store: RunStore | None) -> None:
        self.store = store
        self.reused = 0
        self.carried = 0

    def kept(self, what: dict[str, Any],
             compute: Callable[[], tuple[float, ...]]) -> tuple[float, ...]:
        """``compute()``, deterministic numbers that ``what`` states whole, or the same
        numbers read back, where they are kept once computed."""
        if self.store is None:
            return compute()
        key = _key(what)
        held = self.store.get(key)
        if held is not None and isinstance(held.get("values"), list):
            self.reused += 1
            return tuple(float(v) for v in held["values"])
        values = compute()
        self.store.put(key, {"values": [float(v) for v in values]})
        return values

    def estimate(self, model: nn.Module, batch: LossBatch, s: LLCSettings, init_loss: float,
                 carry_on: SGLDChains | None) -> tuple[LLCResult, SGLDChains | None]:
        """``estimate_llc`` at ``s`` with its chains (None when read back), or the same run
        read back. ``carry_on``: the same point's chains at fewer draws, run on instead of
        from w* (the same draws, at the cost of the extra ones only)."""
        key = None
        if self.store is not None:
            key = _key({"settings": asdict(s), "init_loss": init_loss})
            held = self.store.get(key)
            if held is not None:
                try:
                    r = LLCResult(**{**held, "per_chain": tuple(held["per_chain"]),
                                     "loss_trace": tuple(tuple(c) for c in held["loss_trace"])})
                    self.reused += 1
                    return r, None
                except (KeyError, TypeError):
                    pass  # a record of another version's fields: run it again
        r, chains = estimate_llc_chains(model, batch, s, carry_on)
        if carry_on is not None:
            self.carried += 1
        if self.store is not None:
            self.store.put(key, asdict(r))
        return r, chains
