"""What a run folder's records say, read and checked: the sweep's launches (sweep.json), an
``emerge train`` folder's config (run.json), a trial's completion and failure records, and
from them where a trial stands (``trial_state``) and what the folder is (``describe``).

``RunFolder`` names the files and writes them; this module only reads, asking it for every
path. A damaged record is one ``UnreadableFile`` line naming the file and the fix.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emergence_core.readers import UnreadableFile, load_yaml, read_json
from emergence_core.run_folder import RunFolder, RunFolderError, parts_in

__all__ = [
    "FolderInfo",
    "TrialState",
    "completion",
    "describe",
    "failure",
    "failure_record",
    "probe_actors",
    "read_run_record",
    "sweep_state",
    "trial_state",
]


@dataclass(frozen=True)
class TrialState:
    """Where a trial stands, from the run folder alone."""

    state: str  # done, failed, incomplete, pending
    step: int | None  # last committed step
    events: dict[int, int | None]
    error: str | None = None


@dataclass(frozen=True)
class FolderInfo:
    """What a run folder says about itself. ``kind``: ``sweep`` (sweep.json), ``train``
    (run.json), ``other`` (metrics or checkpoints but neither file, e.g. Pythia rows or a
    copied table) or ``empty``. ``recorded_dir`` and ``recorded_uri``: sweep.json's."""

    path: Path
    kind: str
    name: str
    launched: tuple[str, ...]
    recorded_dir: Path | None
    recorded_uri: str | None
    spec: Mapping[str, Any]
    spec_text: str | None
    notes: tuple[str, ...]


# -- the sweep as launched -------------------------------------------------------------------

def sweep_state(folder: RunFolder) -> dict[str, Any]:
    """sweep.json: ``run_dir``, ``tracking_uri``, ``launches`` [{name, trials}]."""
    if not folder.is_sweep():
        what = "no such folder" if not folder.path.exists() else "no sweep.json in it"
        raise RunFolderError(f"{folder.path} is not a sweep's run folder ({what}); start "
                             "one with `emerge sweep SPEC`")
    return _sweep_record(folder)


_SWEEP_FIX = ("restore it from a backup: it records where the sweep was launched and its "
              "launches (the rows in metrics/ are intact)")


def _sweep_record(folder: RunFolder) -> dict[str, Any]:
    """sweep.json, checked to be what ``RunFolder.record_launch`` writes; UnreadableFile if
    not."""
    state = read_json(folder.sweep_path, _SWEEP_FIX)
    launches = state.get("launches")
    if not isinstance(launches, list) or not all(
            isinstance(la, dict) and isinstance(la.get("name"), str)
            and isinstance(la.get("trials"), list) for la in launches):
        raise UnreadableFile(folder.sweep_path, "its 'launches' are not a list of "
                             "{name, trials}", _SWEEP_FIX)
    for key in ("run_dir", "tracking_uri"):
        if not isinstance(state.get(key), str):
            raise UnreadableFile(folder.sweep_path, f"its {key!r} is not a string", _SWEEP_FIX)
    return state


def read_run_record(folder: RunFolder) -> dict[str, Any] | None:
    """run.json, or None without one; a damaged one is one UnreadableFile line."""
    if not folder.run_record_path.exists():
        return None
    fix = ("it records the run's config: restore it from a backup, or train into a new "
           "--out (the rows in metrics/ are intact)")
    record = read_json(folder.run_record_path, fix)
    if not isinstance(record.get("config"), dict):
        raise UnreadableFile(folder.run_record_path, "holds no 'config' object", fix)
    return record


# -- a trial's records -----------------------------------------------------------------------

def completion(folder: RunFolder, trial: str) -> dict[str, Any] | None:
    """The trial's completion record (step, attempt, events, fingerprint), if done."""
    path = folder.complete_path(trial)
    if not path.exists():
        return None
    fix = ("it records that the trial finished: move it aside (the trial then shows as "
           "unfinished and resumes from its checkpoint; its rows are intact)")
    done = read_json(path, fix)
    events = done.get("events", {})
    if not isinstance(done.get("step"), int) or not isinstance(events, dict):
        raise UnreadableFile(path, "is not a completion record (no step and events)", fix)
    try:
        done["events"] = {int(k): v for k, v in events.items()}
    except ValueError:
        raise UnreadableFile(path, "its events are not keyed by level", fix) from None
    return done


