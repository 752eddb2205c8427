"""What a trial tells the driver, and what the driver does with it; no Tune here.

The trial side encodes each report as the flat dict Tune carries (``trial_metrics`` at each
probe step, ``final_metrics`` at the end); the driver side (``TrialEvents``) reads them back
and feeds the progress board, sends committed rows, events, alerts and statuses to MLflow,
and records failures. ``tune_run`` adapts Tune's report call and callback hooks to these, so
only it moves when Tune's API does.

The driver's services (``driver.SweepServices``: the board, the MLflow thread) are found in
``RUNNING_SWEEPS`` by run folder rather than carried: Tune pickles its callback into
``tuner.pkl`` and unpickles it on restore, and a thread does not pickle.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RUNNING_SWEEPS", "TrialEvents", "final_metrics", "trial_metrics"]

# The services of the sweeps this driver process runs, by run folder (see the docstring).
RUNNING_SWEEPS: dict[str, Any] = {}


def trial_metrics(report: Any) -> dict[str, Any]:
    """What a trial reports to Tune at each probe step (ProbeReport -> flat dict)."""
    out: dict[str, Any] = {"step": report.step, "total_steps": report.total_steps,
                           "committed": report.committed,
                           "n_events": len(report.events), "done": False}
    if report.train_loss is not None:
        out["train_loss"] = report.train_loss
    for lv, acc in report.accuracy.items():
        out[f"accuracy_L{lv}"] = acc
    for lv, step in report.events.items():
        out[f"emergence_L{lv}"] = step
    out["n_alerts"] = report.n_alerts
    if report.new_alerts:
        out["alerts"] = "\n".join(a.line() for a in report.new_alerts)
    return out


def final_metrics(outcome: Any, total_steps: int) -> dict[str, Any]:
    """What a trial reports when ``run_trial`` returns (its outcome -> flat dict)."""
    final = {"step": outcome.step, "total_steps": total_steps, "done": outcome.completed,
             "n_events": sum(v is not None for v in outcome.events.values()),
             "committed": True}
    final.update({f"emergence_L{lv}": s for lv, s in outcome.events.items() if s is not None})
    return final


class TrialEvents:
    """The driver's reactions to a launch's trials: feeds the progress board, sends
    committed rows to MLflow, records failures. Pickles (``run_dir`` and the configs)."""

    def __init__(self, run_dir: str, configs: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.configs = configs  # trial name -> TrainConfig, validated once by the driver

    def _services(self) -> Any:
        return RUNNING_SWEEPS[self.run_dir]

    def _config(self, name: str) -> Any:
        return self.configs[name]

    def started(self, name: str) -> None:
        sweep = self._services()
        sweep.board.started(name)
        sweep.mlflow_call(lambda m: m.trial_run(name, self._config(name)))

    def reported(self, name: str, result: dict) -> None:
        sweep = self._services()
        if result.get("diverged"):
            sweep.board.failed(name, result["diverged"], will_retry=False)
            sweep.failures[name] = result["diverged"]
            sweep.mlflow_call(lambda m: m.sync_trial(name, self._config(name)))
            sweep.mlflow_call(lambda m: m.set_status(name, "FAILED", reason=result["diverged"]))
            return
        events = {int(k.removeprefix("emergence_L")): int(v) for k, v in result.items()
                  if k.startswith("emergence_L") and v is not None}
        for note in (result.get("notes") or "").splitlines():
            sweep.board.note(f"[yellow]warning: {name}: {note}[/yellow]")
        alerts = tuple(result["alerts"].splitlines()) if result.get("alerts") else ()
        sweep.board.result(name, int(result.get("step", 0)), events, alerts,
                           result.get("n_alerts"))
        if result.get("committed"):
            sweep.mlflow_call(lambda m: m.sync_trial(name, self._config(name)))
        if events:
            sweep.mlflow_call(lambda m: m.tag_events(name, events))
        if alerts:
            sweep.mlflow_call(lambda m: m.tag_alerts(name))

    def completed(self, name: str, last_result: dict | None) -> None:
        done = bool((last_result or {}).get("done"))
        sweep = self._services()
        sweep.board.finished(name, done)
        sweep.mlflow_call(lambda m: m.sync_trial(name, self._config(name)))
        if done:
            sweep.mlflow_call(lambda m: m.set_status(name, "FINISHED"))

    def retrying(self, name: str, error: str) -> None:
        self._services().board.failed(name, error, will_retry=True)

    def failed(self, name: str, error: str) -> None:
        sweep = self._services()
        sweep.board.failed(name, error, will_retry=False)
        sweep.record_failure(name, error)
        sweep.mlflow_call(lambda m: m.sync_trial(name, self._config(name)))
        sweep.mlflow_call(lambda m: m.set_status(name, "FAILED", reason=error))

    def step_end(self) -> None:
        self._services().board.refresh()
