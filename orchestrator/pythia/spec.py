"""The Pythia sweep file: which (model, revision) checkpoints to measure and how, validated
before anything starts (docs/methods.md §5).

```yaml
name: pythia
run_dir: runs/pythia                 # default runs/<name>; shared storage on a cluster
models: [EleutherAI/pythia-160m, EleutherAI/pythia-410m, EleutherAI/pythia-2.8b]
revisions: all                       # or a list, or a range "step1000..step143000:1000"
probesets: [grammar, semantics, arithmetic, icl, factual, logic, general_text]
positions: [sep]                     # read positions of RankMe: sep, prompt_mean
dtype: auto                          # float32 on every node (geometry must not depend on it)
batch_size: 16
max_concurrent: null                 # (model, revision) tasks in flight; null: cluster CPUs
retries: 2                           # per task, when its worker dies (never for load errors)
resources:                           # per model name, else per size, else default
  default: {cpus: 1, gpus: 0}
  2.8b: {cpus: 2, gpus: 1, memory_gb: 16}
```

A model's resources are the entry of its full name, else of its size (``2.8b``), else
``default``, else the built-in entry of its size class (:data:`BUILTIN_RESOURCES`). Every
problem is reported at once, one line each, naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from emergence_core.pythia.probesets import PROBESETS, ProbeSetError, load_probeset
from emergence_core.pythia.revisions import (
    ModelNameError,
    RevisionError,
    parse_model_name,
    parse_revisions,
)
from emergence_core.pythia.scoring import POSITIONS
from orchestrator.common.errors import (
    UsageError,
    checked,
    format_validation_error,
    posix_run_dir,
    read_yaml,
)

__all__ = ["BUILTIN_RESOURCES", "DEFAULT_MODELS", "MEASUREMENT_FIELDS", "PythiaResources",
           "PythiaSpec", "RevisionTask", "load_pythia_spec", "parse_pythia_spec",
           "size_params"]

DEFAULT_MODELS = ("EleutherAI/pythia-160m", "EleutherAI/pythia-410m", "EleutherAI/pythia-2.8b")
# Fields that change the measured values: a run folder keeps them as first launched.
MEASUREMENT_FIELDS = ("name", "positions", "dtype", "batch_size")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([mb])$")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PythiaResources(_Strict):
    """What one (model, revision) task holds while it runs. ``memory_gb`` reserves host RAM
    in Ray's scheduler (the weights are read on the host before they move to a GPU)."""

    cpus: float = Field(1, gt=0)
    gpus: float = Field(0, ge=0)
    memory_gb: float | None = Field(None, gt=0)


def size_params(size: str) -> float:
    """``"410m"`` -> 4.1e8, ``"2.8b"`` -> 2.8e9."""
    m = _SIZE.match(size)
    if m is None:
        raise ValueError(f"not a model size like 160m or 2.8b: {size!r}")
    return float(m[1]) * (1e6 if m[2] == "m" else 1e9)


# Built-in classes by parameter count (fp32 weights take 4 bytes a parameter on CPU; a
# 2.8b model is 11 GB in fp32, 5.6 GB in bf16, so it gets a GPU unless the file says not).
BUILTIN_RESOURCES: tuple[tuple[float, PythiaResources], ...] = (
    (5e8, PythiaResources(cpus=1, gpus=0, memory_gb=4)),    # 14m .. 410m
    (2e9, PythiaResources(cpus=2, gpus=0, memory_gb=16)),   # 1b, 1.4b
    (float("inf"), PythiaResources(cpus=2, gpus=1, memory_gb=32)),  # 2.8b .. 12b
)


_model = checked(lambda v: parse_model_name(v).name, ModelNameError)
_probeset = checked(lambda v: load_probeset(v).name, ProbeSetError)


def _position(v: str) -> str:
    if v not in POSITIONS:
        raise ValueError(f"unknown read position {v!r}; use one of {', '.join(POSITIONS)}")
    return v


def _resource_key(v: str) -> str:
    if v != "default" and not _SIZE.match(v) and "/" not in v:
        raise ValueError("not 'default', a model size (160m, 2.8b) or a model name "
                         "(EleutherAI/pythia-160m)")
    return v


def _revision_problems(value: Any) -> list[str]:
    """One line per bad revision selection, with its place in the list."""
    if isinstance(value, str):
        parts = [("revisions", value)]  # 'all' is allowed here only, not inside a list
    elif isinstance(value, list) and value:
        parts = [(f"revisions[{i}]", v) for i, v in enumerate(value)]
    elif isinstance(value, list):
        return ["revisions: the list is empty; use 'all', names, or ranges like "
                "'step1000..step143000:1000'"]
    else:
        return [f"revisions: expected 'all', a name, a range 'stepA..stepB:K' or a list of "
                f"them (got {value!r})"]
    out = []
    for where, v in parts:
        try:
            parse_revisions(v if where == "revisions" or not isinstance(v, str) else [v])
        except RevisionError as e:
            out.append(f"{where}: {e}")
    return out


