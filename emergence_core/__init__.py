"""emergence_core: the science of emerge.

Tasks, model scales, the trainer, the measures, emergence detection, statistics and Pythia
evaluation, as plain functions and small classes over tensors, arrays and Arrow tables.
This package imports neither Ray nor MLflow and runs in a notebook on its own.

What a notebook needs is named here (``__all__``): train one trial (``resolve_config``,
``run_trial``), read its rows (``read_metrics`` for Arrow, ``load_metrics`` for polars), and
extend the study (``register_task``, ``register_scale``, ``register_measure``). Names load
lazily (PEP 562): ``import emergence_core`` alone loads no torch, pyarrow or polars.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module defining it
_WHERE = {
    "EmergenceRule": "emergence_core.emergence_rule",
    "RunFolder": "emergence_core.run_folder",
    "TrainConfig": "emergence_core.config",
    "TrialHooks": "emergence_core.trial.runner",
    "load_metrics": "emergence_core.analysis.frames",
    "read_metrics": "emergence_core.store",
    "register_measure": "emergence_core.expensive",
    "register_scale": "emergence_core.scales",
    "register_task": "emergence_core.tasks",
    "resolve_config": "emergence_core.config",
    "run_trial": "emergence_core.trial.runner",
}

__all__ = ["__version__", *sorted(_WHERE)]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
