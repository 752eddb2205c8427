"""The sweep file: a task x scale x seed grid and how to run it, validated before anything starts.

```yaml
name: smoke
run_dir: runs/smoke              # local path or NFS (shared on a multi-node cluster)
tracking_uri: null               # null: sqlite:///<run_dir>/mlflow.db
tasks: [COPY, MOD, ADD]
levels: [1, 2, 3]
scales: [s0]
seeds: [0]
max_concurrent_trials: 2
retries: 2                       # per trial, each from its last checkpoint
train: {diag_size: 1000}         # TrainConfig fields for every trial
per_task: {MOD: {train: {steps: 1500}}}
per_scale: {s0: {train: {lr: 1e-3}, resources: {cpus: 1, gpus: 0}}}
emergence: {threshold: 0.5, persistence: 5}
```

A trial's config is the scale's and task's defaults, then ``train``, then ``per_task``, then
``per_scale``. Every problem is reported at once, one line each, naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from emergence_core.config import TrainConfig, resolve_config
from emergence_core.model import scale_shape
from emergence_core.tasks import TaskError, get_task
from orchestrator.errors import (
    UsageError,
    checked,
    format_validation_error,
    posix_run_dir,
    read_yaml,
)

__all__ = ["Resources", "SweepSpec", "TrialPlan", "load_spec", "parse_spec"]

_GRID_KEYS = {"task", "scale", "seed", "levels"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Resources(_Strict):
    """What one trial of a scale holds while it runs."""

    cpus: float = Field(1, gt=0)
    gpus: float = Field(0, ge=0)
    custom: dict[str, float] = Field(default_factory=dict,
                                     description="custom Ray resources, e.g. a node type")


DEFAULT_RESOURCES = {"s0": Resources(), "s1": Resources(), "s2": Resources(cpus=2),
                     "s3": Resources(cpus=4, gpus=1), "s4": Resources(cpus=4, gpus=1)}


class Overrides(_Strict):
    train: dict[str, Any] = Field(default_factory=dict)


class ScaleSettings(Overrides):
    resources: Resources | None = None


class ProbeMeasure(_Strict):
    """When and how one expensive measure runs on a trial's checkpoints."""

    every: int = Field(10, ge=1, description="every k-th probe step (1: all); and the last")
    batch_size: int | None = Field(None, ge=2, description="fixed probe batch (default per "
                                                            "measure)")
    settings: dict[str, Any] = Field(default_factory=dict,
                                     description="fields of the measure's settings")

    def due(self, index: int, last: int) -> bool:
        return index % self.every == 0 or index == last


class PoolResources(_Strict):
    cpus: float = Field(0, ge=0, description="0: never competes with trials for scheduling")
    gpus: float = Field(0, ge=0)
    custom: dict[str, float] = Field(default_factory=dict)


class Probes(_Strict):
    """The expensive probes: an actor pool working through the trials' checkpoints."""

    measures: dict[Literal["hessian", "llc", "fisher", "gradcov"], ProbeMeasure] = Field(
        default_factory=dict)
    actors: int = Field(1, ge=1)
    resources: PoolResources = PoolResources()
    threads: int = Field(1, ge=1, description="torch threads per actor")
    keep_weights: bool = Field(True, description="false: delete a checkpoint's weights once "
                                                 "its probes are done")
    max_attempts: int = Field(3, ge=1, description="a job that raises this often is failed")


class Emergence(_Strict):
    threshold: float = Field(0.5, gt=0, le=1)
    persistence: int = Field(5, ge=0)


_task_name = checked(lambda v: get_task(v).name, TaskError)
_scale_name = checked(lambda v: scale_shape(v).name, TaskError)


TaskName = Annotated[str, AfterValidator(_task_name)]
ScaleName = Annotated[str, AfterValidator(_scale_name)]
Level = Annotated[int, Field(ge=1, le=3)]
Seed = Annotated[int, Field(ge=0)]


