"""Reading the metrics table for the statistics stage: selection, keys, group slices.

Everything here is polars column work over the long table; the per-series numpy math
lives in ``series.py``. Values that are NaN are read as null, because polars orders NaN
above every number (``NaN >= 0.5`` is true there) and a missing value must never count
as reaching a threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from emergence_core.metrics import METRICS_SCHEMA

__all__ = [
    "COLUMNS",
    "as_lazy",
    "empty_metrics",
    "group_slices",
    "load_metrics",
    "prefer_levels",
    "unit_expr",
]

# The columns the analysis reads (attempt and wall_time are bookkeeping).
COLUMNS = ("sweep", "trial", "task", "level", "scale", "seed", "step", "measure", "layer",
           "value", "source")

Metrics = pl.LazyFrame | pl.DataFrame | pa.Table


def empty_metrics() -> pl.DataFrame:
    """A metrics table with no rows and the contract's schema."""
    return pl.from_arrow(METRICS_SCHEMA.empty_table())  # type: ignore[return-value]


def load_metrics(run_dir: str | Path) -> pl.LazyFrame:
    """Lazy scan of the live metric parts of ``run_dir``; an empty table when there is none.

    The parts are ``store.metric_files``'s: parts left behind inside a larger one by an
    interrupted compaction are skipped (a glob over ``metrics/**`` would read their rows
    twice), as are files not named like the store's parts.
    """
    from emergence_core.store import metric_files  # imports torch: only when reading a folder

    files = metric_files(run_dir)
    if not files:
        return empty_metrics().lazy()
    return pl.scan_parquet([str(f) for f in files], hive_partitioning=False)


def as_lazy(metrics: Metrics) -> pl.LazyFrame:
    """The analysis columns of ``metrics`` with the contract's types, NaN read as null."""
    if isinstance(metrics, pa.Table):
        metrics = pl.from_arrow(metrics)  # type: ignore[assignment]
    lf = metrics.lazy() if isinstance(metrics, pl.DataFrame) else metrics
    names = lf.collect_schema().names()
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise ValueError(f"metrics table lacks columns {missing}; expected the schema of "
                         "emergence_core.metrics.METRICS_SCHEMA")
    return lf.select(
        pl.col("sweep").cast(pl.String), pl.col("trial").cast(pl.String),
        pl.col("task").cast(pl.String), pl.col("level").cast(pl.Int8),
        pl.col("scale").cast(pl.String), pl.col("seed").cast(pl.Int64),
        pl.col("step").cast(pl.Int64), pl.col("measure").cast(pl.String),
        pl.col("layer").cast(pl.Int16), pl.col("value").cast(pl.Float64).fill_nan(None),
        pl.col("source").cast(pl.String),
    )


def unit_expr(task: str = "task", level: str = "level") -> pl.Expr:
    """A task level's name, ``TASK:LEVEL``, or ``TASK`` where level is null (Pythia).

    Used as a join key so that null levels never meet polars' null-unequal joins.
    """
    return (pl.when(pl.col(level).is_null()).then(pl.col(task))
            .otherwise(pl.concat_str(pl.col(task), pl.lit(":"), pl.col(level).cast(pl.String)))
            .alias("unit"))


def prefer_levels(df: pl.DataFrame, by: Sequence[str] = ("trial", "measure")) -> pl.DataFrame:
    """Keep per-level rows of each ``by`` group that has any, else its pooled (null) rows.

    A trial that logs accuracy per level and pooled would otherwise count each event twice.
    """
    has_level = pl.col("level").is_not_null().any().over(list(by))
    return df.filter(pl.col("level").is_not_null() | ~has_level)


def group_slices(df: pl.DataFrame, keys: Sequence[str]) -> list[tuple[tuple, int, int]]:
    """``(key values, start, stop)`` of each run of equal ``keys`` in ``df`` (sorted by keys).

    Nulls compare equal here, so a pooled (null-level) series is one group.
    """
    if df.height == 0:
        return []
    changed = df.select(pl.any_horizontal(
        [pl.col(k).ne_missing(pl.col(k).shift(1)) for k in keys]).alias("c"))["c"]
    mask = changed.fill_null(True).to_numpy().copy()
    mask[0] = True
    starts = np.flatnonzero(mask)
    stops = np.append(starts[1:], df.height)
    key_rows = df[starts.tolist()].select(list(keys)).rows()
    return [(k, int(a), int(b)) for k, a, b in zip(key_rows, starts, stops, strict=True)]
