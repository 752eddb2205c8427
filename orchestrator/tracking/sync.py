"""MLflow, filled from the Parquet parts: one parent run per sweep, one child run per trial.

Parquet is the source of truth; MLflow is a view of it that the driver fills in as parts are
committed (and that ``emerge sync-mlflow`` can fill in later, after the server was down).
A ledger in the run folder (``ledger.RunLedger``) keeps each trial's run id, so a retried
or resumed trial logs to the same run and never opens a second one, and the last step
logged, so rows are sent once. Re-sending a row is harmless anyway: rows carry their Parquet
wall time, and MLflow's SQL store drops a metric whose (key, step, timestamp, value) it holds.

Metric keys and what MLflow holds of each row: ``view.py``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from emergence_core.calibrations import read_calibration
from emergence_core.config import TrainConfig
from emergence_core.emergence_rule import RULE, EmergenceRule
from emergence_core.folder_records import failure
from emergence_core.run_folder import RunFolder
from emergence_core.store import TrialStore
from orchestrator.tracking.ledger import RunLedger
from orchestrator.tracking.store import configure
from orchestrator.tracking.view import (
    CONSTANT_MEASURES,
    UNCONVERGED,
    chances_of,
    metric_key,
    metric_rows,
    mlflow_view,
)

# metric_key, metric_rows, mlflow_view and the constants: re-exported from view.py
__all__ = ["CONSTANT_MEASURES", "MLFLOW_BATCH", "UNCONVERGED", "MlflowSync", "metric_key",
           "metric_rows", "mlflow_view"]

MLFLOW_BATCH = 1000  # MLflow's limit of metrics per log_batch call

# An experiment of training runs: without this tag MLflow 3's UI opens it in GenAI mode
# (traces, judges, "evaluation runs").
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def _spec_fields(spec_text: str) -> dict:
    """The sweep file's fields, for the parent run's parameters and description only (the
    sweep was validated where it was read; an unparsable copy gives none)."""
    import yaml

    try:
        data = yaml.safe_load(spec_text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _description(data: dict, rule: EmergenceRule, run_dir: Path) -> str:
    """The parent run's description (MLflow shows it on the run's page)."""
    grid = " x ".join(f"{k} {', '.join(map(str, data.get(k, [])))}"
                      for k in ("tasks", "scales", "seeds") if data.get(k))
    return (f"emerge sweep **{data.get('name', '?')}**: {grid}. Emergence: accuracy at "
            f"threshold {rule.threshold} held for {rule.persistence} "
            f"probe steps. Run folder `{run_dir}`; the sweep file is the artifact spec.yaml.")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | tuple | dict) else str(v)
    return out


class MlflowSync:
    """Creates the sweep's runs and sends committed rows; one per driver process."""

    def __init__(self, run_dir: Path, tracking_uri: str, sweep: str) -> None:
        configure()
        self.folder = RunFolder(run_dir)
        self.run_dir = self.folder.path
        self.tracking_uri = tracking_uri
        self.sweep = sweep
        self.ledger_path = self.folder.ledger_path
        self._client = None
        self.notes: list[str] = []  # warnings for the caller to show (a rebuilt ledger)
        # per trial, what MLflow held when this process first sent it rows: the last step
        # held and the (key, step) pairs (see sync_trial)
        self._held: dict[str, tuple[int, set[tuple[str, int]]]] = {}
        self._chances: dict[str, dict[int, float]] = {}  # per trial, its levels' chance
        self.ledger = RunLedger(self.folder, tracking_uri, sweep, lambda: self.client,
                                self.notes)

    def _ledger(self):
        """The run-id ledger, locked and saved on exit (``ledger.RunLedger.locked``)."""
        return self.ledger.locked()

    def run_ids(self) -> dict[str, str]:
        return self.ledger.run_ids()

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    # -- runs --------------------------------------------------------------------------------

    def parent_run(self, spec_text: str | None = None, rule: EmergenceRule = RULE) -> str:
        """The sweep's parent run, made the first time with ``spec_text`` (the sweep file as
        launched) as its artifact and parameters and ``rule`` in its description."""
        fields = _spec_fields(spec_text) if spec_text is not None else {}
        with self._ledger() as led:
            if "parent_run_id" in led:
                return led["parent_run_id"]
            exp = self.client.get_experiment_by_name(self.sweep)
            if exp is None:
                artifacts = self.folder.mlflow_artifacts_dir.as_uri() \
                    if self.tracking_uri.startswith("sqlite:") else None
                exp_id = self.client.create_experiment(self.sweep, artifact_location=artifacts,
                                                       tags=EXPERIMENT_TAGS)
            else:
                exp_id = exp.experiment_id
                for k, v in EXPERIMENT_TAGS.items():  # an experiment made by an older emerge
                    if exp.tags.get(k) != v:
                        self.client.set_experiment_tag(exp_id, k, v)
            tags = {"emerge.kind": "sweep", "emerge.run_dir": str(self.run_dir)}
            if spec_text is not None:
                tags["mlflow.note.content"] = _description(fields, rule, self.run_dir)
            run = self.client.create_run(exp_id, run_name=self.sweep, tags=tags)
            led.update(experiment_id=exp_id, parent_run_id=run.info.run_id)
        if spec_text is not None:
            self.client.log_text(run.info.run_id, spec_text, RunFolder.SPEC)
            params = _flatten(fields)
            from mlflow.entities import Param

            items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
            for i in range(0, len(items), 100):
                self.client.log_batch(run.info.run_id, params=items[i:i + 100])
        return run.info.run_id

    def repair_artifact_locations(self, old_dir: Path) -> int:
        """After the run folder moved from ``old_dir``: point the experiments and runs whose
        artifacts were stored under ``old_dir`` at the same place under the folder now, so
        the UI shows them again; returns the number of locations changed.

        MLflow stores a local artifact location as an absolute ``file://`` URI (a relative
        one is resolved against the working directory when the experiment is made) and has
        no call to change it, so the SQL store's two columns are rewritten in place. Only a
        SQLite store is touched (the embedded one, or one given as a sqlite URI); a server's
        store is the server's to manage."""
        import sqlite3

        db_path = Path(self.tracking_uri.removeprefix("sqlite:///"))
        if not self.tracking_uri.startswith("sqlite:///") or old_dir == self.run_dir \
                or not db_path.is_file():
            return 0
        old, new = old_dir.as_uri() + "/", self.run_dir.as_uri() + "/"
        changed = 0
        with closing(sqlite3.connect(db_path)) as db, db:
            for table, column in (("experiments", "artifact_location"),
                                  ("runs", "artifact_uri")):
                changed += db.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                    f"WHERE substr({column}, 1, ?) = ?",
                    (new, len(old) + 1, len(old), old)).rowcount
        if changed:
            from mlflow.tracking._tracking_service import utils

            # MLflow keeps each run's artifact store per process, by run id: forget the old
            # ones, or this process would go on writing to the old place
            getattr(utils, "_artifact_repos_cache", {}).clear()
            exp = self.client.get_experiment_by_name(self.sweep)
            parents = [] if exp is None else self.client.search_runs(
                [exp.experiment_id], f"tags.`emerge.run_dir` = '{old_dir}'")
            for run in parents:  # the tag a ledger is rebuilt from (not read from the ledger,
                # which may itself need that rebuild)
                self.client.set_tag(run.info.run_id, "emerge.run_dir", str(self.run_dir))
        return changed

    def trial_run(self, trial: str, config: TrainConfig) -> str:
        """The trial's run id: created once, then the same for every retry and resume."""
        parent = self.parent_run()
        with self._ledger() as led:
            entry = led["trials"].get(trial)
            if entry is not None:
                return entry["run_id"]
            run = self.client.create_run(
                led["experiment_id"], run_name=trial,
                tags={"mlflow.parentRunId": parent, "emerge.kind": "trial", "emerge.trial": trial,
                      "emerge.fingerprint": config.fingerprint()})
            params = _flatten(config.model_dump(mode="json"))
            from mlflow.entities import Param

            items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
            for i in range(0, len(items), 100):
                self.client.log_batch(run.info.run_id, params=items[i:i + 100])
            led["trials"][trial] = {"run_id": run.info.run_id, "logged_through": -1,
                                    "finished": False}
            return run.info.run_id

    # -- rows --------------------------------------------------------------------------------

    def sync_trial(self, trial: str, config: TrainConfig, *, through: int | None = None) -> int:
        """Send the trial's committed rows not yet logged (up to step ``through``)."""
        from mlflow.entities import Metric

        run_id = self.trial_run(trial, config)
        with self._ledger() as led:
            done = led["trials"][trial]["logged_through"]
            check_held = led["trials"][trial].get("check_held", False)
        # MLflow may hold rows past ``logged_through``: a driver stopped between a batch
        # reaching the server and the ledger's update (SIGTERM, a lost node), or a rebuilt
        # ledger (-1). A resumed trial computes those steps again with new wall times, and
        # MLflow would keep them as second points. So the first time this process sends a
        # trial rows, it asks MLflow what it holds, and until its rows pass the last step
        # held it sends only the (key, step) pairs MLflow lacks: the held steps may be
        # computed again only later (a damaged part, an earlier checkpoint).
        check_held = trial not in self._held and (check_held or done >= 0)
        table = TrialStore(self.run_dir, trial).read(after=done)
        if table.num_rows == 0:
            return 0
        mask = pc.greater(table["step"], done)
        if through is not None:
            mask = pc.and_(mask, pc.less_equal(table["step"], through))
        table = table.filter(mask)
        if table.num_rows == 0:
            return 0
        view, params = mlflow_view(metric_rows(table), self._trial_chances(trial, run_id, done))
        self._chances.setdefault(trial, {}).update(chances_of(params))
        metrics = [Metric(k, v, t, st) for k, v, t, st in view]
        if check_held:
            held = self._held_pairs(run_id, metrics)
            self._held[trial] = (max((st for _, st in held), default=-1), held)
        elif trial not in self._held:
            self._held[trial] = (-1, set())  # a new trial: MLflow holds none of it
        last, held = self._held[trial]
        if held and min(m.step for m in metrics) > last:
            self._held[trial] = (last, set())  # past what MLflow held: nothing to skip
        elif held:
            metrics = [m for m in metrics if (m.key, m.step) not in held]
        if params:
            from mlflow.entities import Param

            items = [Param(k, v) for k, v in sorted(params.items())]
            for i in range(0, len(items), 100):
                self.client.log_batch(run_id, params=items[i:i + 100])
        for i in range(0, len(metrics), MLFLOW_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i:i + MLFLOW_BATCH])
        steps = table["step"].to_pylist()
        with self._ledger() as led:
            led["trials"][trial]["logged_through"] = max(steps)
            led["trials"][trial].pop("check_held", None)
        self._tag_events(run_id, trial)
        self._tag_alerts(run_id, trial)
        return len(metrics)

    def _trial_chances(self, trial: str, run_id: str, done: int) -> dict[int, float]:
        """The trial's chance per level: known to this process, or (rows already sent by
        another) read back from the run's ``chance/L<level>`` params."""
        if trial not in self._chances and done >= 0:
            self._chances[trial] = chances_of(self.client.get_run(run_id).data.params)
        return self._chances.get(trial, {})

    def _held_pairs(self, run_id: str, metrics: list) -> set[tuple[str, int]]:
        """The (key, step) pairs the run holds, for the keys of ``metrics``."""
        return {(m.key, m.step) for key in {m.key for m in metrics}
                for m in self.client.get_metric_history(run_id, key)}

    def sync_probes(self, trial: str, config: TrainConfig) -> int:
        """Send the trial's expensive-probe rows not yet logged, at their checkpoints' steps,
        and their diagnostics (the LLC's loss trace, ...) as artifacts."""
        from mlflow.entities import Metric

        from orchestrator.probe_pool.queue import ProbeQueue

        queue = ProbeQueue(self.folder)
        mine = sorted(j for j in queue.done_jobs() if j.trial == trial)
        with self._ledger() as led:
            logged = set(led["trials"].get(trial, {}).get("probes_logged", []))
        todo = [j for j in mine if f"{j.measure}@{j.step}" not in logged]
        self._sync_calibrations(trial, config, {j.measure for j in mine})
        if not todo:
            return 0
        run_id = self.trial_run(trial, config)
        metrics = []
        for job in todo:
            view, _ = mlflow_view(metric_rows(queue.store(job).read()))
            metrics += [Metric(k, v, t, st) for k, v, t, st in view]
        for i in range(0, len(metrics), MLFLOW_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i:i + MLFLOW_BATCH])
        for job in todo:
            diag = queue.diagnostics_path(job)
            if diag.exists():
                self.client.log_artifact(run_id, str(diag), f"probes/{job.measure}")
        with self._ledger() as led:
            entry = led["trials"][trial]
            entry["probes_logged"] = sorted(
                set(entry.get("probes_logged", [])) | {f"{j.measure}@{j.step}" for j in todo})
        return len(metrics)

    def _sync_calibrations(self, trial: str, config: TrainConfig, measures: set[str]) -> None:
        """A measure's per-trial calibration as params (``<measure>.calibration.*``: the
        chosen settings, or ``not converged``, and the pilot's step) and its record as an
        artifact; once per trial and measure."""
        from mlflow.entities import Param

        with self._ledger() as led:
            done = set(led["trials"].get(trial, {}).get("calibrations_logged", []))
        new = []
        for measure in sorted(measures - done):
            record = read_calibration(self.folder, trial, measure)
            if record is None:
                continue
            chosen = record.get("chosen")
            params = {f"{measure}.calibration.step": str(record.get("step")),
                      f"{measure}.calibration.status":
                          "converged" if chosen is not None else "not converged"}
            params |= {f"{measure}.calibration.{k}": str(v) for k, v in (chosen or {}).items()}
            run_id = self.trial_run(trial, config)
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
            self.client.log_artifact(run_id, str(self.folder.calibration_path(trial, measure)),
                                     f"probes/{measure}")
            new.append(measure)
        if new:
            with self._ledger() as led:
                entry = led["trials"].setdefault(trial, {})
                entry["calibrations_logged"] = sorted(done | set(new))

    def _tag_events(self, run_id: str, trial: str) -> None:
        path = TrialStore(self.run_dir, trial).events_path
        if not path.exists():
            return
        events = pq.read_table(path)
        for lv, step in zip(events["level"].to_pylist(), events["step"].to_pylist(), strict=True):
            self.client.set_tag(run_id, f"emergence.L{lv}", "none" if step is None else str(step))

    def tag_events(self, trial: str, events: dict[int, int]) -> None:
        """Emergence steps as the trial detects them (before its events table exists)."""
        run_id = self.run_ids().get(trial)
        if run_id is None:
            return
        for lv, step in events.items():
            self.client.set_tag(run_id, f"emergence.L{lv}", str(step))

    def tag_alerts(self, trial: str) -> None:
        """The trial's live alerts so far, from ``alerts/``: ``emerge.alerts`` (how many),
        ``emerge.alerts.first`` and ``emerge.alerts.last`` (one line each)."""
        run_id = self.run_ids().get(trial)
        if run_id is not None:
            self._tag_alerts(run_id, trial)

    def _tag_alerts(self, run_id: str, trial: str) -> None:
        from emergence_core.store import read_alerts

        rows = sorted(read_alerts(self.run_dir, trial).to_pylist(),
                      key=lambda r: (r["step"], r["kind"], r["measure"]))
        if not rows:
            return
        self.client.set_tag(run_id, "emerge.alerts", str(len(rows)))
        for which, r in (("first", rows[0]), ("last", rows[-1])):
            where = f"L{r['level']}" + ("" if r["layer"] is None else f" layer {r['layer']}")
            self.client.set_tag(run_id, f"emerge.alerts.{which}",
                                f"{r['kind']} {r['measure']} {where}: onset {r['onset_step']},"
                                f" seen at {r['step']}")

    def set_status(self, trial: str | None, status: str, reason: str | None = None) -> None:
        """RUNNING, FINISHED or FAILED, for a trial's run or (trial None) the parent; a
        finished or failed run gets its end time (MLflow shows its duration), a failed one
        the reason as the tag ``emerge.failure``."""
        with self._ledger() as led:
            if trial is None:
                run_id = led.get("parent_run_id")
            else:
                entry = led["trials"].get(trial)
                run_id = entry and entry["run_id"]
                if entry is not None:
                    entry["finished"] = status == "FINISHED"
        if run_id is None:
            return
        if reason is not None:
            self.client.set_tag(run_id, "emerge.failure", reason[:5000])
        if status == "RUNNING":
            self.client.update_run(run_id, status=status)
        else:
            self.client.set_terminated(run_id, status=status)

    def sync_all(self, configs: Sequence[TrainConfig]) -> dict[str, int]:
        """Fill in every trial (``emerge sync-mlflow``); returns rows sent per trial."""
        sent = {}
        for cfg in configs:
            trial = cfg.trial_name()
            sent[trial] = self.sync_trial(trial, cfg) + self.sync_probes(trial, cfg)
            if self.folder.is_complete(trial):
                self.set_status(trial, "FINISHED")
            elif (why := failure(self.folder, trial)) is not None:
                self.set_status(trial, "FAILED", reason=why)
        return sent

