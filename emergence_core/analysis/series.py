"""Per-series math of the statistics stage: smoothing, change points, floors, lags.

Pure numpy on one series (``steps`` strictly increasing, ``values`` finite); the callers
slice series out of the long table with polars and hand them here.

Change points. Binary segmentation with the least-squares (``l2``) cost, as in
``ruptures.Binseg(model="l2", jump=1)`` (Truong, Oudre & Vayatis, "Selective review of
offline change point detection methods", Signal Processing 2020): repeatedly split the
segment whose best single split lowers the residual sum of squares the most, while that
gain exceeds the penalty. The gain of splitting ``y[a:b]`` at ``k`` has the closed form
``S_l^2/n_l + S_r^2/n_r - S^2/n`` (S: segment sums), so one scan of prefix sums finds the
best split of a segment in O(n) numpy, about 100x faster than ruptures' Python loop over
candidate splits; ``tests/test_analysis_series.py`` checks that both return the same
change points. The series is standardised by a robust noise scale sigma (MAD of first
differences / sqrt 2) so the penalty ``beta * log n`` is BIC-like: a split adds two
parameters (location and level), and ``beta = 2`` is BIC for Gaussian noise of scale sigma.
Known pitfall: a steady drift has no single regime change, and segmentation cuts it into a
staircase (at most ``max_changepoints`` steps); a measure that only drifts then gets change
points wherever the staircase falls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter

__all__ = [
    "Floor",
    "binseg",
    "changepoints",
    "collapse_floor",
    "local_spacing",
    "noise_scale",
    "smooth",
    "xcorr_lag",
]

_MAD_TO_SIGMA = 1.4826


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred running median over ``window`` probes (odd), edges padded with the end value.

    A median keeps a step sharp and in place, so smoothing moves no regime boundary; the
    window shrinks to the series' length when the series is shorter.
    """
    v = np.asarray(values, dtype=np.float64)
    w = min(window, v.size if v.size % 2 else v.size - 1)
    if w <= 1:
        return v.copy()
    return median_filter(v, size=w, mode="nearest")  # "nearest": padded with the end value


