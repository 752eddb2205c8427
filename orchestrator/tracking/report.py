"""The report of ``emerge analyze`` in MLflow: a copy on the sweep's parent run.

The report folder as artifacts under ``report/``, the headline numbers as tags
``report/<name>`` and the table ``report/headline.json``, the settings hash as the tag
``emerge.analysis.config_hash``, and each trial's own figures on its child run. A tracking
store that is down costs one line (``log_to_sweep_run`` returns it), never the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from emergence_core.emergence_rule import EmergenceRule
from emergence_core.errors import first_line
from emergence_core.folder_records import FolderInfo

if TYPE_CHECKING:
    from emergence_core.analysis import ReportSummary

__all__ = ["log_report", "log_to_sweep_run"]

_CONFIG_HASH_TAG = "emerge.analysis.config_hash"


def log_report(client: Any, run_id: str, summary: ReportSummary, *,
               artifacts: bool = True) -> int:
    """Log ``summary`` to MLflow run ``run_id``: the headline numbers as tags
    ``report/<name>`` and the table ``report/headline.json``, the settings-hash tag and, with
    ``artifacts``, the report folder under ``report/``. Returns the number of headline
    numbers logged.

    Not as metrics: a metric logged once is a one-bar chart among the training curves, and
    the runs table shows tags as columns just as well."""
    from mlflow.entities import RunTag

    from orchestrator.tracking.sync import MLFLOW_BATCH

    names = sorted(summary.headline)
    tags = [RunTag(_CONFIG_HASH_TAG, summary.analysis.settings.config_hash())]
    tags += [RunTag(f"report/{k}", f"{summary.headline[k]:.10g}") for k in names]
    for i in range(0, len(tags), MLFLOW_BATCH):
        client.log_batch(run_id, tags=tags[i:i + MLFLOW_BATCH])
    if artifacts:
        client.log_dict(run_id, {"name": names,
                                 "value": [summary.headline[k] for k in names]},
                        "report/headline.json")
        client.log_artifacts(run_id, str(summary.out_dir), "report")
    return len(names)


def _trial_figures(sync: Any, summary: ReportSummary) -> None:
    """Each trial's own figures (``*_<trial>.png``) also on the trial's child run."""
    runs = sync.run_ids()
    for rel in summary.files:
        path = Path(rel)
        if path.parts[:1] != ("figures",) or path.suffix != ".png":
            continue
        trial = path.stem.split("_", 1)[-1]
        if trial in runs:
            sync.client.log_artifact(runs[trial], str(summary.out_dir / path), "figures")


def _local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme in ("", "file") else None


def log_to_sweep_run(info: FolderInfo, summary: ReportSummary, tracking_uri: str | None) -> str:
    """Log the report to the sweep's parent run; one line saying what happened."""
    if info.kind == "train":
        return "mlflow: skipped: an `emerge train` run folder has no MLflow runs"
    uri = tracking_uri or info.recorded_uri
    if info.kind != "sweep" or uri is None:
        return "mlflow: skipped: no sweep.json here, so no sweep parent run to log to"
    from orchestrator.tracking.store import moved_tracking_uri
    from orchestrator.tracking.sync import MlflowSync

    moved = info.recorded_dir is not None and info.recorded_dir != info.path
    if tracking_uri is None:
        uri = moved_tracking_uri(uri, info.recorded_dir, info.path)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return (f"mlflow: not logged: the tracking store {uri} does not exist "
                "(pass --tracking-uri)")
    try:
        sync = MlflowSync(info.path, uri, info.name)
        if moved:
            sync.repair_artifact_locations(info.recorded_dir)
        run_id = sync.parent_run(  # the ledger's; created only if it has none
            info.spec_text, EmergenceRule.from_mapping(info.spec.get("emergence")))
        where = _local_path(sync.client.get_run(run_id).info.artifact_uri)
        stale = moved and where is not None and where.is_relative_to(info.recorded_dir)
        n = log_report(sync.client, run_id, summary, artifacts=not stale)
        if not stale:
            _trial_figures(sync, summary)
    except Exception as err:  # the report is the product: MLflow failing is one line
        return (f"mlflow: not logged ({uri}: {first_line(err, 300)}); the report stands, rerun "
                "`emerge analyze` to log it")
    files = "" if stale else f"report/ ({len(summary.files)} files), "
    skipped = (f"; artifacts not logged: the run's artifact store {where} is in the folder's "
               f"old location") if stale else ""
    return (f"mlflow: logged {files}{n} headline numbers (tags report/*) and the settings hash "
            f"to run {run_id} ({uri}){skipped}")
