"""Which MLflow tracking store a run folder uses, and whether it can work.

The embedded store is a SQLite file inside the run folder (``default_tracking_uri``), so it
moves with the folder (``moved_tracking_uri``); a store is checked before anything is
written (``check_store``); ``configure`` makes MLflow fail fast rather than stall a sweep.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from emergence_core.run_folder import RunFolder

__all__ = ["check_store", "configure", "default_tracking_uri", "moved_tracking_uri"]


def configure() -> None:
    """Fail fast when a server is down: a sweep must not stall on MLflow's default retries
    (7 attempts with exponential back-off); what is missed is sent at the next sync. Called
    when a sync is made, never at import."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # A failing SQL store (a full disk) logs each error with its traceback before raising;
    # emerge catches it and says "MLflow unavailable" in one line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def check_store(uri: str, *, reach: bool = False, timeout_s: float = 5.0) -> None:
    """Refuse, before anything is written, a tracking store that cannot work: a URI of an
    unknown scheme or a SQLite store that is not SQLite (UsageError, exit 2); with
    ``reach``, a server that does not accept a connection within ``timeout_s`` seconds
    (RuntimeFault, exit 1). A SQLite file that does not exist yet is made by MLflow."""
    import socket
    from urllib.parse import urlparse

    from emergence_core.readers import UnreadableFile, check_sqlite
    from orchestrator.common.errors import RuntimeFault, UsageError, check_tracking_uri

    try:
        check_tracking_uri(uri)
    except ValueError as e:
        raise UsageError(f"tracking URI: {e}") from None
    if uri.startswith("sqlite:///"):
        try:
            check_sqlite(Path(uri.removeprefix("sqlite:///")),
                         "it is not an MLflow store: restore it, or move it aside and run "
                         "`emerge sync-mlflow RUN_DIR` to fill a new store from Parquet")
        except UnreadableFile as e:
            raise UsageError(f"tracking store {e}") from None
    parsed = urlparse(uri)
    if reach and parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
        except OSError as e:
            why = e.strerror or type(e).__name__ if not isinstance(e, TimeoutError) \
                else f"no answer in {timeout_s:g} s"
            raise RuntimeFault(f"cannot reach MLflow at {uri} ({why}); start the server, or "
                               "pass --tracking-uri; nothing was sent or written") from None


def default_tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{RunFolder(run_dir).mlflow_db}"


def moved_tracking_uri(recorded_uri: str, recorded_dir: Path | None, run_dir: Path) -> str:
    """The tracking URI a sweep recorded, following its folder when the folder moved: the
    embedded store (``default_tracking_uri``) lives inside the folder and moved with it."""
    if recorded_dir is not None and recorded_dir != run_dir \
            and recorded_uri == default_tracking_uri(recorded_dir):
        return default_tracking_uri(run_dir)
    return recorded_uri


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """Where a researcher sees the experiment's runs and their charts.

    MLflow 3.17's UI picks its view from the URL's ``workflowType`` parameter, else from the
    browser's saved choice (local storage ``mlflow.workflowType``), else GenAI (traces,
    judges); the experiment's ``mlflow.experimentKind`` tag does not decide it, and no server
    setting does. So a fresh browser at an experiment's plain URL shows "Traces 0". The
    experiment's ``/runs`` page shows the runs table in either view (checked in a fresh
    headless Chromium by ``tests/test_sweep_e2e.py``), and ``workflowType=machine_learning``
    turns the sidebar to training too. An embedded SQLite store needs ``mlflow ui`` first.
    """
    page = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{page}"
    return (f"`mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1`, then "
            f"http://127.0.0.1:5000/{page}")
