"""The trial: one config trained to completion in a run folder, probed along the way.

Data flows through it in this order: ``trainer`` (a plain loop with one hook where probes
run) calls ``cheap_probes`` at each probe step; ``runner`` (``run_trial``) reads the rows they
add, watches for emergence events and live ``alerts``, lets ``density`` decide which
weights the expensive probes get (``decisions``: the same from the same rows, live or
replayed), and commits rows and state to the run folder.
"""

from emergence_core.trial.alerts import Alert, AlertDetector, alerts_table
from emergence_core.trial.cheap_probes import run_cheap_probes
from emergence_core.trial.decisions import Decisions, EmergenceTracker
from emergence_core.trial.density import DensePlanner, Pins
from emergence_core.trial.runner import (
    FileState,
    ProbeReport,
    StateStore,
    TrialDiverged,
    TrialHooks,
    TrialOutcome,
    run_trial,
)
from emergence_core.trial.trainer import (
    STATE_FORMAT,
    Divergence,
    ProbeSummary,
    StateMismatch,
    Trainer,
    resolve_device,
)

__all__ = [
    "STATE_FORMAT",
    "Alert",
    "AlertDetector",
    "Decisions",
    "DensePlanner",
    "Divergence",
    "EmergenceTracker",
    "FileState",
    "Pins",
    "ProbeReport",
    "ProbeSummary",
    "StateMismatch",
    "StateStore",
    "Trainer",
    "TrialDiverged",
    "TrialHooks",
    "TrialOutcome",
    "alerts_table",
    "resolve_device",
    "run_cheap_probes",
    "run_trial",
]
