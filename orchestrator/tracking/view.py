"""What MLflow holds of the Parquet rows: metric keys, params, and the rows' mapping.

Metric keys: ``<measure>[/L<level>][/layer<layer>]``, with ``@`` (not allowed by MLflow)
written as ``.``: ``rankme/L2/layer1``, ``rankme.prompt_mean/layer2``, ``accuracy/L1``.
``mlflow_view`` is the one mapping the sync and the end-to-end checks both use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from emergence_core.metrics import Measure

__all__ = ["CONSTANT_MEASURES", "CONVERGENCE_FLAGS", "CORRECTED", "UNCONVERGED", "chances_of",
           "metric_key",
           "metric_rows", "mlflow_view"]

# Constants of a trial level (its chance rate, its diagnostic set's size), logged once: as
# params (``chance/L1``), not metrics, which MLflow would draw as one-bar charts among the
# training curves.
CONSTANT_MEASURES = (Measure.CHANCE, Measure.LOGPROB_CHANCE, Measure.DIAG_SIZE,
                     Measure.DIAG_ASKED)
# An estimate whose convergence flag at its step is 0 is logged under ``<key>.unconverged``,
# so the estimate's own chart holds converged values only (Parquet keeps both, flagged).
CONVERGENCE_FLAGS = {Measure.LLC: Measure.LLC_CONVERGED}
UNCONVERGED = ".unconverged"
# Accuracy corrected for chance, (accuracy - chance) / (1 - chance), per level: 0 at the best
# constant answer, 1 at perfect; the curve the events are detected on (docs/methods.md §4).
# Derived here, not in Parquet, which holds accuracy and chance themselves.
CORRECTED = "accuracy_corrected"


def mlflow_view(rows: Sequence[dict[str, Any]], chances: Mapping[int, float] | None = None
                ) -> tuple[list[tuple[str, float, int, int]], dict[str, str]]:
    """What MLflow holds of metric rows (dicts with measure, layer, level, value, step and
    wall_time in ms): the metrics as (key, value, timestamp, step), and the params.

    ``chances``: each level's chance rate when ``rows`` (a later batch of a trial) do not
    carry it; with it, each accuracy row also gives ``accuracy_corrected/L<level>``."""
    bad = {(r["measure"], r["step"]) for r in rows
           if r["measure"] in CONVERGENCE_FLAGS.values() and r["value"] is not None
           and r["value"] < 0.5}
    known = dict(chances or {})
    known.update({r["level"]: r["value"] for r in rows if r["measure"] == Measure.CHANCE
                  and r["level"] is not None and r["value"] is not None})
    flagged = set(CONVERGENCE_FLAGS)
    metrics, params = [], {}
    for r in rows:
        m, v = r["measure"], r["value"]
        key = metric_key(m, r["layer"], r["level"])
        if m in CONSTANT_MEASURES:
            params[key] = _exact(v)
            continue
        if m in flagged and (CONVERGENCE_FLAGS[m], r["step"]) in bad:
            key += UNCONVERGED
        metrics.append((key, v if v is not None else float("nan"), r["wall_time"], r["step"]))
        c = known.get(r["level"])
        if m == Measure.ACCURACY and r["layer"] is None and c is not None and c < 1 \
                and v is not None:
            metrics.append((metric_key(CORRECTED, None, r["level"]), (v - c) / (1 - c),
                            r["wall_time"], r["step"]))
    return metrics, params


def _exact(v: float | None) -> str:
    """A constant as a param string that reads back as the same float (a later batch's
    corrected accuracy uses the chance read back, and must equal the first batch's)."""
    if v is None or v != v:
        return "nan"
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def chances_of(params: Mapping[str, str]) -> dict[int, float]:
    """Each level's chance from the params ``mlflow_view`` gives (``chance/L<level>``)."""
    prefix = f"{Measure.CHANCE}/L"
    return {int(k[len(prefix):]): float(v) for k, v in params.items()
            if k.startswith(prefix) and v != "nan"}


def metric_key(measure: str, layer: int | None, level: int | None) -> str:
    key = measure.replace("@", ".")
    if level is not None:
        key += f"/L{level}"
    if layer is not None:
        key += f"/layer{layer}"
    return key


def metric_rows(table: Any) -> list[dict[str, Any]]:
    """A metrics table's rows as ``mlflow_view`` takes them (wall time in ms)."""
    cols = {c: table[c].to_pylist() for c in ("measure", "layer", "level", "value", "step")}
    cols["wall_time"] = table["wall_time"].cast("int64").to_pylist()
    return [dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]
