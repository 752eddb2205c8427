"""The configuration of one training run, validated once and frozen.

``resolve_config(task, scale, seed, **overrides)`` derives every field from the scale's and
the task's defaults, then applies overrides; the result is concrete (no ``None`` standing for
"derive later") so that two runs with equal configs are the same run, and ``fingerprint()``
names it. Unknown keys are refused with a message naming the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from emergence_core.scales import scale_shape
from emergence_core.tasks import TaskError, get_task, trial_layout

__all__ = [
    "AlertConfig",
    "CheckpointConfig",
    "ProbeConfig",
    "RunEstimate",
    "TrainConfig",
    "check_device",
    "estimate",
    "resolve_config",
    "scale_defaults",
    "task_defaults",
]

ReadPosition = Literal["sep", "prompt_mean", "last_answer"]
# fp32: everything in float32. bf16: the training forward and backward under bfloat16
# autocast, weights and AdamW state in float32 (master weights), every measure in float32.
Precision = Literal["fp32", "bf16"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProbeConfig(_Frozen):
    """When and how the cheap measures run inside the trial."""

    n_probes: int = Field(200, ge=1, description="probe steps per run (step 0 extra)")
    log_fraction: float = Field(0.5, ge=0, le=1, description="share of log-spaced probes")
    log_until: float = Field(0.1, gt=0, le=1, description="log-spaced part: this share of steps")
    read_positions: tuple[ReadPosition, ...] = Field(
        ("sep",), min_length=1,
        description="where representations are read: sep (predicts the first answer token), "
                    "prompt_mean (mean over prompt tokens), last_answer (last answer token)")
    rankme_samples: int = Field(200, ge=2, description="diagnostic samples per level for RankMe")
    linear_probe: bool = True
    probe_fit_fraction: float = Field(0.5, gt=0, lt=1,
                                      description="share of diagnostic samples fitting the probe")
    ridge: float = Field(1e-3, ge=0, description="ridge penalty of the linear probe")
    eval_batch_size: int = Field(1024, ge=1)

    @field_validator("read_positions")
    @classmethod
    def _distinct(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError("read_positions has duplicates")
        return v


class CheckpointConfig(_Frozen):
    """What is saved, and how often."""

    every_probes: int = Field(10, ge=1, description="full training state every k probe steps")
    interval_s: float = Field(120.0, gt=0, description="... or when this much time has passed")
    weights_every: int | None = Field(
        1, ge=1, description="model weights (safetensors) every k-th probe step; null: never")


class AlertConfig(_Frozen):
    """The live alerts' change-point rule (``emergence_core.trial.alerts`` states it)."""

    enabled: bool = True
    window: int = Field(8, ge=3, description="reference: the last k values of a series")
    k: float = Field(4.0, gt=0, description="a value departs beyond k robust spreads")
    confirm: int = Field(2, ge=1, description="consecutive departing values raise an alert")
    rel_floor: float = Field(0.02, ge=0, description="least spread, as a share of the median")
    abs_floor: float = Field(0.01, ge=0, description="least spread of a geometric series")
    approach_floor: float = Field(0.01, ge=0, description="least spread of chance-corrected "
                                                          "accuracy (the approach alert)")
    approach_confirm: int = Field(1, ge=1, description="departing accuracy values that raise "
                                                       "an approach alert (a capability can "
                                                       "cross the threshold in two probes)")
    min_step: float = Field(0.05, ge=0, lt=1, description="no alert before this share of "
                                                           "training (the early collapse)")