def noise_scale(values: np.ndarray) -> float:
    """Robust noise sigma of a series: 1.4826 MAD of first differences / sqrt 2.

    First differences remove slow structure, and the MAD ignores the few differences that
    straddle a regime change, so a clean step does not inflate the estimate.
    """
    d = np.diff(np.asarray(values, dtype=np.float64))
    if d.size == 0:
        return 0.0
    return float(_MAD_TO_SIGMA * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def _best_split(c1: np.ndarray, a: int, b: int, min_size: int) -> tuple[int | None, float]:
    """Best split ``k`` of ``y[a:b]`` (prefix sums ``c1``) and its gain in squared error."""
    ks = np.arange(a + min_size, b - min_size + 1)
    if ks.size == 0:
        return None, 0.0
    s = c1[b] - c1[a]
    sl = c1[ks] - c1[a]
    nl = ks - a
    nr = b - ks
    gain = sl * sl / nl + (s - sl) ** 2 / nr - s * s / (b - a)
    i = gain.size - 1 - int(np.argmax(gain[::-1]))  # ties: the later split, as ruptures
    return int(ks[i]), float(gain[i])


def binseg(y: np.ndarray, penalty: float, min_size: int = 2,
           max_changepoints: int | None = None) -> np.ndarray:
    """Change points of ``y`` by penalised binary segmentation (l2 cost), sorted.

    A change point ``k`` starts a new regime: ``y[:k]`` and ``y[k:]`` lie in different
    segments. Splits stop when the best gain is ``<= penalty`` or after ``max_changepoints``.
    """
    y = np.asarray(y, dtype=np.float64)
    n = y.size
    c1 = np.concatenate(([0.0], np.cumsum(y)))
    segments: dict[tuple[int, int], tuple[int | None, float]] = {
        (0, n): _best_split(c1, 0, n, min_size)}
    found: list[int] = []
    while max_changepoints is None or len(found) < max_changepoints:
        (a, b), (k, gain) = max(segments.items(), key=lambda kv: kv[1][1])
        if k is None or gain <= penalty:
            break
        found.append(k)
        del segments[(a, b)]
        segments[(a, k)] = _best_split(c1, a, k, min_size)
        segments[(k, b)] = _best_split(c1, k, b, min_size)
    return np.array(sorted(found), dtype=np.int64)


def changepoints(values: np.ndarray, *, window: int = 5, penalty: float = 2.0,
                 min_size: int = 3, max_changepoints: int | None = 8,
                 noise_floor: float = 0.01, smoothed: np.ndarray | None = None) -> np.ndarray:
    """Indices where the smoothed series starts a new constant-mean regime.

    The smoothed series (``smooth(values, window)``, or ``smoothed`` when the caller has it)
    is centred on its median and divided by sigma, the raw series' robust noise scale
    floored at ``noise_floor`` x the smoothed range (a noiseless series would otherwise make
    every wiggle significant); the penalty is ``penalty * log n``. A constant series has none.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2 * min_size:
        return np.zeros(0, dtype=np.int64)
    s = smooth(v, window) if smoothed is None else smoothed
    span = float(s.max() - s.min())
    sigma = max(noise_scale(v), noise_floor * span)
    if span <= 0.0 or sigma <= 0.0:
        return np.zeros(0, dtype=np.int64)
    y = (s - np.median(s)) / sigma
    return binseg(y, penalty * np.log(v.size), min_size, max_changepoints)


@dataclass(frozen=True)
class Floor:
    """The collapse floor of one series (values smoothed; steps from the series' grid)."""

    initial: float
    floor: float
    floor_step: int
    collapse_step: int
    recovery_step: int | None
    degenerate: bool

    @property
    def depth(self) -> float:
        """Fraction of the initial value lost at the floor, ``1 - floor / initial``."""
        return 1.0 - self.floor / self.initial if self.initial > 0 else float("nan")


def collapse_floor(steps: np.ndarray, values: np.ndarray, *, window: int = 5,
                   early_fraction: float = 0.5, recovery_fraction: float = 0.5,
                   reach_fraction: float = 0.05) -> Floor:
    """Collapse floor of a RankMe series (docs/methods.md §4), with the definitions fixed here.

    With ``s`` the series smoothed by ``smooth(values, window)``:

    1. *early part*: probes with ``step <= first + early_fraction * (last - first)``;
    2. *collapse amplitude* ``A``: the peak of ``s`` before the early part's minimum, less
       that minimum;
    3. *recovery*: the first probe at which ``s`` stands ``recovery_fraction * A`` above its
       running minimum (none when ``A == 0``);
    4. *floor*: the minimum of ``s`` over the early part before recovery;
    5. *collapse step* (the step at which the series reaches its floor): the first probe at
       which ``s`` is within ``reach_fraction`` of the drop (peak - floor) above the floor,
       so a flat, noisy floor does not move the time to wherever noise dips lowest.

    ``degenerate`` marks a constant series (the centred embedding layer at SEP is 0 at every
    step), which has no collapse time and is left out of the top-down test.
    """
    t = np.asarray(steps)
    s = smooth(values, window)
    idx = np.arange(s.size)
    early = t <= t[0] + early_fraction * (t[-1] - t[0])
    g = int(np.argmin(np.where(early, s, np.inf)))
    amplitude = float(s[: g + 1].max() - s[g])
    regained = s - np.minimum.accumulate(s)
    hits = np.flatnonzero(regained >= recovery_fraction * amplitude) if amplitude > 0 else []
    rec = int(hits[0]) if len(hits) else s.size
    k = int(np.argmin(np.where(early & (idx < rec), s, np.inf)))
    floor = float(s[k])
    reach = floor + reach_fraction * float(s[: k + 1].max() - floor)
    c = int(np.flatnonzero(s[: k + 1] <= reach)[0])
    span = float(s.max() - s.min())
    return Floor(initial=float(s[0]), floor=floor, floor_step=int(t[k]), collapse_step=int(t[c]),
                 recovery_step=int(t[rec]) if rec < s.size else None,
                 degenerate=span <= 1e-12 * max(1.0, float(np.abs(s).max())))


def local_spacing(steps: np.ndarray, at: float) -> float:
    """Probe interval of a grid at step ``at``: the central spacing at the nearest probe.

    ``(t[i+1] - t[i-1]) / 2`` in the interior, the one-sided spacing at either end, NaN for
    a single probe. On log-spaced probes this follows the grid's local density.
    """
    t = np.asarray(steps, dtype=np.float64)
    if t.size < 2:
        return float("nan")
    i = int(np.clip(np.searchsorted(t, at), 0, t.size - 1))
    if i > 0 and abs(t[i - 1] - at) <= abs(t[i] - at):
        i -= 1
    if i == 0:
        return float(t[1] - t[0])
    if i == t.size - 1:
        return float(t[-1] - t[-2])
    return float((t[i + 1] - t[i - 1]) / 2.0)


def xcorr_lag(a_steps: np.ndarray, a_smooth: np.ndarray, m_steps: np.ndarray,
              m_smooth: np.ndarray, event_step: int, *, max_lag: int = 10,
              window: int = 40) -> tuple[int, int, float] | None:
    """Lag (probes, steps) and correlation at which the measure's derivative best matches
    accuracy's around an event; positive means the measure changes first.

    Takes both series already smoothed. The measure is linearly interpolated onto
    accuracy's probe grid; first differences per probe are taken within ``window`` probes
    of the event and standardised; ``r(k) = mean_i da[i] * dm[i - k]`` for ``|k| <= max_lag``.
    The lag maximises ``|r|`` (a measure may fall while accuracy rises), ties to the
    smallest ``|k|``; in steps it is the accuracy grid's span from probe ``event - k`` to the
    event. Returns None when the overlap is too short or either derivative is flat.
    """
    a_steps = np.asarray(a_steps)
    inside = (a_steps >= m_steps[0]) & (a_steps <= m_steps[-1])
    grid = a_steps[inside]
    if grid.size < 4:
        return None
    a = np.asarray(a_smooth)[inside]
    m = np.interp(grid, m_steps, m_smooth)
    ie = int(np.clip(np.searchsorted(grid, event_step), 0, grid.size - 1))
    lo, hi = max(0, ie - window), min(grid.size, ie + window + 1)
    da, dm = np.diff(a[lo:hi]), np.diff(m[lo:hi])
    if da.size < 3 or da.std() == 0 or dm.std() == 0:
        return None
    da = (da - da.mean()) / da.std()
    dm = (dm - dm.mean()) / dm.std()
    n = da.size
    kmax = min(max_lag, n - 2)
    lags = np.arange(-kmax, kmax + 1)
    full = np.correlate(da, dm, mode="full")  # full[k + n - 1] = sum_j da[j + k] * dm[j]
    r = full[lags + n - 1] / (n - np.abs(lags))
    order = np.lexsort((lags, np.abs(lags)))  # ties: smallest |k|, then the negative one
    best = int(order[np.argmax(np.abs(r[order]))])
    k = int(lags[best])
    j = int(np.clip(ie - k, 0, grid.size - 1))
    return k, int(grid[ie] - grid[j]), float(r[best])
