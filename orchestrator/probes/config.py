"""The probe pool's settings, as a sweep file writes them (``probes:``).

```yaml
probes:
  measures:                      # registered expensive measures, and when each runs
    hessian: {every: 10}         # every 10th probe step, and the last
    llc: {every: 10, calibrate: true}   # a pilot fixes eps and gamma once per trial
  actors: 1                      # Ray actors computing them
  resources: {cpus: 0}           # 0 CPUs: never competes with the trials for scheduling
  threads: 1
  keep_weights: true
```
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from emergence_core.expensive import get_measure
from orchestrator.common.errors import checked

__all__ = ["PoolResources", "ProbeMeasure", "Probes"]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProbeMeasure(_Strict):
    """When and how one expensive measure runs on a trial's checkpoints."""

    every: int = Field(10, ge=1, description="every k-th probe step (1: all); and the last")
    batch_size: int | None = Field(None, ge=2, description="fixed probe batch (default per "
                                                            "measure)")
    settings: dict[str, Any] = Field(default_factory=dict,
                                     description="fields of the measure's settings")
    calibrate: bool = Field(False, description="a per-trial pilot on the trial's last "
                                               "checkpoint fixes some settings (the LLC's "
                                               "eps and gamma) for all its checkpoints")
    calibration: dict[str, Any] = Field(default_factory=dict,
                                        description="fields of the pilot (the LLC's: eps_grid, "
                                                    "gammas, max_loss_fraction, "
                                                    "max_halving_change, hessian)")


MeasureName = Annotated[str, AfterValidator(checked(lambda v: get_measure(v).name, ValueError))]


class PoolResources(_Strict):
    cpus: float = Field(0, ge=0, description="0: never competes with trials for scheduling")
    gpus: float = Field(0, ge=0)
    custom: dict[str, float] = Field(default_factory=dict)


class Probes(_Strict):
    """The expensive probes: an actor pool working through the trials' checkpoints."""

    measures: dict[MeasureName, ProbeMeasure] = Field(
        default_factory=dict, description="registered expensive measures: hessian, llc, "
                                          "fisher, gradcov, and those of plugins")
    actors: int = Field(1, ge=1)
    resources: PoolResources = PoolResources()
    threads: int = Field(1, ge=1, description="torch threads per actor")
    keep_weights: bool = Field(True, description="false: delete a checkpoint's weights once "
                                                 "its probes are done")
    max_attempts: int = Field(3, ge=1, description="a job that raises this often is failed")
