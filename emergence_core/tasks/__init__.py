"""Tasks: the eight algorithmic problems of the study as a registry, and their data.

The registry and a trial's layout need numpy only; the data (``TrialData``, ``EncodedSet``,
...) needs torch, so it is imported on first use: validating a sweep file or printing
``emerge status`` never pays for torch.
"""

from typing import Any

from emergence_core.tasks.base import (
    SPECIAL_TOKENS,
    LevelSpec,
    TaskDef,
    TaskError,
    Vocabulary,
)
from emergence_core.tasks.chance import PAIR_CHANCE, Chance, answer_chance
from emergence_core.tasks.registry import (
    TASKS,
    get_task,
    register_task,
    task_names,
    trial_layout,
)

_DATA = ("IGNORE", "EncodedSet", "LevelData", "TrialData", "split_indices", "stream_indices")


def __getattr__(name: str) -> Any:
    if name in _DATA:
        from emergence_core.tasks import data

        return getattr(data, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "IGNORE",
    "PAIR_CHANCE",
    "SPECIAL_TOKENS",
    "TASKS",
    "Chance",
    "EncodedSet",
    "LevelData",
    "LevelSpec",
    "TaskDef",
    "TaskError",
    "TrialData",
    "Vocabulary",
    "answer_chance",
    "get_task",
    "register_task",
    "split_indices",
    "stream_indices",
    "task_names",
    "trial_layout",
]