class SweepSpec(_Strict):
    name: str
    run_dir: Annotated[str | None, AfterValidator(posix_run_dir)] = Field(
        None, description="default: runs/<name>")
    tracking_uri: str | None = Field(None, description="default: sqlite in the run folder")
    tasks: list[TaskName]
    levels: list[Level] = Field(default_factory=lambda: [1, 2, 3])
    scales: list[ScaleName]
    seeds: list[Seed] = Field(default_factory=lambda: [0])
    max_concurrent_trials: int | None = Field(None, ge=1)
    retries: int = Field(2, ge=0)
    reuse_workers: bool = Field(
        False, description="run the next trial in a finished trial's worker process: ~2 s "
                           "faster per trial, but the dashboard keeps the first trial's name")
    train: dict[str, Any] = Field(default_factory=dict)
    per_task: dict[TaskName, Overrides] = Field(default_factory=dict)
    per_scale: dict[ScaleName, ScaleSettings] = Field(default_factory=dict)
    emergence: Emergence = Emergence()
    probes: Probes = Probes()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("use letters, digits, '.', '_' and '-' (it names folders and runs)")
        return v

    @field_validator("tasks", "levels", "scales", "seeds")
    @classmethod
    def _grid_axis(cls, v: list, info: ValidationInfo) -> list:
        if not v:
            raise ValueError(f"empty grid: list at least one of the {info.field_name}")
        seen = set()
        for x in v:
            if x in seen:
                raise ValueError(f"{x!r} is listed twice")
            seen.add(x)
        return v

    # -- derived -----------------------------------------------------------------------------

    def resources(self, scale: str) -> Resources:
        s = self.per_scale.get(scale)
        return s.resources if s is not None and s.resources is not None \
            else DEFAULT_RESOURCES[scale]

    def overrides(self, task: str, scale: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for layer in (self.train, self.per_task.get(task, Overrides()).train,
                      self.per_scale.get(scale, ScaleSettings()).train):
            merged = _deep_merge(merged, layer)
        merged["levels"] = tuple(self.levels)
        return merged

    def trials(self) -> list[TrialPlan]:
        """The grid, in a stable order (task, scale, seed)."""
        return [TrialPlan(resolve_config(t, s, seed, **self.overrides(t, s)), self.resources(s))
                for t in self.tasks for s in self.scales for seed in self.seeds]


@dataclass(frozen=True)
class TrialPlan:
    config: TrainConfig
    resources: Resources

    @property
    def name(self) -> str:
        return self.config.trial_name()


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else v
    return out


def _section_problems(where: str, overrides: Any, task: str, scale: str) -> list[str]:
    """Validate one section's TrainConfig overrides on its own, naming its fields."""
    if not isinstance(overrides, dict):
        return []  # the schema check reports a section of the wrong type
    problems = [f"{where}.{k}: set by the grid (tasks, scales, seeds, levels), not per trial"
                for k in sorted(_GRID_KEYS & set(overrides))]
    rest = {k: v for k, v in overrides.items() if k not in _GRID_KEYS}
    try:
        resolve_config(task, scale, 0, **rest)
    except ValidationError as e:
        # errors of fields this section does not set belong to another section
        problems += format_validation_error(e, where, only=lambda loc: bool(loc) and loc[0] in rest)
    except TaskError as e:
        problems.append(f"{where}: {e}")
    return problems


def _first_valid(values: Any, canon) -> str | None:
    for v in values if isinstance(values, list) else []:
        try:
            return canon(v)
        except (TaskError, ValueError, TypeError):
            continue
    return None


def parse_spec(data: Any, source: str = "sweep file") -> SweepSpec:
    """Validate parsed YAML; raises UsageError with one line per problem, all at once."""
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a mapping of fields at the top level, "
                         f"got {type(data).__name__}")
    problems: list[str] = []
    spec = None
    try:
        spec = SweepSpec(**data)
    except ValidationError as e:
        problems += format_validation_error(e)
    # The training sections are checked on their own as well, so that their problems are
    # reported together with the schema's.
    task0 = _first_valid(data.get("tasks"), _task_name) or "MOD"
    scale0 = _first_valid(data.get("scales"), _scale_name) or "s0"
    problems += _section_problems("train", data.get("train", {}), task0, scale0)
    for key, section, fixed in (("per_task", _task_name, "task"),
                                ("per_scale", _scale_name, "scale")):
        raw = data.get(key)
        for name, body in (raw.items() if isinstance(raw, dict) else []):
            try:
                canon = section(name)
            except ValueError:
                continue  # reported by the schema
            train = body.get("train", {}) if isinstance(body, dict) else {}
            t, s = (canon, scale0) if fixed == "task" else (task0, canon)
            problems += _section_problems(f"{key}.{name}.train", train, t, s)
    if spec is not None and not problems:
        problems += _probe_problems(spec)
    if spec is not None and not problems:
        # Sections valid alone can still clash when merged (warm-up longer than the steps).
        for t in spec.tasks:
            for s in spec.scales:
                try:
                    resolve_config(t, s, 0, **spec.overrides(t, s))
                except ValidationError as e:
                    problems += [f"trial {t}-{s}: {line}" for line in format_validation_error(e)]
    if problems:
        raise UsageError(*dict.fromkeys(problems))  # de-duplicated, in order
    assert spec is not None
    return spec


def _probe_problems(spec: SweepSpec) -> list[str]:
    """Measure settings that the measures refuse, and checkpoints without weights."""
    from emergence_core.expensive import make_settings

    problems = []
    for name, m in spec.probes.measures.items():
        try:
            make_settings(name, m.settings)
        except (ValueError, TypeError) as e:
            problems.append(f"probes.measures.{name}.settings: {e}")
    for t in spec.tasks:
        for s in spec.scales:
            cfg = resolve_config(t, s, 0, **spec.overrides(t, s))
            every = cfg.checkpoint.weights_every
            for name, m in spec.probes.measures.items():
                if every is None:
                    problems.append(f"probes.measures.{name}: trial {t}-{s} saves no weights "
                                    "(train.checkpoint.weights_every is null)")
                elif m.every % every:
                    problems.append(
                        f"probes.measures.{name}.every: {m.every} is not a multiple of trial "
                        f"{t}-{s}'s train.checkpoint.weights_every ({every}), so checkpoints "
                        "it needs would have no weights")
    return list(dict.fromkeys(problems))


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    return parse_spec(read_yaml(path), str(path))

