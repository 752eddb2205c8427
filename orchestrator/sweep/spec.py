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
exclude:                         # trials left out of the grid, as in a CI matrix's exclude:
  - {scales: [s1], seeds: [1]}   # an entry removes every trial matching all axes it names
emergence: {threshold: 0.5, persistence: 5}   # the default rule (emergence_rule.RULE)
plugins: [mylab.emerge_ext]      # modules registering tasks, scales, expensive measures
define_scales: {s5: {layers: 16, width: 1024, heads: 16}}   # a scale by its shape
```

A trial's config is the scale's and task's defaults, then ``train``, then ``per_task``, then
``per_scale``. ``exclude`` makes the grid less than a full product (a larger scale with fewer
seeds); every value it names must be on the grid, so a typo cannot silently exclude nothing.
Every problem is reported at once, one line each, naming the field. The
sweep file is validated here once; what travels on (to Tune, the probe pool, MLflow) is the
typed ``SweepSpec`` and its ``Trial``s, each with its plan (``emergence_core.plan``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from emergence_core.config import TrainConfig, resolve_config
from emergence_core.emergence_rule import RULE, EmergenceRule
from emergence_core.extensions import ExtensionError, Extensions
from emergence_core.plan import TrialPlan as Plan
from emergence_core.plan import trial_plan
from emergence_core.registry import RegistryError
from emergence_core.scales import ScaleError, ScaleShape, scale_shape
from emergence_core.tasks import TaskError, get_task
from orchestrator.common.errors import (
    UsageError,
    check_tracking_uri,
    checked,
    format_validation_error,
    posix_run_dir,
    read_yaml,
)
from orchestrator.probe_pool.config import Probes

__all__ = ["MAX_TRIALS", "Resources", "SweepSpec", "Trial", "TrialPlan", "load_spec",
           "parse_spec"]

# The most trials one sweep file may hold: every trial is resolved, planned and handed to
# Tune up front, so a larger grid would take minutes and gigabytes before the first word.
MAX_TRIALS = 10_000

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


class Overrides(_Strict):
    train: dict[str, Any] = Field(default_factory=dict)


class ScaleSettings(Overrides):
    resources: Resources | None = None


class DeclaredScale(_Strict):
    """A scale declared by its shape in the sweep file (``define_scales``)."""

    layers: int = Field(ge=1)
    width: int = Field(ge=1, description="d_model")
    heads: int = Field(ge=1)
    mlp: int | None = Field(None, ge=1, description="MLP width; default 4 x width")
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(192, ge=1)
    warmup_steps: int = Field(800, ge=0)
    cpus: float = Field(1, gt=0)
    gpus: float = Field(0, ge=0)

    def shape(self, name: str) -> ScaleShape:
        return ScaleShape(name.lower(), self.layers, self.width, self.heads,
                          self.mlp or 4 * self.width, None, lr=self.lr,
                          batch_size=self.batch_size, warmup_steps=self.warmup_steps,
                          cpus=self.cpus, gpus=self.gpus)


class ExtensionSpec(BaseModel):
    """The part of a sweep file that must be applied before the rest can be checked."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    plugins: list[Annotated[str, Field(pattern=r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")]] = \
        Field(default_factory=list, description="modules that register tasks, scales, measures")
    define_scales: dict[str, DeclaredScale] = Field(default_factory=dict)

    @field_validator("define_scales")
    @classmethod
    def _names(cls, v: dict[str, DeclaredScale]) -> dict[str, DeclaredScale]:
        for name in v:
            if not _NAME.match(name):
                raise ValueError(f"scale name {name!r}: use letters, digits, '.', '_', '-'")
        return v

    @property
    def extensions(self) -> Extensions:
        return Extensions(tuple(self.plugins),
                          tuple(d.shape(n) for n, d in self.define_scales.items()))


_task_name = checked(lambda v: get_task(v).name, TaskError)
_scale_name = checked(lambda v: scale_shape(v).name, ScaleError)


TaskName = Annotated[str, AfterValidator(_task_name)]
ScaleName = Annotated[str, AfterValidator(_scale_name)]
Level = Annotated[int, Field(ge=1, le=3)]
Seed = Annotated[int, Field(ge=0)]


class GridSlice(_Strict):
    """Trials of the grid matching every axis named here (an axis left out matches all)."""

    tasks: list[TaskName] | None = None
    scales: list[ScaleName] | None = None
    seeds: list[Seed] | None = None

    def matches(self, task: str, scale: str, seed: int) -> bool:
        return ((self.tasks is None or task in self.tasks)
                and (self.scales is None or scale in self.scales)
                and (self.seeds is None or seed in self.seeds))


class Emergence(_Strict):
    threshold: float = Field(RULE.threshold, gt=0, le=1)
    persistence: int = Field(RULE.persistence, ge=0)

    @property
    def rule(self) -> EmergenceRule:
        return EmergenceRule(self.threshold, self.persistence)




class SweepSpec(_Strict):
    name: str
    plugins: list[str] = Field(default_factory=list,
                               description="modules that register tasks, scales, measures")
    define_scales: dict[str, DeclaredScale] = Field(default_factory=dict,
                                                    description="scales declared by shape")
    run_dir: Annotated[str | None, AfterValidator(posix_run_dir)] = Field(
        None, description="default: runs/<name>")
    tracking_uri: Annotated[str | None, AfterValidator(check_tracking_uri)] = Field(
        None, description="default: sqlite in the run folder")
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
    exclude: list[GridSlice] = Field(
        default_factory=list, description="trials left out: each entry removes the trials "
        "matching every axis it names (tasks, scales, seeds)")
    emergence: Emergence = Emergence()
    probes: Probes = Probes()
    analysis: dict[str, Any] = Field(
        default_factory=dict, description="settings of the statistics stage that `emerge "
        "analyze` applies to this run (the fields of AnalysisSettings); --set wins")

    @field_validator("analysis")
    @classmethod
    def _analysis(cls, v: dict[str, Any]) -> dict[str, Any]:
        """Names checked here, when the sweep starts, not first at `emerge analyze` time;
        the values are checked there, with the rest of the analysis settings."""
        from dataclasses import fields

        from emergence_core.analysis.settings import AnalysisSettings
        from emergence_core.registry import did_you_mean

        known = [f.name for f in fields(AnalysisSettings)]
        for key in v:
            if key not in known:
                raise ValueError(f"unknown analysis setting {key!r}"
                                 + did_you_mean(key, known, cutoff=0.6, prefix="; "))
        return v

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

    @model_validator(mode="after")
    def _exclusions(self) -> SweepSpec:
        axes = {"tasks": self.tasks, "scales": self.scales, "seeds": self.seeds}
        problems = []
        for i, e in enumerate(self.exclude):
            named = {a: getattr(e, a) for a in axes if getattr(e, a) is not None}
            if not named:
                problems.append(f"exclude[{i}]: names no axis, so it would remove every "
                                "trial; name tasks, scales or seeds")
            for a, values in named.items():
                off = [v for v in values if v not in axes[a]]
                if off:
                    problems.append(f"exclude[{i}].{a}: {', '.join(map(str, off))} not in the "
                                    f"grid's {a} {axes[a]}")
        if problems:
            raise ValueError("; ".join(problems))
        if self.exclude and not self.grid():
            raise ValueError("exclude removes every trial of the grid")
        return self

    def grid(self) -> list[tuple[str, str, int]]:
        """(task, scale, seed) of every trial, in a stable order, less the exclusions."""
        return [(t, s, seed) for t in self.tasks for s in self.scales for seed in self.seeds
                if not any(e.matches(t, s, seed) for e in self.exclude)]

    # -- derived -----------------------------------------------------------------------------

    @property
    def extensions(self) -> Extensions:
        """What every process of this sweep applies before it builds a trial."""
        return ExtensionSpec(plugins=self.plugins, define_scales=self.define_scales).extensions

    def measure_every(self) -> dict[str, int]:
        return {m: p.every for m, p in self.probes.measures.items()}

    def resources(self, scale: str) -> Resources:
        s = self.per_scale.get(scale)
        if s is not None and s.resources is not None:
            return s.resources
        shape = scale_shape(scale)
        return Resources(cpus=shape.cpus, gpus=shape.gpus)

    def overrides(self, task: str, scale: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for layer in (self.train, self.per_task.get(task, Overrides()).train,
                      self.per_scale.get(scale, ScaleSettings()).train):
            merged = _deep_merge(merged, layer)
        merged["levels"] = tuple(self.levels)
        return merged

    @cached_property
    def _trials(self) -> tuple[Trial, ...]:
        every = self.measure_every()
        d = self.probes.density
        density = None if d is None else d.resolved(list(every))
        out = []
        for t, s, seed in self.grid():
            cfg = resolve_config(t, s, seed, **self.overrides(t, s))
            out.append(Trial(cfg, self.resources(s), trial_plan(cfg, every, density)))
        return tuple(out)

    def trials(self) -> list[Trial]:
        """The grid less its exclusions, in a stable order (task, scale, seed); resolved once
        per spec."""
        return list(self._trials)

    def trial(self, name: str) -> Trial:
        return next(t for t in self._trials if t.name == name)


@dataclass(frozen=True)
class Trial:
    """One trial of the grid: its validated config, what it holds, and its plan."""

    config: TrainConfig
    resources: Resources
    plan: Plan

    @property
    def name(self) -> str:
        return self.config.trial_name()


TrialPlan = Trial  # the name this class had before the run folder's plans existed


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
        problems += format_validation_error(e, where, model=TrainConfig,
                                            only=lambda loc: bool(loc) and loc[0] in rest)
    except RegistryError as e:  # an unknown task or scale
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
    apply_extensions(data)
    problems: list[str] = []
    spec = None
    try:
        spec = SweepSpec(**data)
    except ValidationError as e:
        problems += format_validation_error(e, model=SweepSpec)
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
        n = len(spec.tasks) * len(spec.scales) * len(spec.seeds)  # before exclusions: the
        if n > MAX_TRIALS:                                        # grid is walked to exclude
            raise UsageError(
                f"{source}: the grid has {n:,} trials (tasks {len(spec.tasks)} x scales "
                f"{len(spec.scales)} x seeds {len(spec.seeds)}); a sweep file holds at most "
                f"{MAX_TRIALS:,}: split it into several sweep files, each with its own run_dir")
        problems += _probe_problems(spec)
    if spec is not None and not problems:
        # Sections valid alone can still clash when merged (warm-up longer than the steps).
        for t, s in dict.fromkeys((t, s) for t, s, _ in spec.grid()):
            try:
                resolve_config(t, s, 0, **spec.overrides(t, s))
            except ValidationError as e:
                problems += [f"trial {t}-{s}: {line}" for line in format_validation_error(e)]
    if problems:
        raise UsageError(*dict.fromkeys(problems))  # de-duplicated, in order
    assert spec is not None
    return spec


def apply_extensions(data: dict[str, Any]) -> Extensions:
    """Import the sweep file's plugins and register its declared scales, so that its tasks,
    scales and measures can be checked; UsageError (exit 2) before anything starts."""
    try:
        ext = ExtensionSpec(**data).extensions
    except ValidationError as e:
        raise UsageError(*format_validation_error(e)) from None
    try:
        ext.apply()
    except (ExtensionError, RegistryError) as e:
        raise UsageError(str(e)) from None
    return ext


def _probe_problems(spec: SweepSpec) -> list[str]:
    """Measure settings that the measures refuse, and checkpoints without weights."""
    from emergence_core.measure_registry import get_measure, make_settings

    problems = []
    for name, m in spec.probes.measures.items():
        try:
            make_settings(name, m.settings)
        except (ValueError, TypeError) as e:
            problems.append(f"probes.measures.{name}.settings: {e}")
        if (m.calibrate or m.calibration) and get_measure(name).calibrate is None:
            problems.append(f"probes.measures.{name}.calibrate: {name} has no calibration; "
                            "remove calibrate/calibration")
    for t, s in dict.fromkeys((t, s) for t, s, _ in spec.grid()):
        cfg = resolve_config(t, s, 0, **spec.overrides(t, s))
        every = cfg.checkpoint.weights_every
        d = spec.probes.density
        dense = set() if d is None else set(d.measures or spec.probes.measures)
        if d is not None and d.window < spec.emergence.persistence + d.around:
            problems.append(
                f"probes.density.window: {d.window} probe steps cannot reach back to an "
                f"event's window: an event is confirmed {spec.emergence.persistence} probe "
                f"steps after its onset, so use at least persistence + around "
                f"({spec.emergence.persistence + d.around})")
        for name, m in spec.probes.measures.items():
            if name in dense:
                continue  # a dense measure's backbone keeps its own weights
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

