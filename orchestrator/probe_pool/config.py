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
  density:                       # adaptive: a backbone at each measure's every, plus jobs
    around: 3                    # pinned around live alerts and events, within a budget
    budget_every: 10             # (as many jobs as uniform every-10 sampling)
```
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from emergence_core.measure_registry import get_measure
from orchestrator.common.errors import checked

__all__ = ["DensitySettings", "PoolResources", "ProbeMeasure", "Probes"]


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
                                        description="fields of the pilot (the LLC's: steps, "
                                                    "localisations, max_rise_fraction, "
                                                    "max_halving_change, "
                                                    "max_localisation_change, relaxation_burnin, "
                                                    "relaxation_kept, max_draws, "
                                                    "max_shortfall, spectrum_probes, "
                                                    "spectrum_steps)")


MeasureName = Annotated[str, AfterValidator(checked(lambda v: get_measure(v).name, ValueError))]


class PoolResources(_Strict):
    cpus: float = Field(0, ge=0, description="0: never competes with trials for scheduling")
    gpus: float = Field(0, ge=0)
    custom: dict[str, float] = Field(default_factory=dict)


# what pins a window: an emergence event, any live alert, or one kind of alert
Trigger = Literal["event", "alert", "precursor", "approach"]


class DensitySettings(_Strict):
    """Adaptive density (``emergence_core.trial.density``): a coarse backbone (each dense
    measure's ``every``) plus jobs pinned around live alerts and emergence events."""

    measures: list[MeasureName] | None = Field(
        None, description="the dense measures (default: all); they share one 'every'")
    around: int = Field(3, ge=0, description="probe steps pinned on each side of a trigger's "
                                             "onset")
    window: int = Field(8, ge=1, description="weights of this many recent probe steps are "
                                             "kept, ready to pin (at least the emergence "
                                             "persistence plus 'around')")
    budget_every: int = Field(10, ge=1, description="budget per trial and measure: as many "
                                                    "jobs as uniform every-k sampling runs")
    triggers: list[Trigger] = Field(
        default_factory=lambda: ["approach", "event"], min_length=1,
        description="what pins a window: event, approach or precursor alerts, alert (both); "
                    "precursor alerts fire often and early, and at equal budget leave the "
                    "events thinly sampled (BENCHMARKS.md, density)")
    alert_share: float = Field(0.5, ge=0, le=1, description="most of the budget beyond the "
                                                            "backbone that alerts may spend; "
                                                            "the rest waits for events")

    def resolved(self, measures: list[str]) -> dict[str, Any]:
        """What ``trial_plan`` takes (``measures``: the sweep's expensive measures)."""
        return {"measures": tuple(self.measures or measures), "around": self.around,
                "window": self.window, "budget_every": self.budget_every,
                "triggers": tuple(self.triggers), "alert_share": self.alert_share}


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
    density: DensitySettings | None = Field(None, description="adaptive density; null: each "
                                                               "measure uniform at its every")

    @model_validator(mode="after")
    def _dense_measures(self) -> Probes:
        if self.density is None:
            return self
        dense = self.density.measures or list(self.measures)
        unknown = [m for m in dense if m not in self.measures]
        if unknown:
            raise ValueError(f"density.measures: {unknown[0]} is not in probes.measures")
        every = {self.measures[m].every for m in dense}
        if len(every) > 1:
            raise ValueError(f"density: the dense measures share one backbone; their 'every' "
                             f"differ ({', '.join(map(str, sorted(every)))})")
        return self
