"""Pythia evaluation: the same measures across the public training checkpoints
(docs/methods.md §5).

- :mod:`.revisions`: the 154 revision names, sweep selections, model-name validation;
- :mod:`.probesets`: the seven probe sets shipped as data, and their registry;
- :mod:`.loading`: loading a (model, revision) through the hub cache, one typed error;
- :mod:`.scoring`: teacher-forced scoring and residual-stream capture in padded batches;
- :mod:`.evaluate`: per-set accuracy, log-prob and per-layer RankMe as metrics rows.

Pure science: no Ray, no MLflow. The fan-out calls :func:`evaluate_revision` once per
(model, revision).
"""

from emergence_core.pythia.evaluate import (
    ProbeSetResult,
    evaluate_model,
    evaluate_revision,
    results_to_table,
    trial_id,
)
from emergence_core.pythia.loading import (
    PythiaLoadError,
    cached_revisions,
    load_checkpoint,
    resolve_dtype,
)
from emergence_core.pythia.probesets import (
    PROBESETS,
    ProbeItem,
    ProbeSet,
    ProbeSetError,
    ProbeSetSpec,
    load_probeset,
    load_probesets,
    probeset_names,
    read_probeset_file,
)
from emergence_core.pythia.revisions import (
    REVISION_STEPS,
    REVISIONS,
    ModelName,
    ModelNameError,
    RevisionError,
    parse_model_name,
    parse_revisions,
    revision_step,
)
from emergence_core.pythia.scoring import POSITIONS, ItemScores, score_probeset

__all__ = [
    "POSITIONS",
    "PROBESETS",
    "REVISIONS",
    "REVISION_STEPS",
    "ItemScores",
    "ModelName",
    "ModelNameError",
    "ProbeItem",
    "ProbeSet",
    "ProbeSetError",
    "ProbeSetResult",
    "ProbeSetSpec",
    "PythiaLoadError",
    "RevisionError",
    "cached_revisions",
    "evaluate_model",
    "evaluate_revision",
    "load_checkpoint",
    "load_probeset",
    "load_probesets",
    "parse_model_name",
    "parse_revisions",
    "probeset_names",
    "read_probeset_file",
    "resolve_dtype",
    "results_to_table",
    "revision_step",
    "score_probeset",
    "trial_id",
]