class TrainConfig(_Frozen):
    """One trial: one model trained on one task, its levels mixed in equal proportion."""

    task: str
    scale: str
    seed: int = Field(ge=0)
    levels: tuple[int, ...] = (1, 2, 3)
    level_params: dict[int, dict[str, int]] = Field(
        default_factory=dict, description="difficulty overrides, e.g. {1: {p: 97}}")
    data_seed: int | None = Field(None, ge=0, description="seed of the data; null: the seed")
    # optimisation (docs/methods.md §2)
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1, description="samples per step, split evenly over the levels")
    lr: float = Field(gt=0)
    warmup_steps: int = Field(ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(1.0, ge=0, description="AdamW decay on matrices")
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float | None = Field(1.0, gt=0)
    init_std: float = Field(0.02, gt=0)
    precision: Precision = Field("fp32", description="fp32, or bf16: training under bfloat16 "
                                 "autocast, float32 weights, measures in float32")
    # data (docs/methods.md §1)
    train_size: int = Field(ge=1, description="training problems per level (at most)")
    train_fraction: float | None = Field(
        None, gt=0, lt=1, description="largest share of a level's universe used for training; "
                                      "null: the task's default (MOD: 0.4)")
    diag_size: int = Field(1000, ge=2, description="diagnostic problems per level (at most)")
    probe: ProbeConfig = ProbeConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    alerts: AlertConfig = AlertConfig()
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N")

    @field_validator("task")
    @classmethod
    def _task(cls, v: str) -> str:
        return get_task(v).name

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: str) -> str:
        return scale_shape(v).name

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        bad = [lv for lv in v if lv not in (1, 2, 3)]
        if bad:
            raise ValueError(f"unknown level {bad[0]}; levels are 1, 2, 3")
        if not v or len(set(v)) != len(v):
            raise ValueError("levels must be a non-empty list without duplicates")
        return tuple(sorted(v))

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.batch_size < len(self.levels):
            raise ValueError(f"batch_size {self.batch_size} is smaller than the number of "
                             f"levels {len(self.levels)}")
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} exceeds steps {self.steps}")
        return self

    @field_validator("level_params")
    @classmethod
    def _level_params(cls, v: dict[int, dict[str, int]], info: ValidationInfo
                      ) -> dict[int, dict[str, int]]:
        task = info.data.get("task")
        if task is not None:
            for lv, params in v.items():
                try:
                    get_task(task).level(lv, **params)
                except TaskError as e:
                    raise ValueError(str(e)) from None
        return v

    @property
    def effective_data_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    def fingerprint(self) -> str:
        """A short hash naming the run: equal configs, equal fingerprints.

        The device is left out: where a run executes does not make it another run (a trial
        moved from a GPU to a CPU node resumes the same run).
        """
        blob = json.dumps(self.model_dump(mode="json", exclude={"device"}), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def trial_name(self) -> str:
        """Readable and stable: task-scale-seed (the Ray dashboard shows it)."""
        return f"{self.task}-{self.scale}-{self.seed}"


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(name: str, *, available: bool = False) -> str:
    """``name`` if it names a device (auto, cpu, mps, cuda, cuda:N); with ``available``, also
    one this machine has (a sweep's trials run elsewhere: only their syntax is checked)."""
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise ValueError(f"unknown device {name!r}: use auto (CUDA when present, else CPU), "
                         "cpu, cuda or cuda:N")
    if available and name.startswith("cuda"):
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.partition(":")[2] or 0)
        if index >= n:
            have = "no CUDA device is visible" if n == 0 else f"it has {n} CUDA device(s)"
            raise ValueError(f"{name} is not on this machine ({have}); use cpu or auto")
    if available and name == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise ValueError("mps is not on this machine; use cpu or auto")
    return name


# Defaults ------------------------------------------------------------------------------------

def scale_defaults(scale: str) -> dict[str, Any]:
    return scale_shape(scale).training_defaults()


def task_defaults(task: str) -> dict[str, Any]:
    t = get_task(task)
    return {"steps": t.steps, "train_size": t.train_size}


def resolve_config(task: str, scale: str, seed: int, **overrides: Any) -> TrainConfig:
    """The full config of a run: scale defaults, then task defaults, then ``overrides``.

    Unless set, the warm-up is the scale's, capped at a tenth of the run.
    """
    fields = {**scale_defaults(scale), **task_defaults(task), **overrides}
    if "warmup_steps" not in overrides and isinstance(fields.get("steps"), int):
        fields["warmup_steps"] = min(fields["warmup_steps"], max(0, fields["steps"] // 10))
    return TrainConfig(task=task, scale=scale, seed=seed, **fields)


@dataclass(frozen=True)
class RunEstimate:
    """What a run costs, for dry runs: parameters and floating-point operations."""

    params: int
    train_flops: float  # 6 N per trained token (forward + backward)
    probe_flops: float  # 2 N per token of the diagnostic forward passes

    @property
    def total_flops(self) -> float:
        return self.train_flops + self.probe_flops


def estimate(cfg: TrainConfig) -> RunEstimate:
    """Parameters and FLOPs of ``cfg`` from its shapes alone (no data is drawn)."""
    specs, vocab = trial_layout(cfg.task, cfg.levels, cfg.level_params)
    shape = scale_shape(cfg.scale)
    n = shape.params(vocab.size, max(s.seq_len for s in specs))
    per_level = [cfg.batch_size // len(specs) + (i < cfg.batch_size % len(specs))
                 for i in range(len(specs))]
    tokens_per_step = sum(b * (s.seq_len - 1) for b, s in zip(per_level, specs, strict=True))
    diag_tokens = sum(min(cfg.diag_size, s.universe) * (s.seq_len - 1) for s in specs)
    n_probes = min(cfg.probe.n_probes, cfg.steps) + 1
    return RunEstimate(n, 6.0 * n * tokens_per_step * cfg.steps, 2.0 * n * diag_tokens * n_probes)
