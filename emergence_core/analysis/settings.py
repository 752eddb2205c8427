"""Settings of the statistics stage: every parameter of docs/methods.md §4, one frozen object.

Each field carries the methods' default where docs/methods.md §4 names one (the emergence
rule's ``threshold`` and ``persistence`` come from ``emergence_rule.RULE``); where it is
silent the default is fixed here and its definition is in the docstring
of the function that uses it. The sweep file's ``analysis:`` section maps onto these
fields one to one; a bad value fails in ``__post_init__`` naming the field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from emergence_core.emergence_rule import RULE, EmergenceRule
from emergence_core.metrics import Measure

__all__ = [
    "BEHAVIOUR_MEASURES",
    "DIAGNOSTIC_MEASURES",
    "EXPECTED_MEASURES",
    "LOGPROB_NORM",
    "AnalysisSettings",
]

# The normalised log-prob variant of the emergence event (see events.normalised_logprob).
LOGPROB_NORM = "logprob_norm"

# What the model does, not its geometry: never a candidate precursor.
BEHAVIOUR_MEASURES: tuple[str, ...] = (
    Measure.ACCURACY, Measure.TOKEN_ACCURACY, Measure.LOGPROB, Measure.DIAG_LOSS,
    Measure.TRAIN_LOSS, Measure.LR, LOGPROB_NORM, Measure.CHANCE, Measure.LOGPROB_CHANCE,
    Measure.DIAG_SIZE, Measure.DIAG_ASKED,
)
# Companions of an estimate (its spread, its convergence flag), not measures of their own.
DIAGNOSTIC_MEASURES: tuple[str, ...] = (
    Measure.LLC_STD, Measure.LLC_CONVERGED, Measure.HESSIAN_TRACE_STDERR,
    Measure.FISHER_ERANK_STDERR, Measure.GRADCOV_ERANK_STDERR,
)

# The geometric measures a complete training sweep logs; the report names the absent ones.
EXPECTED_MEASURES: tuple[str, ...] = (
    Measure.RANKME, Measure.RANKME_UNCENTRED, Measure.LINEAR_PROBE,
    Measure.HESSIAN_LAMBDA_MAX, Measure.HESSIAN_TRACE, Measure.LLC,
    Measure.FISHER_ERANK, Measure.GRADCOV_ERANK,
)


@dataclass(frozen=True)
class AnalysisSettings:
    """All parameters of the statistics stage (docs/methods.md §4).

    Emergence: ``threshold``, ``persistence`` (``emergence_rule.RULE``'s defaults), applied
    to each measure in ``event_measures`` (accuracy, and the normalised log-prob ``logprob_norm``).

    Onsets: series are smoothed by a centred running median of ``smooth_window`` probes,
    then segmented into constant-mean regimes by binary segmentation (penalty
    ``changepoint_penalty`` x sigma^2 x log n, at most ``max_changepoints``, segments of at
    least ``changepoint_min_size`` probes; sigma = robust noise of the raw series, floored
    at ``noise_floor`` x the smoothed range). The onset is the change point opening the
    regime the measure is in at the event (``leads.departure_onset``), the nearest change
    point a variant. ``measure_grid_tolerance``: each lead's stated tolerance is the wider
    of the event's probe interval and the measure's own probe spacing at the event (False:
    the event's interval alone); a lead within a tolerance wider than the event's interval
    is ``unresolved``. ``xcorr_max_lag`` and ``xcorr_window`` are in probes.

    Emergence reads chance-corrected accuracy, ``(accuracy - chance) / (1 - chance)``, with
    each level's ``chance`` row (``events``).

    Collapse: ``collapse_measure`` (final layer, per task level, is the headline; every
    collapse-family measure, per level and pooled, is a variant), window ``early_fraction``
    of training, recovery at ``recovery_fraction`` of the drop regained, a layer "reaches"
    its floor within ``floor_reach_fraction`` of the drop. Top-down when the Spearman rho
    between layer index and collapse time is <= -``topdown_rho`` over at least
    ``topdown_min_layers`` voting layers (bottom-up when >= +``topdown_rho``): a layer votes
    when it collapses, its median drop depth ``1 - floor / initial`` at least
    ``topdown_min_depth``, and is not the embedding (layer 0) unless ``topdown_embedding``.

    Difficulty: ``hard`` overrides the median rule with a list of ``"TASK"`` or
    ``"TASK:LEVEL"`` strings (every other task level is easy).

    Measures analysed: every measure in the table except ``exclude_measures``, or only
    ``measures`` when given. Intervals on a share k/n: with at least ``bootstrap_min_seeds``
    seeds, ``n_bootstrap`` resamples of seeds, percentile interval at ``ci_level``, generator
    seeded by ``bootstrap_seed``; with fewer seeds, or where every resample gives the same
    share (all seeds agree, e.g. 0 of n in each), a Wilson score interval on k/n (a 3-seed
    bootstrap has 10 distinct resamples, and its 95% interval is their extremes, or 0-0%).

    The hierarchy ranks a measure for an event only over at least ``rank_min_onsets``
    onsets (fewer: listed, unranked). A live alert *preceded* its event when raised at most
    ``alert_horizon`` probe intervals (at the event) before it.

    Prediction limits use ``signal_measure``'s onset. The report draws per-trial figures
    for at most ``max_trial_figures`` trials (the rest are listed, not drawn).
    """

    threshold: float = RULE.threshold
    persistence: int = RULE.persistence
    event_measures: tuple[str, ...] = (Measure.ACCURACY, LOGPROB_NORM)
    smooth_window: int = 5
    changepoint_penalty: float = 2.0
    changepoint_min_size: int = 3
    max_changepoints: int = 8
    noise_floor: float = 0.01
    measure_grid_tolerance: bool = True
    xcorr_max_lag: int = 10
    xcorr_window: int = 40
    collapse_measure: str = Measure.RANKME
    early_fraction: float = 0.5
    recovery_fraction: float = 0.5
    floor_reach_fraction: float = 0.05
    topdown_rho: float = 0.5
    topdown_min_layers: int = 3
    topdown_min_depth: float = 0.2
    topdown_embedding: bool = False
    hard: tuple[str, ...] | None = None
    exclude_measures: tuple[str, ...] = BEHAVIOUR_MEASURES + DIAGNOSTIC_MEASURES
    measures: tuple[str, ...] | None = None
    n_bootstrap: int = 2000
    ci_level: float = 0.95
    bootstrap_seed: int = 0
    bootstrap_min_seeds: int = 5
    rank_min_onsets: int = 3
    alert_horizon: float = 10.0
    signal_measure: str = Measure.RANKME
    max_trial_figures: int = 12

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.threshold <= 1.0:
            problems.append(f"threshold must lie in [0, 1], got {self.threshold}")
        for name in ("persistence", "max_changepoints", "xcorr_max_lag", "max_trial_figures"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.smooth_window < 1 or self.smooth_window % 2 == 0:
            problems.append(f"smooth_window must be odd and >= 1, got {self.smooth_window}")
        if self.changepoint_min_size < 1:
            problems.append(f"changepoint_min_size must be >= 1, got {self.changepoint_min_size}")
        if self.xcorr_window < 2 * self.xcorr_max_lag:
            problems.append(f"xcorr_window ({self.xcorr_window}) must be >= 2 x xcorr_max_lag "
                            f"({self.xcorr_max_lag})")
        if self.changepoint_penalty <= 0 or self.noise_floor <= 0:
            problems.append("changepoint_penalty and noise_floor must be > 0")
        for name in ("early_fraction", "recovery_fraction", "floor_reach_fraction",
                     "ci_level", "topdown_rho"):
            if not 0.0 < getattr(self, name) <= 1.0:
                problems.append(f"{name} must lie in (0, 1], got {getattr(self, name)}")
        if self.topdown_min_layers < 3:  # two layers give rho = +-1 and no p-value
            problems.append(f"topdown_min_layers must be >= 3, got {self.topdown_min_layers}")
        if not 0.0 <= self.topdown_min_depth < 1.0:
            problems.append(f"topdown_min_depth must lie in [0, 1), got {self.topdown_min_depth}")
        if self.n_bootstrap < 1:
            problems.append(f"n_bootstrap must be >= 1, got {self.n_bootstrap}")
        if self.bootstrap_min_seeds < 2:  # one seed has nothing to resample
            problems.append(f"bootstrap_min_seeds must be >= 2, got {self.bootstrap_min_seeds}")
        if self.rank_min_onsets < 1:
            problems.append(f"rank_min_onsets must be >= 1, got {self.rank_min_onsets}")
        if not self.alert_horizon > 0:
            problems.append(f"alert_horizon must be > 0 (probe intervals), got "
                            f"{self.alert_horizon}")
        if isinstance(self.hard, str) or isinstance(self.measures, str):
            problems.append("hard and measures are lists of strings, not one string")
        if problems:
            raise ValueError("invalid analysis settings: " + "; ".join(problems))

    @property
    def rule(self) -> EmergenceRule:
        return EmergenceRule(self.threshold, self.persistence)

    def config_hash(self) -> str:
        """A short hash of every field, written beside the report so it describes itself."""
        blob = json.dumps(asdict(self), sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:12]
