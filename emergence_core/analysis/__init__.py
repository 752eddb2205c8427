"""The statistics stage: pure functions over the metrics table (SPEC section 4).

Entry points: ``analyze(metrics, settings) -> Analysis`` (every table) and
``write_report(metrics, out_dir, settings) -> ReportSummary`` (Markdown, CSV, PNG).
Imports neither ray nor mlflow.
"""

from emergence_core.analysis.collapse import (
    collapse_table,
    floor_spread,
    floor_summary,
    topdown,
    trial_floors,
)
from emergence_core.analysis.emergence import chance_corrected, emergence_index, emergence_step
from emergence_core.analysis.events import (
    behaviour_rows,
    chance_table,
    difficulty_classes,
    emergence_events,
    event_details,
    events_to_arrow,
    normalised_logprob,
)
from emergence_core.analysis.frames import as_lazy, empty_metrics, load_metrics
from emergence_core.analysis.leads import Leads, classify, measure_leads
from emergence_core.analysis.pipeline import Analysis, analyze
from emergence_core.analysis.prediction import event_signals, prediction_limits
from emergence_core.analysis.rates import cluster_bootstrap, hierarchy, precursor_rates
from emergence_core.analysis.report import ReportSummary, headline_numbers, write_report
from emergence_core.analysis.series import (
    Floor,
    binseg,
    changepoints,
    collapse_floor,
    local_spacing,
    noise_scale,
    smooth,
    xcorr_lag,
)
from emergence_core.analysis.settings import LOGPROB_NORM, AnalysisSettings
from emergence_core.analysis.synthetic import SyntheticConfig, Truth, generate, write_synthetic

__all__ = [
    "LOGPROB_NORM",
    "Analysis",
    "AnalysisSettings",
    "Floor",
    "Leads",
    "ReportSummary",
    "SyntheticConfig",
    "Truth",
    "analyze",
    "as_lazy",
    "behaviour_rows",
    "binseg",
    "chance_corrected",
    "chance_table",
    "changepoints",
    "classify",
    "cluster_bootstrap",
    "collapse_floor",
    "collapse_table",
    "difficulty_classes",
    "emergence_events",
    "emergence_index",
    "emergence_step",
    "empty_metrics",
    "event_details",
    "event_signals",
    "events_to_arrow",
    "floor_spread",
    "floor_summary",
    "generate",
    "headline_numbers",
    "hierarchy",
    "load_metrics",
    "local_spacing",
    "measure_leads",
    "noise_scale",
    "normalised_logprob",
    "precursor_rates",
    "prediction_limits",
    "smooth",
    "topdown",
    "trial_floors",
    "write_report",
    "write_synthetic",
    "xcorr_lag",
]
