"""The statistics stage: pure functions over the metrics table (docs/methods.md §4).

Entry points: ``analyze(metrics, settings) -> Analysis`` (every table) and
``write_report(metrics, out_dir, settings) -> ReportSummary`` (Markdown, CSV, PNG).
Imports neither ray nor mlflow.

Names load lazily (PEP 562): importing one submodule, e.g. ``analysis.settings``, loads no
dataframe or plotting library. The emergence rule itself lives below every stage, in
``emergence_core.emergence_rule``, and is re-exported here. The synthetic metrics tables
the tests start from are test fixtures, in ``emergence_core.testing``.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the submodule defining it (a dotted path: a module outside the package)
_WHERE = {
    "LOGPROB_NORM": "settings",
    "Analysis": "pipeline",
    "AnalysisSettings": "settings",
    "Floor": "series",
    "Leads": "leads",
    "ReportSummary": "report",
    "ReportTargetError": "report",
    "analyze": "pipeline",
    "as_lazy": "frames",
    "behaviour_rows": "events",
    "binseg": "series",
    "chance_corrected": "emergence_core.emergence_rule",
    "chance_table": "events",
    "check_report_target": "report",
    "changepoints": "series",
    "classify": "leads",
    "cluster_bootstrap": "rates",
    "collapse_floor": "series",
    "collapse_table": "collapse",
    "difficulty_classes": "events",
    "emergence_events": "events",
    "emergence_index": "emergence_core.emergence_rule",
    "emergence_step": "emergence_core.emergence_rule",
    "empty_metrics": "frames",
    "event_details": "events",
    "event_signals": "prediction",
    "events_to_arrow": "events",
    "floor_spread": "collapse",
    "floor_summary": "collapse",
    "headline_numbers": "report",
    "hierarchy": "rates",
    "load_metrics": "frames",
    "local_spacing": "series",
    "measure_leads": "leads",
    "noise_scale": "series",
    "normalised_logprob": "events",
    "precursor_rates": "rates",
    "prediction_limits": "prediction",
    "smooth": "series",
    "topdown": "collapse",
    "trial_floors": "collapse",
    "write_report": "report",
    "xcorr_lag": "series",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(mod if "." in mod else f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
