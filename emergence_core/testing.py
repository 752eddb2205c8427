"""Test fixtures: synthetic metrics tables with planted structure, at any size (tests,
benchmark, notebook), kept out of the statistics stage they test.

Every answer of the statistics stage is planted and returned beside the table:

- accuracy of (task i, level j, scale k, seed s) jumps (steep logistic) so that the event
  is exactly probe ``first_event + task_gap*i + level_gap*j + scale_shift*k + jitter(s)``
  (plus ``task_scale_slope`` x k for the tasks listed there, to make orders flip across
  scales); ``logprob`` crosses its normalised threshold ``logprob_offset`` probes earlier;
- every geometric measure changes by a sharp step ``leads[measure]`` probes before each
  event (negative: after), so lead and class are known; expensive measures are pooled
  over levels and probed every ``expensive_every`` probes, their change on the last
  checkpoint at or before ``event - lead`` (so lead 0 stays within one checkpoint interval);
- per-layer RankMe falls linearly from its initial value to its floor, reaching it at
  probe ``collapse_index + layer_gap * (L - j)`` for layer j (top-down) or
  ``collapse_index + layer_gap * (j - 1)`` (bottom-up, for ``bottom_up_tasks``); the final
  layer's floor is ``task_floors[task] * (1 + delta_k)``, ``delta`` evenly spread over
  ``[-floor_spread, floor_spread]`` across scales, so each task's floor CV is known.
  Layer 0 (the embedding output at SEP) is constant 0. Uncentred RankMe is
  ``uncentred_scale`` x centred + 1, the pooled series ``pooled_scale`` x a level's;
- chance rows (``chance``; log-prob baseline at the start's log-prob), logged once.

The table has the real schema (``METRICS_SCHEMA``); noise is Gaussian with sd ``noise``
times each change's size, far below it, so the planted answers are exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from emergence_core.metrics import METRICS_SCHEMA, Measure, measure_name

__all__ = ["SyntheticConfig", "Truth", "generate", "probe_steps", "pythia_steps",
           "write_synthetic"]

_LEADS = ((Measure.RANKME, 6), (Measure.RANKME_UNCENTRED, 6), (Measure.LINEAR_PROBE, 0),
          (Measure.HESSIAN_LAMBDA_MAX, 12), (Measure.HESSIAN_TRACE, 0), (Measure.LLC, -12),
          (Measure.FISHER_ERANK, 12), (Measure.GRADCOV_ERANK, 0))
_EXPENSIVE = (Measure.HESSIAN_LAMBDA_MAX, Measure.HESSIAN_TRACE, Measure.LLC,
              Measure.FISHER_ERANK, Measure.GRADCOV_ERANK)


def probe_steps(n: int, max_step: int, log_fraction: float = 0.4,
                switch_fraction: float = 0.05) -> np.ndarray:
    """``n`` strictly increasing probe steps from 0: log-spaced up to ``switch_fraction`` of
    ``max_step`` (``log_fraction`` of the probes), then linear, as the trainer probes."""
    n_log = max(2, round(n * log_fraction))
    switch = max(n_log, round(switch_fraction * max_step))
    early = np.round(np.geomspace(1, switch, n_log - 1)).astype(np.int64)
    for i in range(1, early.size):  # rounding collides early: keep strictly increasing
        early[i] = max(early[i], early[i - 1] + 1)
    late = np.round(np.linspace(early[-1], max_step, n - n_log + 1)[1:]).astype(np.int64)
    return np.concatenate(([0], early, late))


def pythia_steps() -> np.ndarray:
    """Pythia's 154 revisions as steps: 0, 1, 2, 4, ..., 512, then 1000 to 143000 by 1000."""
    return np.concatenate(([0], 2 ** np.arange(10), np.arange(1000, 143001, 1000)))


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate; the defaults make a small two-task training sweep."""

    tasks: tuple[str, ...] = ("COPY", "ADD")
    levels: tuple[int | None, ...] = (1, 2, 3)
    scales: tuple[tuple[str, int], ...] = (("s0", 2), ("s1", 4))  # (name, n_layers)
    seeds: tuple[int, ...] = (0, 1)
    n_probes: int = 180
    max_step: int = 10_000
    steps: tuple[int, ...] | None = None  # explicit probe steps (Pythia revisions)
    positions: tuple[str, ...] = ("sep",)
    per_layer: tuple[str, ...] = (Measure.RANKME, Measure.RANKME_UNCENTRED, Measure.LINEAR_PROBE)
    expensive: tuple[str, ...] = _EXPENSIVE
    expensive_every: int = 4
    leads: tuple[tuple[str, int], ...] = _LEADS
    first_event: int = 60
    task_gap: int = 4
    level_gap: int = 30
    scale_shift: int = -2
    task_scale_slope: tuple[tuple[str, int], ...] = ()
    seed_jitter: int = 1
    logprob_offset: int = 2
    never: tuple[tuple[str, int | None, str], ...] = ()  # (task, level, scale) never emerge
    collapse_index: int = 12
    layer_gap: int = 2
    bottom_up_tasks: tuple[str, ...] = ()
    task_floors: tuple[tuple[str, float], ...] = ()  # default 4 + task index
    floor_spread: float = 0.2
    noise: float = 0.01
    source: str = "trial"
    sweep: str = "synthetic"
    seed: int = 0
    chance: float = 0.1
    uncentred_scale: float = 1.0  # uncentred RankMe = this x centred + 1 (floors differ)
    pooled_scale: float = 1.0  # the pooled (null-level) series = this x the per-level one
    extras: bool = field(default=True)  # token accuracy, losses, lr, LLC diagnostics

    def grid(self) -> np.ndarray:
        if self.steps is not None:
            return np.asarray(self.steps, dtype=np.int64)
        return probe_steps(self.n_probes, self.max_step)

    def trials(self) -> list[tuple[str, int, str, int, int, int]]:
        """(trial id, task index, scale, scale index, n_layers, seed) of every trial."""
        return [(f"{t}-{sc}-seed{s}", i, sc, k, nl, s) for i, t in enumerate(self.tasks)
                for k, (sc, nl) in enumerate(self.scales) for s in self.seeds]

    def event_index(self, task: int, level_pos: int, scale: int, seed: int) -> int | None:
        name, sc = self.tasks[task], self.scales[scale][0]
        if (name, self.levels[level_pos], sc) in self.never:
            return None
        slope = dict(self.task_scale_slope).get(name, 0)
        jitter = self.seed_jitter * ((seed % 3) - 1)
        return (self.first_event + self.task_gap * task + self.level_gap * level_pos
                + (self.scale_shift + slope) * scale + jitter)


@dataclass(frozen=True)
class Truth:
    """Planted answers. ``events``: per (trial, level) accuracy and log-prob event steps;
    ``onsets``: per (trial, level, measure) onset step, lead and class; ``floors``: per
    trial final-layer floor; ``collapse``: per (trial, layer) planted collapse probe;
    ``topdown``: per (task, scale) the planted direction (``verdict``) over its ``n_blocks``
    collapsing layers (layer 0, the embedding, is constant)."""

    events: pl.DataFrame
    onsets: pl.DataFrame
    floors: pl.DataFrame
    collapse: pl.DataFrame
    topdown: pl.DataFrame


def _logistic(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _strings(value: str, n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)),
                                          pa.array([value])).cast(pa.string())


class _Rows:
    """Column blocks of one trial, assembled into one Arrow table at the end."""

    def __init__(self, steps: np.ndarray) -> None:
        self.steps, self.blocks, self.names = steps, [], []

    def add(self, measure: str, values: np.ndarray, levels: list, layers: list,
            idx: np.ndarray | None = None) -> None:
        """``values``: [len(levels), len(layers), len(idx)] (idx: probe indices, default all)."""
        idx = np.arange(self.steps.size) if idx is None else idx
        a, b, n = values.shape
        lv = np.repeat(np.array([-1 if x is None else x for x in levels]), b * n)
        ly = np.tile(np.repeat(np.array([-1 if x is None else x for x in layers]), n), a)
        if measure not in self.names:
            self.names.append(measure)
        code = np.full(a * b * n, self.names.index(measure), np.int32)
        self.blocks.append((code, lv, ly, np.tile(self.steps[idx], a * b), values.ravel()))

    def table(self, trial: str, task: str, scale: str, seed: int, source: str,
              sweep: str) -> pa.Table:
        code, lv, ly, st, val = (np.concatenate(c) for c in zip(*self.blocks, strict=True))
        n = code.size
        return pa.table({
            "sweep": _strings(sweep, n), "trial": _strings(trial, n), "task": _strings(task, n),
            "level": pa.array(lv.astype(np.int8), mask=lv < 0),
            "scale": _strings(scale, n), "seed": pa.array(np.full(n, seed, np.int64)),
            "step": pa.array(st.astype(np.int64)),
            "measure": pa.DictionaryArray.from_arrays(pa.array(code),
                                                      pa.array(self.names)).cast(pa.string()),
            "layer": pa.array(ly.astype(np.int16), mask=ly < 0),
            "value": pa.array(val.astype(np.float64)), "source": _strings(source, n),
            "attempt": pa.array(np.zeros(n, np.int32)),
            "wall_time": pa.array(np.full(n, 1_700_000_000_000, np.int64)).cast(
                pa.timestamp("ms", tz="UTC")),
        }, schema=METRICS_SCHEMA)


def _check(cfg: SyntheticConfig, n: int) -> None:
    made = set(cfg.per_layer) | set(cfg.expensive)
    leads = [v for m, v in cfg.leads if m in made] or [0]
    latest = max((cfg.event_index(i, j, k, s) or 0) for i in range(len(cfg.tasks))
                 for j in range(len(cfg.levels)) for k in range(len(cfg.scales))
                 for s in cfg.seeds)
    deepest = max(nl for _, nl in cfg.scales)
    if latest + max(0, -min(leads)) + 8 >= n:
        raise ValueError(f"n_probes={n} leaves no room after the latest event (probe {latest}):"
                         " raise n_probes or lower first_event / gaps")
    if cfg.first_event - max(leads) - 3 <= cfg.collapse_index + cfg.layer_gap * deepest:
        raise ValueError("first_event too early: planted onsets would fall inside the collapse")


def _trial(cfg: SyntheticConfig, spec: tuple, rng: np.random.Generator) -> tuple[pa.Table, dict]:
    trial, ti, scale, k, n_layers, seed = spec
    task, steps = cfg.tasks[ti], cfg.grid()
    n, i = steps.size, np.arange(steps.size)
    levels = list(cfg.levels)
    nl = len(levels)
    ev = [cfg.event_index(ti, j, k, seed) for j in range(nl)]
    lead = dict(cfg.leads)
    rows = _Rows(steps)
    # behaviour, per level: accuracy [nl, 1, n], log-prob of an answer of 2 + 2j tokens
    acc, lp = np.zeros((nl, 1, n)), np.zeros((nl, 1, n))
    for j, e in enumerate(ev):
        acc[j, 0] = 0.03 if e is None else 0.02 + 0.96 * _logistic(2.0 * (i - e + 0.5))
        z = 0.0 if e is None else 0.95 * _logistic(2.0 * (i - e + cfg.logprob_offset + 0.5))
        lp0 = -2.3 * (2 + 2 * j)
        lp[j, 0] = lp0 * (1.0 - z) + rng.normal(0, cfg.noise * 0.1 * abs(lp0), n)
    acc = np.clip(acc + rng.normal(0, cfg.noise, acc.shape), 0.0, 1.0)
    rows.add(Measure.ACCURACY, acc, levels, [None])
    rows.add(Measure.LOGPROB, lp, levels, [None])
    # chance rows, logged once at the first probe as the trainer does: chance 0.1 (the
    # planted events stay where they are), the log-prob baseline at the start's log-prob
    first = np.array([0])
    rows.add(Measure.CHANCE, np.full((nl, 1, 1), cfg.chance), levels, [None], first)
    rows.add(Measure.LOGPROB_CHANCE,
             np.array([-2.3 * (2 + 2 * j) for j in range(nl)])[:, None, None], levels,
             [None], first)
    if cfg.extras:
        rows.add(Measure.TOKEN_ACCURACY, np.sqrt(acc), levels, [None])
        answer = np.array([2 + 2 * j for j in range(nl)], dtype=np.float64)[:, None, None]
        rows.add(Measure.DIAG_LOSS, -lp / answer, levels, [None])
        rows.add(Measure.TRAIN_LOSS, (-lp / answer).mean(axis=0, keepdims=True), [None], [None])
        rows.add(Measure.LR, (1e-3 * np.cos(0.5 * np.pi * i / n))[None, None], [None], [None])
    # per-layer measures: slots = each level, plus the pooled series (null level)
    slots = levels if levels == [None] else [*levels, None]
    floors = dict(cfg.task_floors)
    delta = np.linspace(-cfg.floor_spread, cfg.floor_spread, len(cfg.scales))[k]
    floor = floors.get(task, 4.0 + ti) * (1.0 + delta)
    layer = np.arange(1, n_layers + 1)[:, None]
    bottom_up = task in cfg.bottom_up_tasks
    c = cfg.collapse_index + cfg.layer_gap * ((layer - 1) if bottom_up else (n_layers - layer))
    init = 30.0 + 2.0 * layer
    f_layer = floor * (1.0 + 0.3 * (n_layers - layer) / n_layers)
    base = init - (init - f_layer) * np.minimum(i / c, 1.0)  # [n_layers, n]

    def steps_at(offset: int) -> np.ndarray:
        """[len(slots), n] unit steps at each level's onset (pooled: their mean)."""
        own = np.array([np.zeros(n) if e is None else (i >= e - offset).astype(float)
                        for e in ev])
        return own if levels == [None] else np.vstack([own, own.mean(axis=0)])

    truth_onsets = []
    for base_name in cfg.per_layer:
        positions = cfg.positions if base_name != Measure.LINEAR_PROBE else ("sep",)
        for pos in positions:
            name = measure_name(base_name, pos)
            jump = steps_at(lead.get(base_name, 0))[:, None, :]  # [slots, 1, n]
            if base_name == Measure.LINEAR_PROBE:
                vals = 0.1 + 0.8 * jump * (layer / n_layers)[None]
                sd = cfg.noise * 0.8
            else:
                scale_u = cfg.uncentred_scale if base_name == Measure.RANKME_UNCENTRED else 1.0
                pooled = np.array([cfg.pooled_scale if lv is None and levels != [None]
                                   else 1.0 for lv in slots])[:, None, None]
                vals = (base[None] * scale_u * pooled + 6.0 * jump
                        + (base_name == Measure.RANKME_UNCENTRED))
                sd = cfg.noise * 5.0
            vals = vals + rng.normal(0, sd, vals.shape)
            zero = np.zeros((len(slots), 1, n)) if base_name != Measure.LINEAR_PROBE \
                else np.full((len(slots), 1, n), 0.1)
            rows.add(name, np.concatenate([zero, vals], axis=1), slots,
                     list(range(n_layers + 1)))
            for j, e in enumerate(ev):
                if e is not None:
                    o = e - lead.get(base_name, 0)
                    truth_onsets.append((trial, levels[j], name, int(steps[o])))
    grid = np.arange(0, n, cfg.expensive_every)
    every = cfg.expensive_every
    for m, name in enumerate(cfg.expensive):
        # the change lands on a checkpoint: the last one at or before e - lead
        onsets = [None if e is None else (e - lead.get(name, 0)) // every * every for e in ev]
        jump = np.zeros(grid.size) + sum((grid >= o) for o in onsets if o is not None)
        vals = 10.0 * (1 + m) + 5.0 * np.exp(-grid / 3.0) + 3.0 * jump
        rows.add(name, (vals + rng.normal(0, cfg.noise * 3.0, grid.size))[None, None],
                 [None], [None], grid)
        truth_onsets += [(trial, levels[j], name, int(steps[o]))
                         for j, o in enumerate(onsets) if o is not None]
        if name == Measure.LLC and cfg.extras:
            rows.add(Measure.LLC_STD, (0.1 + np.zeros(grid.size))[None, None], [None], [None],
                     grid)
            rows.add(Measure.LLC_CONVERGED, np.ones((1, 1, grid.size)), [None], [None], grid)
    truth = {
        "events": [(trial, task, levels[j], scale, seed,
                    None if e is None else int(steps[e]),
                    None if e is None else int(steps[e - cfg.logprob_offset]))
                   for j, e in enumerate(ev)],
        "onsets": [(*o, int(steps[ev[levels.index(o[1])]])) for o in truth_onsets],
        "floors": [(trial, task, scale, seed, float(floor))],
        "collapse": [(trial, int(j), int(cj)) for j, cj in zip(layer[:, 0], c[:, 0], strict=True)],
    }
    return rows.table(trial, task, scale, seed, cfg.source, cfg.sweep), truth


def _truth(cfg: SyntheticConfig, parts: list[dict]) -> Truth:
    def frame(key: str, schema: dict) -> pl.DataFrame:
        return pl.DataFrame([r for p in parts for r in p[key]], schema=schema, orient="row")

    onsets = frame("onsets", {"trial": pl.String, "level": pl.Int8, "measure": pl.String,
                              "onset_step": pl.Int64, "event_step": pl.Int64})
    base = {m.split("@")[0]: v for m, v in cfg.leads}
    onsets = onsets.with_columns(
        (pl.col("event_step") - pl.col("onset_step")).alias("lead"),
        pl.col("measure").str.split("@").list.first()
        .replace_strict(base, default=0, return_dtype=pl.Int64).sign()
        .replace_strict({1: "precursor", 0: "synchronous", -1: "lagging"},
                        return_dtype=pl.String).alias("class"))
    # a lead of 0 on a coarser grid lies within a tolerance wider than the event's interval
    coarse = pl.col("measure").is_in(list(cfg.expensive)) & (cfg.expensive_every > 1)
    onsets = onsets.with_columns(pl.when(coarse & (pl.col("class") == "synchronous"))
                                 .then(pl.lit("unresolved")).otherwise(pl.col("class"))
                                 .alias("class"))
    topdown = pl.DataFrame(
        [(t, sc, nl, "bottom-up" if t in cfg.bottom_up_tasks else "top-down")
         for t in cfg.tasks for sc, nl in cfg.scales],
        schema={"task": pl.String, "scale": pl.String, "n_blocks": pl.Int64,
                "verdict": pl.String}, orient="row")
    return Truth(
        events=frame("events", {"trial": pl.String, "task": pl.String, "level": pl.Int8,
                                "scale": pl.String, "seed": pl.Int64, "step": pl.Int64,
                                "logprob_step": pl.Int64}),
        onsets=onsets,
        floors=frame("floors", {"trial": pl.String, "task": pl.String, "scale": pl.String,
                                "seed": pl.Int64, "floor": pl.Float64}),
        collapse=frame("collapse", {"trial": pl.String, "layer": pl.Int16,
                                    "collapse_index": pl.Int64}),
        topdown=topdown)


def _tables(cfg: SyntheticConfig):
    _check(cfg, cfg.grid().size)
    for n, spec in enumerate(cfg.trials()):
        yield _trial(cfg, spec, np.random.default_rng([cfg.seed, n]))


def generate(cfg: SyntheticConfig | None = None) -> tuple[pl.DataFrame, Truth]:
    """The metrics table (in memory) and its planted answers."""
    cfg = cfg or SyntheticConfig()
    tables, parts = zip(*_tables(cfg), strict=True)
    return pl.from_arrow(pa.concat_tables(tables)), _truth(cfg, list(parts))  # type: ignore


def write_synthetic(cfg: SyntheticConfig, run_dir: str | Path) -> tuple[Truth, int]:
    """Write one metric part per trial, as the store lays them out
    (``run_dir/metrics/<source>/<trial>/part-<first>-<last>.parquet``); (truth, rows)."""
    from emergence_core.store import TrialStore  # imports torch: only when writing a folder

    parts, rows = [], 0
    for table, part in _tables(cfg):
        trial, source = table.column("trial")[0].as_py(), table.column("source")[0].as_py()
        TrialStore(run_dir, trial, source).write_part(table)
        parts.append(part)
        rows += table.num_rows
    return _truth(cfg, parts), rows
