"""The registry of the expensive measures: names, settings, rows, and where each is computed.

Torch-free (and outside the ``measures`` package, whose import loads torch), so that a sweep
file is validated (its measures' names and settings) without importing torch; the
computations are in :mod:`emergence_core.measures.compute`, and the built-in measures point
at them by name (``_Deferred``), imported on first call. A plugin registers
its own with ``register_measure`` (``emergence_core.register_measure``), computations and all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from emergence_core.measure_settings import (
    CalibrationSettings,
    GradRankSettings,
    HessianSettings,
    LLCSettings,
    numbers,
)
from emergence_core.metrics import Measure
from emergence_core.registry import Registry, RegistryError

if TYPE_CHECKING:
    from torch import nn

    from emergence_core.measures.batch import ScoredBatch
    from emergence_core.measures.compute import ExpensiveResult

__all__ = ["MEASURES", "Calibrate", "Compute", "ExpensiveMeasure",
           "MeasureError", "check_calibration", "get_measure", "make_settings",
           "register_measure"]


Compute = Callable[["nn.Module", "ScoredBatch", Any], "ExpensiveResult"]
Calibrate = Callable[["nn.Module", "ScoredBatch", Any, float, Mapping[str, Any]],
                     dict[str, Any]]
"""(model at the pilot checkpoint, batch, settings, the untrained model's loss on the batch,
calibration fields) -> a JSON-safe record whose ``chosen`` is the settings fields to fix for
the whole trial, or None when no setting met the criteria. Called with ``store=`` (a
``RunStore`` of ``emergence_core.measures.llc_runs``, or None) where the caller keeps
a stopped pilot's finished work: a calibration that takes it resumes there."""


@dataclasses.dataclass(frozen=True)
class ExpensiveMeasure:
    """An expensive measure: all emerge needs to know of one, in one registry entry.

    ``settings``: a frozen dataclass of its settings (sweep files set its fields);
    ``batch_size``: samples in its fixed probe batch, all levels equally; ``compute(model,
    batch, settings)``: its rows and diagnostics, leaving the model exactly as it was;
    ``rows``: the measure names of the rows it writes (the first is its headline value);
    ``companions``: those of its rows that qualify another (a spread, a convergence flag);
    ``calibrate``: a per-trial pilot that fixes some settings (see ``Calibrate``), or None;
    ``flag``: the row saying converged (1) or not (0), the only non-nan row of a
    "not converged" result.
    """

    name: str
    settings: type
    batch_size: int
    compute: Compute
    rows: tuple[str, ...]
    companions: tuple[str, ...] = ()
    description: str = ""
    calibrate: Calibrate | None = None
    flag: str | None = None
    calibration: type | None = None  # the pilot's own settings (its fields), with calibrate


class MeasureError(RegistryError):
    """An unknown expensive measure, or a second one under a taken name; one line."""


MEASURES: Registry[ExpensiveMeasure] = Registry("expensive measure", error=MeasureError)


def register_measure(measure: ExpensiveMeasure) -> ExpensiveMeasure:
    """Add an expensive measure (a plugin module's); the same one again is a no-op."""
    held = MEASURES.get(measure.name)
    if held is not None and held != measure:
        MEASURES.register(measure.name, measure)  # raises: the name is taken
    if not dataclasses.is_dataclass(measure.settings) or measure.batch_size < 2 \
            or not measure.rows:
        raise ValueError(f"expensive measure {measure.name!r}: settings must be a dataclass, "
                         "batch_size at least 2, and rows name at least one row")
    return MEASURES.register(measure.name, measure)


def get_measure(name: str) -> ExpensiveMeasure:
    """The expensive measure called ``name``, or a MeasureError with a suggestion."""
    return MEASURES.lookup(name)


def make_settings(name: str, fields: Mapping[str, Any] | None = None) -> Any:
    """The measure's settings dataclass from plain fields; ValueError names a bad one."""
    cls = get_measure(name).settings
    fields = dict(fields or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r} of {name}; "
                         f"known: {', '.join(sorted(known))}")
    for key in ("params",):  # lists in YAML, tuples in the frozen dataclasses
        if isinstance(fields.get(key), list):
            fields[key] = tuple(fields[key])
    return cls(**numbers(cls, fields))


def check_calibration(name: str, fields: Mapping[str, Any]) -> Any:
    """The measure's pilot settings from ``fields``; a bad or unknown field is a ValueError
    of one line naming the known ones."""
    m = get_measure(name)
    if m.calibration is None:
        if fields:
            raise ValueError(f"expensive measure {name!r} has no calibration fields")
        return None
    try:
        return m.calibration(**numbers(m.calibration, dict(fields)))
    except (TypeError, ValueError) as err:
        known = ", ".join(f.name for f in dataclasses.fields(m.calibration))
        raise ValueError(f"bad {name} calibration field ({err}); known: {known}") from None


@dataclasses.dataclass(frozen=True)
class _Deferred:
    """A built-in measure's function in :mod:`emergence_core.measures.compute`, imported on first
    call (a dataclass, so that registering the same measure twice compares equal)."""

    name: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from emergence_core.measures import compute

        return getattr(compute, self.name)(*args, **kwargs)


# The built-in measures (docs/methods.md §3). The LLC's n is its batch size, so n_beta = n / log n
# over these samples (docs/methods.md §3.4).
for _m in (
    ExpensiveMeasure("hessian", HessianSettings, 128, _Deferred("_hessian"),
                     (Measure.HESSIAN_LAMBDA_MAX, Measure.HESSIAN_TRACE,
                      Measure.HESSIAN_TRACE_STDERR), (Measure.HESSIAN_TRACE_STDERR,),
                     "top Hessian eigenvalue (Lanczos) and trace (Hutchinson)"),
    ExpensiveMeasure("llc", LLCSettings, 1024, _Deferred("_llc"),
                     (Measure.LLC, Measure.LLC_STD, Measure.LLC_CONVERGED),
                     (Measure.LLC_STD, Measure.LLC_CONVERGED),
                     "local learning coefficient (SGLD)", calibrate=_Deferred("_llc_calibrate"),
                     calibration=CalibrationSettings,
                     flag=Measure.LLC_CONVERGED),
    ExpensiveMeasure("fisher", GradRankSettings, 64, _Deferred("_fisher"),
                     (Measure.FISHER_ERANK, Measure.FISHER_ERANK_STDERR),
                     (Measure.FISHER_ERANK_STDERR,), "effective rank of the empirical Fisher"),
    ExpensiveMeasure("gradcov", GradRankSettings, 64, _Deferred("_gradcov"),
                     (Measure.GRADCOV_ERANK, Measure.GRADCOV_ERANK_STDERR),
                     (Measure.GRADCOV_ERANK_STDERR,),
                     "effective rank of the per-sample gradient covariance"),
):
    register_measure(_m)