def failure_record(folder: RunFolder, trial: str) -> dict[str, Any] | None:
    """What ``RunFolder.record_failure`` wrote, or None; an unreadable one reads as an
    unknown error."""
    path = folder.failure_path(trial)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"state": "failed", "kind": "error",
                "error": f"unknown error (its status file {path} cannot be read)"}
    return record if isinstance(record, dict) else {"error": "unknown error"}


def failure(folder: RunFolder, trial: str) -> str | None:
    """Why the trial failed for good, or None."""
    record = failure_record(folder, trial)
    return None if record is None else str(record.get("error") or "unknown error")


def trial_state(folder: RunFolder, trial: str) -> TrialState:
    """(state, last committed step, events, error) of a trial, from the folder alone."""
    done = completion(folder, trial)
    if done is not None:
        return TrialState("done", done["step"], done["events"])
    parts = parts_in(folder.metrics_dir("trial", trial))
    step = parts[-1][1] if parts else None
    error = failure(folder, trial)
    if error is not None:
        return TrialState("failed", step, {}, error)
    return TrialState("incomplete" if parts else "pending", step, {})


# -- what kind of folder ---------------------------------------------------------------------

def describe(folder: RunFolder) -> FolderInfo:
    """Read the folder's own files; RunFolderError when it is not a run folder."""
    path = folder.path
    if not path.exists():
        raise RunFolderError(f"{path}: no such folder; give a run folder, e.g. runs/smoke")
    if not path.is_dir():
        raise RunFolderError(f"{path} is a file, not a run folder")
    present = folder.markers()
    if not present and any(path.iterdir()):
        raise RunFolderError(f"{path} is not a run folder (no sweep.json, run.json or "
                             "metric parts); give a folder written by `emerge sweep` or "
                             "`emerge train`")
    notes: list[str] = []
    state: dict[str, Any] = {}
    kind = ("sweep" if RunFolder.SWEEP in present else "train" if RunFolder.RUN in present
            else "other" if present else "empty")
    if kind == "empty":
        notes.append(f"The run folder {path} is empty: nothing has run there yet.")
    if kind == "sweep":
        try:
            state = _sweep_record(folder)
        except UnreadableFile as err:
            notes.append(f"sweep.json could not be read ({err.problem}): the launched "
                         "trials are unknown and MLflow is skipped.")
    spec: dict[str, Any] = {}
    spec_text = None
    if kind != "empty" and folder.spec_path.is_file():
        try:
            spec_text = folder.spec_text()
            loaded = load_yaml(spec_text, folder.spec_path, "default settings")
            spec = loaded if isinstance(loaded, dict) else {}
        except UnreadableFile as err:
            notes.append(f"spec.yaml could not be read ({err.problem}): default "
                         "settings.")
    launched = tuple(dict.fromkeys(t for launch in state.get("launches", [])
                                   for t in launch.get("trials", [])))
    return FolderInfo(
        path=path, kind=kind, name=str(spec.get("name") or path.name), launched=launched,
        recorded_dir=Path(state["run_dir"]) if state.get("run_dir") else None,
        recorded_uri=state.get("tracking_uri"), spec=spec, spec_text=spec_text,
        notes=tuple(notes))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def probe_actors(folder: RunFolder) -> list[dict[str, Any]]:
    """The probe actors at work, from ``probes/workers/<pid>.json``, longest at work first:
    each {"pid", "host", "trial", "step", "measure", "since"} (``since``: when the job
    started, seconds since the epoch). An actor of this host whose process has gone (an
    earlier session's) is left out; an unreadable file (being replaced) is skipped."""
    root = folder.probe_worker_path(0).parent
    here = socket.gethostname()
    out = []
    for f in sorted(root.glob("*.json")) if root.is_dir() else []:
        try:
            w = json.loads(f.read_text())
            trial, step, measure = w["job"] or (None, None, None)
            pid, host, since = int(w["pid"]), str(w["host"]), float(w["started"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if trial is None or (host == here and not _alive(pid)):
            continue
        out.append({"pid": pid, "host": host, "trial": trial, "step": int(step),
                    "measure": measure, "since": since})
    return sorted(out, key=lambda a: a["since"])