def _revisions(v: Any) -> Any:
    problems = _revision_problems(v)
    if problems:
        raise ValueError(problems[0].partition(": ")[2])
    return v


ModelId = Annotated[str, AfterValidator(_model)]
ProbeSetName = Annotated[str, AfterValidator(_probeset)]
Position = Annotated[str, AfterValidator(_position)]
ResourceKey = Annotated[str, AfterValidator(_resource_key)]
Revisions = Annotated[str | list[str], BeforeValidator(_revisions)]


class PythiaSpec(_Strict):
    """A validated, frozen Pythia sweep file (fields and defaults: the module docstring)."""

    name: str
    run_dir: Annotated[str | None, AfterValidator(posix_run_dir)] = Field(
        None, description="default: runs/<name>")
    models: list[ModelId] = Field(default_factory=lambda: list(DEFAULT_MODELS))
    revisions: Revisions = "all"
    probesets: list[ProbeSetName] = Field(default_factory=lambda: list(PROBESETS))
    positions: list[Position] = Field(default_factory=lambda: ["sep"])
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(16, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    retries: int = Field(2, ge=0)
    resources: dict[ResourceKey, PythiaResources] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("use letters, digits, '.', '_' and '-' (it names folders and rows)")
        return v

    @field_validator("models", "probesets", "positions")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("the list is empty: name at least one")
        dup = sorted({x for x in v if v.count(x) > 1})
        if dup:
            raise ValueError(f"{dup[0]!r} is listed twice")
        return v

    @model_validator(mode="after")
    def _resource_models(self) -> PythiaSpec:
        stray = [k for k in self.resources if "/" in k and k not in self.models]
        if stray:
            raise ValueError(f"resources.{stray[0]}: names a model that is not in models")
        return self

    # -- derived -----------------------------------------------------------------------------

    def revision_list(self) -> list[tuple[str, int]]:
        """``[(revision, step), ...]`` in training order."""
        return parse_revisions(self.revisions)

    def resources_for(self, model: str) -> tuple[str, PythiaResources]:
        """(where they come from, the resources) of one model's tasks: ``"resources.2.8b"``
        or ``"built-in for 2.8b"``."""
        size = parse_model_name(model).size
        for key in (model, size, "default"):
            if key is not None and key in self.resources:
                return f"resources.{key}", self.resources[key]
        params = size_params(size) if size else 0.0
        res = next(r for limit, r in BUILTIN_RESOURCES if params <= limit)
        return f"built-in for {size or 'other models'}", res

    def device_and_dtype(self, res: PythiaResources) -> tuple[str, str]:
        device = "cuda" if res.gpus > 0 else "cpu"
        if self.dtype != "auto":
            return device, self.dtype
        return device, "float32"  # one dtype everywhere: RankMe must not depend on the node

    def grid(self) -> list[RevisionTask]:
        """Every (model, revision), models in file order, revisions in training order."""
        out = []
        revisions = self.revision_list()
        for model in self.models:
            _, res = self.resources_for(model)
            device, dtype = self.device_and_dtype(res)
            out += [RevisionTask(model, rev, step, tuple(self.probesets), res, device, dtype)
                    for rev, step in revisions]
        return out


@dataclass(frozen=True)
class RevisionTask:
    """One unit of the fan-out: a (model, revision) and the probe sets still to measure."""

    model: str
    revision: str
    step: int
    probesets: tuple[str, ...]
    resources: PythiaResources
    device: str
    dtype: str

    @property
    def label(self) -> str:
        return f"{self.model}@{self.revision}"


def parse_pythia_spec(data: Any, source: str = "pythia sweep file") -> PythiaSpec:
    """Validate parsed YAML; raises UsageError with one line per problem, all at once."""
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a mapping of fields at the top level, "
                         f"got {type(data).__name__}")
    try:
        return PythiaSpec(**data)
    except ValidationError as e:
        # revisions get one line per bad element, where pydantic stops at the first
        problems = format_validation_error(e, only=lambda loc: loc[:1] != ("revisions",))
        if "revisions" in data:
            problems += _revision_problems(data["revisions"])
        raise UsageError(*dict.fromkeys(problems)) from None


def load_pythia_spec(path: str | Path) -> PythiaSpec:
    path = Path(path)
    return parse_pythia_spec(read_yaml(path), str(path))
