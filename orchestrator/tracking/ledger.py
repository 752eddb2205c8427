"""The run-id ledger of a sweep's MLflow runs: a file in the run folder, its lock, and what
is done when it is damaged.

``RunFolder.ledger_path`` keeps the tracking store's URI, the experiment and parent run ids,
and per trial its run id and the last step logged, so a retried or resumed trial logs to the
same run and never opens a second one. The file is locked (``RunFolder.ledger_lock_path``)
against a concurrent ``emerge sync-mlflow`` and replaced atomically. A damaged ledger, or one
kept for another tracking store, is set aside (``.damaged``, ``.other-store``) and rebuilt
from the store's own runs, whose tags name the sweep's folder and each trial.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from emergence_core.atomic import atomic_path
from emergence_core.run_folder import RunFolder

__all__ = ["RunLedger"]


class RunLedger:
    """The ledger of one sweep in one tracking store; ``client()`` gives the MLflow client
    used to rebuild it, ``notes`` collects the warnings for the caller to show."""

    def __init__(self, folder: RunFolder, tracking_uri: str, sweep: str,
                 client: Callable[[], Any], notes: list[str]) -> None:
        self.folder = folder
        self.run_dir = folder.path
        self.tracking_uri = tracking_uri
        self.sweep = sweep
        self.ledger_path = folder.ledger_path
        self._client = client
        self.notes = notes

    @contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        """The ledger, locked against a concurrent ``emerge sync-mlflow``; saved on exit."""
        self.ledger_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.folder.ledger_lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.read()
            before = "" if data.pop("_rebuilt", False) else json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                with atomic_path(self.ledger_path) as tmp:
                    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))

    def read(self) -> dict[str, Any]:
        """The ledger; a damaged one is rebuilt from MLflow's own runs (their tags name the
        sweep's folder and each trial), so no trial ever gets a second run."""
        if not self.ledger_path.exists():
            return {"tracking_uri": self.tracking_uri, "trials": {}}
        try:
            data = json.loads(self.ledger_path.read_text())
            if isinstance(data, dict) and isinstance(data.get("trials"), dict) and all(
                    isinstance(e, dict) and "run_id" in e for e in data["trials"].values()):
                return self._for_this_store(data)
            problem = "its fields are not a ledger's"
        except (OSError, ValueError) as err:
            problem = str(err).splitlines()[0][:200]
        return self._rebuild_aside("damaged", lambda data, kept: (
            f"the MLflow ledger {self.ledger_path} was damaged ({problem}); rebuilt from "
            f"MLflow's runs ({len(data['trials'])} trials), the damaged copy kept as {kept}"))

    def _for_this_store(self, data: dict[str, Any]) -> dict[str, Any]:
        """The ledger if it describes this tracking store. One written for another store
        (``sync-mlflow --tracking-uri`` elsewhere) is set aside and rebuilt from this store's
        own runs, so switching stores either way never makes a second run or point."""
        recorded = data.get("tracking_uri", self.tracking_uri)
        if recorded == self.tracking_uri:
            return data
        if self._holds(data.get("parent_run_id")):  # the same store under another URI
            return {**data, "tracking_uri": self.tracking_uri, "_rebuilt": True}
        return self._rebuild_aside("other-store", lambda data, kept: (
            f"the MLflow ledger was kept for another store ({recorded}); rebuilt for "
            f"{self.tracking_uri} from its runs ({len(data['trials'])} trials), the other "
            f"kept as {kept}"))

    def _rebuild_aside(self, suffix: str, note: Callable[[dict[str, Any], str], str]
                       ) -> dict[str, Any]:
        """The ledger rebuilt from the store's runs, the file there set aside as
        ``ledger.json.<suffix>``; ``note(rebuilt, kept name)`` says so to the caller."""
        data = self._rebuild()
        aside = self.ledger_path.with_name(f"{self.ledger_path.name}.{suffix}")
        self.ledger_path.replace(aside)
        self.notes.append(note(data, aside.name))
        return {**data, "_rebuilt": True}  # saved by locked() even if nothing else changes

    def _holds(self, run_id: str | None) -> bool:
        """Whether this store has the run (a missing one is an answer; a store that cannot
        be reached raises, as every other call would)."""
        from mlflow.exceptions import MlflowException

        if run_id is None:
            return False
        try:
            self._client().get_run(run_id)
        except MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return False
            raise
        return True

    def _rebuild(self) -> dict[str, Any]:
        data: dict[str, Any] = {"tracking_uri": self.tracking_uri, "trials": {}}
        exp = self._client().get_experiment_by_name(self.sweep)
        if exp is None:
            return data
        runs = self._client().search_runs(
            [exp.experiment_id], f"tags.`emerge.run_dir` = '{self.run_dir}'", max_results=1)
        if not runs:
            return data
        parent = runs[0].info.run_id
        data.update(experiment_id=exp.experiment_id, parent_run_id=parent)
        children = self._client().search_runs(
            [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=50000)
        for r in children:
            trial = r.data.tags.get("emerge.trial")
            if trial is not None:  # rows are sent again, less those MLflow holds
                data["trials"][trial] = {"run_id": r.info.run_id, "logged_through": -1,
                                         "finished": r.info.status == "FINISHED",
                                         "check_held": True}
        return data

    def run_ids(self) -> dict[str, str]:
        """Each trial's run id; {} before any run was made."""
        if not self.ledger_path.exists():
            return {}
        with self.locked() as led:
            return {t: e["run_id"] for t, e in led["trials"].items()}
