"""Tasks: the eight algorithmic problems of the study as a registry, and their data."""

from emergence_core.tasks.base import (
    SPECIAL_TOKENS,
    LevelSpec,
    TaskDef,
    TaskError,
    Vocabulary,
)
from emergence_core.tasks.chance import PAIR_CHANCE, Chance, answer_chance
from emergence_core.tasks.data import (
    IGNORE,
    EncodedSet,
    LevelData,
    TrialData,
    split_indices,
    stream_indices,
    trial_layout,
)
from emergence_core.tasks.registry import TASKS, get_task, register_task, task_names

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
