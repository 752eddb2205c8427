"""Live alerts: an online detector inside the trial that watches the cheap measures.

Two kinds, each tied to one level of the task:

- **precursor**: a geometric series of the level (RankMe centred or uncentred, or the linear
  probe, at one layer and read position) *leaves its recent regime* while the level's
  chance-corrected accuracy is still below the emergence threshold and no event of the level
  has been confirmed;
- **approach**: the level's chance-corrected accuracy itself leaves its regime upwards while
  below the threshold: the capability has started to rise.

The change-point rule, per series (``AlertConfig`` holds the numbers): the *reference* is the
last ``window`` values of the series. A new value ``x`` *departs* when
``|x - m| > k * s`` with ``m`` the reference's median and ``s`` its robust spread,
``max(1.4826 * MAD, rel_floor * |m|, abs_floor)``; the floors keep a flat series (a RankMe
stuck at its collapse floor, an accuracy at chance) from alerting on rounding noise. An alert
is raised when ``confirm`` consecutive values depart on the same side (the approach rule
takes ``approach_confirm``, 1 by default: on the study's tasks a capability can go from
chance to past the threshold within two probe steps); its *estimated onset* is the step of
the first of them. A steady trend does not alert: each new value of a linear
ramp lies about ``window / 2`` steps from the reference median, inside ``k`` spreads of a
ramp's MAD; a break in slope or level does. After an alert the series re-arms on its new
regime: the departing values become the start of a fresh reference, which must fill up again
before the next alert. No series alerts before ``min_step``, the share of training that the
study's early collapse to the floors takes (log-spaced probes make that transient look like a
regime change at every layer).

The detector is a pure function of the rows the trial commits, fed step by step: a resumed
or retried trial feeds it its committed rows again (``runner``) and then decides exactly
what the first attempt decided. Alert rows go to ``alerts/<trial>/`` (``ALERTS_SCHEMA``), written
the moment they fire and pruned like metric parts on a resume.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from emergence_core.config import AlertConfig
from emergence_core.emergence_rule import chance_corrected
from emergence_core.metrics import ALERTS_SCHEMA, Measure, TrialKey

__all__ = ["ALERTS_SCHEMA", "Alert", "AlertDetector", "alerts_table", "watched"]

PRECURSOR, APPROACH = "precursor", "approach"

_GEOMETRY = (Measure.RANKME, Measure.RANKME_UNCENTRED, Measure.LINEAR_PROBE)


def watched(measure: str) -> bool:
    """A cheap geometric measure the precursor rule watches (any read position)."""
    return measure.split("@")[0] in _GEOMETRY


@dataclass(frozen=True)
class Alert:
    kind: str
    measure: str
    layer: int | None
    level: int
    step: int
    onset_step: int
    value: float
    reference: float
    score: float
    accuracy: float

    def line(self) -> str:
        where = f"L{self.level}" + ("" if self.layer is None else f" layer {self.layer}")
        what = "accuracy rising" if self.kind == APPROACH else f"{self.measure} left its regime"
        return (f"{self.kind} alert: {what} ({where}; {self.reference:.3g} -> {self.value:.3g},"
                f" {self.score:+.1f} spreads) from step {self.onset_step}, seen at {self.step};"
                f" accuracy {self.accuracy:.2f} (chance-corrected)")


@dataclass
class _Series:
    """The change-point rule's state for one series."""

    reference: deque = field(default_factory=deque)
    run: list = field(default_factory=list)  # consecutive departing (step, value, side)


class AlertDetector:
    """Feeds each probe step's rows through the rule; returns the alerts it raises."""

    def __init__(self, cfg: AlertConfig, *, total_steps: int, threshold: float,
                 chance: dict[int, float]) -> None:
        self.cfg = cfg
        self.threshold = threshold
        self.chance = chance
        self.min_step = cfg.min_step * total_steps
        self.series: dict[tuple, _Series] = {}
        self.fired: list[Alert] = []

    def update(self, step: int, rows: Iterable[tuple[str, int | None, int | None, float]],
               events: dict[int, int]) -> list[Alert]:
        """``rows``: (measure, layer, level, value) measured at ``step``; ``events``: the
        levels whose emergence is confirmed so far (no alert of theirs is raised)."""
        if not self.cfg.enabled:
            return []
        rows = list(rows)
        acc = {lv: chance_corrected(v, self.chance.get(lv, 0.0))
               for m, layer, lv, v in rows if m == Measure.ACCURACY and lv is not None}
        new: list[Alert] = []
        for lv, a in sorted(acc.items()):
            hit = self._see((APPROACH, Measure.ACCURACY, None, lv), step, a, lv, acc, events,
                            up_only=True, abs_floor=self.cfg.approach_floor,
                            confirm=self.cfg.approach_confirm)
            new += [hit] if hit else []
        for m, layer, lv, v in rows:
            if lv is None or v is None or not watched(m):
                continue
            hit = self._see((PRECURSOR, m, layer, lv), step, v, lv, acc, events,
                            up_only=False, abs_floor=self.cfg.abs_floor, confirm=self.cfg.confirm)
            new += [hit] if hit else []
        # one order however the rows came (live or read back), for replayable decisions
        new.sort(key=lambda a: (a.kind, a.measure, a.level, -1 if a.layer is None else a.layer))
        self.fired += new
        return new

    def _see(self, key: tuple, step: int, x: float, level: int, acc: dict[int, float],
             events: dict[int, int], *, up_only: bool, abs_floor: float, confirm: int
             ) -> Alert | None:
        c = self.cfg
        s = self.series.setdefault(key, _Series(deque(maxlen=c.window)))
        if not np.isfinite(x):
            return None
        if step < self.min_step or len(s.reference) < c.window:
            s.reference.append(x)  # warming up: the reference fills, nothing is judged
            return None
        ref = np.fromiter(s.reference, float)
        med = float(np.median(ref))
        spread = max(1.4826 * float(np.median(np.abs(ref - med))), c.rel_floor * abs(med),
                     abs_floor)
        z = (x - med) / spread
        side = int(np.sign(z)) if abs(z) > c.k and (z > 0 or not up_only) else 0
        if side == 0 or (s.run and s.run[-1][2] != side):
            s.reference.extend(v for _, v, _ in s.run)  # a blip: it joins the regime
            s.reference.append(x)
            s.run = []
            return None
        s.run.append((step, x, side))
        if len(s.run) < confirm:
            return None
        onset = s.run[0][0]
        s.reference = deque((v for _, v, _ in s.run), maxlen=c.window)  # re-arm: new regime
        s.run = []
        a = acc.get(level, float("nan"))
        if level in events or not a < self.threshold:
            return None  # the level has emerged, or is above threshold: not a precursor
        kind, measure, layer, _ = key
        return Alert(kind, measure, layer, level, step, onset, x, med, z, a)


def alerts_table(key: TrialKey, attempt: int, alerts: list[Alert]) -> pa.Table:
    now = int(time.time() * 1000)
    n = len(alerts)
    cols = {
        "sweep": [key.sweep] * n, "trial": [key.trial] * n, "task": [key.task] * n,
        "scale": [key.scale] * n, "seed": [key.seed] * n,
        **{f: [getattr(a, f) for a in alerts] for f in
           ("kind", "measure", "layer", "level", "step", "onset_step", "value", "reference",
            "score", "accuracy")},
        "attempt": [attempt] * n, "wall_time": [now] * n,
    }
    cols["wall_time"] = pa.array(cols["wall_time"], pa.int64()).cast(
        pa.timestamp("ms", tz="UTC"))
    return pa.Table.from_pydict(cols, schema=ALERTS_SCHEMA)
