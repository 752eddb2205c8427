"""The metrics table: the contract between every stage of emerge.

Long format, one row per value. Every producer (the trainer's cheap probes, the probe
pool's expensive measures, the Pythia evaluator) emits rows of this schema, and every
consumer (the statistics stage, notebooks, MLflow sync) reads it.

Key: one row per ``(trial, step, measure, layer, level)``. ``level`` and ``layer`` are
null where they do not apply (a pooled value, a scalar measure). Pythia rows put the
model name in ``scale``, the probe set in ``task`` and the revision's step in ``step``.

Measure names are the constants below; a cheap representation measure read at a position
other than the SEP token is suffixed ``@<position>`` (``rankme@prompt_mean``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa

__all__ = [
    "ALERTS_SCHEMA",
    "EVENTS_SCHEMA",
    "METRICS_KEY",
    "METRICS_SCHEMA",
    "SCHEMA_VERSION",
    "Measure",
    "RowBuffer",
    "TrialKey",
    "measure_name",
]

SCHEMA_VERSION = "1"

METRICS_SCHEMA = pa.schema(
    [
        pa.field("sweep", pa.string(), nullable=False),
        pa.field("trial", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("level", pa.int8()),
        pa.field("scale", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("measure", pa.string(), nullable=False),
        pa.field("layer", pa.int16()),
        pa.field("value", pa.float64()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("attempt", pa.int32(), nullable=False),
        pa.field("wall_time", pa.timestamp("ms", tz="UTC"), nullable=False),
    ],
    metadata={"emerge.schema_version": SCHEMA_VERSION, "emerge.table": "metrics"},
)

METRICS_KEY = ("trial", "step", "measure", "layer", "level")

# One row per (trial, level, measure): the first step at which the rule of docs/methods.md §4
# holds, or null when it never does within the run. ``chance``: the level's chance rate the
# rule corrected for (accuracy: the best constant answer's; null where none was known).
EVENTS_SCHEMA = pa.schema(
    [
        pa.field("sweep", pa.string(), nullable=False),
        pa.field("trial", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("level", pa.int8()),
        pa.field("scale", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("measure", pa.string(), nullable=False),
        pa.field("threshold", pa.float64(), nullable=False),
        pa.field("persistence", pa.int32(), nullable=False),
        pa.field("step", pa.int64()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("chance", pa.float64()),
    ],
    metadata={"emerge.schema_version": SCHEMA_VERSION, "emerge.table": "events"},
)

# One row per live alert (``emergence_core.trial.alerts`` raises them, ``store`` keeps them).
# ``value`` and ``reference`` are the series' value at detection and its reference median;
# ``score`` the departure in robust spreads; ``accuracy`` the level's chance-corrected
# accuracy at detection.
ALERTS_SCHEMA = pa.schema(
    [
        pa.field("sweep", pa.string(), nullable=False),
        pa.field("trial", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("scale", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("measure", pa.string(), nullable=False),
        pa.field("layer", pa.int16()),
        pa.field("level", pa.int8(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),  # detected (the confirming probe step)
        pa.field("onset_step", pa.int64(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("reference", pa.float64()),
        pa.field("score", pa.float64()),
        pa.field("accuracy", pa.float64()),
        pa.field("attempt", pa.int32(), nullable=False),
        pa.field("wall_time", pa.timestamp("ms", tz="UTC"), nullable=False),
    ],
    metadata={"emerge.table": "alerts"},
)


class Measure:
    """Canonical measure names (the ``measure`` column)."""

    # behaviour, in the trial
    ACCURACY = "accuracy"  # exact-match accuracy on the diagnostic set
    TOKEN_ACCURACY = "token_accuracy"  # fraction of answer tokens that are the argmax
    LOGPROB = "logprob"  # mean log-prob of the whole correct answer (sum over its tokens)
    DIAG_LOSS = "diag_loss"  # mean cross-entropy per answer token on the diagnostic set
    TRAIN_LOSS = "train_loss"  # mean training loss per answer token since the last probe
    LR = "lr"
    # the level's diagnostic set, logged once (at the first probe) per level
    CHANCE = "chance"  # exact-match accuracy of the best constant answer (tasks.chance)
    LOGPROB_CHANCE = "logprob_chance"  # log-prob of the per-position-marginal predictor
    DIAG_SIZE = "diag_size"  # samples in the diagnostic set
    DIAG_ASKED = "diag_asked"  # samples asked for (more than diag_size: universe too small)
    # Pythia: "model_dtype.<dtype>" with value 1, the dtype the weights ran in
    MODEL_DTYPE = "model_dtype"
    # representation geometry, in the trial, per layer
    RANKME = "rankme"
    RANKME_UNCENTRED = "rankme_uncentred"
    LINEAR_PROBE = "linear_probe"
    # expensive, on checkpoints (probe pool)
    HESSIAN_LAMBDA_MAX = "hessian_lambda_max"
    HESSIAN_TRACE = "hessian_trace"
    HESSIAN_TRACE_STDERR = "hessian_trace_stderr"
    LLC = "llc"
    LLC_STD = "llc_std"  # across chains
    LLC_CONVERGED = "llc_converged"  # 1.0 when split-R-hat is within bounds, else 0.0
    FISHER_ERANK = "fisher_erank"
    FISHER_ERANK_STDERR = "fisher_erank_stderr"  # jackknife over samples
    GRADCOV_ERANK = "gradcov_erank"
    GRADCOV_ERANK_STDERR = "gradcov_erank_stderr"


def measure_name(base: str, position: str = "sep") -> str:
    """The column value for a representation measure read at ``position``.

    SEP is the study's read position and keeps the plain name; any other position is
    suffixed, so one sweep can log several positions side by side.
    """
    return base if position == "sep" else f"{base}@{position}"


@dataclass(frozen=True)
class TrialKey:
    """The identity columns shared by every row of one trial."""

    sweep: str
    trial: str
    task: str
    scale: str
    seed: int
    source: str = "trial"


class RowBuffer:
    """Accumulates metric rows column by column and turns them into an Arrow table.

    Column lists rather than row dicts: a probe step of a 12-layer model emits a few
    hundred rows, and building the table from columns avoids a per-row Python object.
    """

    __slots__ = ("_cols", "attempt", "key")

    def __init__(self, key: TrialKey, attempt: int = 0) -> None:
        self.key = key
        self.attempt = attempt
        self._cols: dict[str, list] = {n: [] for n in ("step", "measure", "layer", "level",
                                                        "value", "wall_time")}

    def __len__(self) -> int:
        return len(self._cols["step"])

    def add(self, step: int, measure: str, value: float, *, layer: int | None = None,
            level: int | None = None, wall_time: float | None = None) -> None:
        c = self._cols
        c["step"].append(int(step))
        c["measure"].append(measure)
        c["layer"].append(layer)
        c["level"].append(level)
        c["value"].append(float(value) if value is not None else None)
        c["wall_time"].append(int((time.time() if wall_time is None else wall_time) * 1000))

    def extend(self, step: int, measure: str, values: Sequence[float], *,
               layers: Iterable[int | None] | None = None, level: int | None = None) -> None:
        """Add one row per layer: ``values[i]`` belongs to ``layers[i]`` (default: i)."""
        now = time.time()
        layer_ids = range(len(values)) if layers is None else layers
        for layer, v in zip(layer_ids, values, strict=True):
            self.add(step, measure, v, layer=layer, level=level, wall_time=now)

    def since(self, start: int) -> list[tuple[str, int | None, int | None, float | None]]:
        """(measure, layer, level, value) of the rows added after the first ``start``."""
        c = self._cols
        return list(zip(c["measure"][start:], c["layer"][start:], c["level"][start:],
                        c["value"][start:], strict=True))

    def take(self, max_step: int | None = None) -> pa.Table:
        """Remove and return the rows with ``step <= max_step`` (all rows when None)."""
        c = self._cols
        if max_step is None:
            taken, self._cols = c, {k: [] for k in c}
        else:
            sel = [s <= max_step for s in c["step"]]
            taken = {k: [x for x, t in zip(v, sel, strict=True) if t] for k, v in c.items()}
            self._cols = {k: [x for x, t in zip(v, sel, strict=True) if not t]
                          for k, v in c.items()}
        return rows_to_table(self.key, self.attempt, taken)


def rows_to_table(key: TrialKey, attempt: int, cols: dict[str, list]) -> pa.Table:
    n = len(cols["step"])
    arrays = {
        "sweep": pa.array([key.sweep] * n, pa.string()),
        "trial": pa.array([key.trial] * n, pa.string()),
        "task": pa.array([key.task] * n, pa.string()),
        "level": pa.array(cols["level"], pa.int8()),
        "scale": pa.array([key.scale] * n, pa.string()),
        "seed": pa.array([key.seed] * n, pa.int64()),
        "step": pa.array(cols["step"], pa.int64()),
        "measure": pa.array(cols["measure"], pa.string()),
        "layer": pa.array(cols["layer"], pa.int16()),
        "value": pa.array(cols["value"], pa.float64()),
        "source": pa.array([key.source] * n, pa.string()),
        "attempt": pa.array([attempt] * n, pa.int32()),
        "wall_time": pa.array(cols["wall_time"], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
    }
    return pa.Table.from_pydict(arrays, schema=METRICS_SCHEMA)
