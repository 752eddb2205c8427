"""A trial's calibration records: each expensive measure's pilot grid and the choice it fixed
(``RunFolder.calibration_path`` says where).

A damaged record is set aside and counts as none: the pilot runs again, deterministically the
same, so damage costs a pilot and never a wrong choice.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from emergence_core.atomic import atomic_path
from emergence_core.errors import first_line, warn_once
from emergence_core.readers import UnreadableFile, read_json
from emergence_core.run_folder import RunFolder

__all__ = ["PilotRuns", "calibrations", "pilot_runs", "read_calibration", "write_calibration"]


class PilotRuns:
    """The finished runs (and measured curvatures) of a trial's pilot in progress, one file
    each beside its record
    (``<measure>.runs/<step>/``), so that a pilot stopped midway (a stopped sweep, a lost
    actor) resumes at its first unfinished run. Its runs are seeded by their settings, so a
    run read back is the run it would compute again; the key (its settings and L(w*)) is kept
    in the file and checked, and an unreadable file is run again. Cleared once the pilot's
    record is written."""

    def __init__(self, folder: RunFolder, trial: str, measure: str, step: int) -> None:
        self.dir: Path = folder.calibration_path(trial, measure).with_name(
            f"{measure}.runs") / f"{step:012d}"

    def _path(self, key: str) -> Path:
        return self.dir / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            held = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None
        return held.get("value") if isinstance(held, dict) and held.get("key") == key \
            else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        with atomic_path(self._path(key)) as tmp:
            tmp.write_text(json.dumps({"key": key, "value": value}))

    def __len__(self) -> int:
        return len(list(self.dir.glob("*.json"))) if self.dir.is_dir() else 0

    def clear(self) -> None:
        shutil.rmtree(self.dir.parent, ignore_errors=True)


def pilot_runs(folder: RunFolder, trial: str, measure: str) -> int | None:
    """How many runs the pilot of a trial's calibrated measure has finished (``PilotRuns``)
    while its record is not yet written; None once it is."""
    if folder.calibration_path(trial, measure).exists():
        return None
    runs = folder.calibration_path(trial, measure).with_name(f"{measure}.runs")
    return sum(1 for _ in runs.glob("*/*.json")) if runs.is_dir() else 0


def read_calibration(folder: RunFolder, trial: str, measure: str) -> dict[str, Any] | None:
    """The saved calibration, or None. A damaged record is set aside (``.damaged``) with
    a warning and counts as none: the pilot runs again, deterministically the same."""
    path = folder.calibration_path(trial, measure)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if isinstance(record, dict):
            return record
        problem = "not a calibration record"
    except (OSError, ValueError) as err:
        problem = first_line(err, limit=300)
    aside = path.with_name(f"{path.name}.damaged")
    path.replace(aside)
    warn_once(path, f"calibration {path} cannot be read ({problem}); kept as {aside.name}, "
                     "the pilot runs again")
    return None


def write_calibration(folder: RunFolder, trial: str, measure: str,
                      record: dict[str, Any]) -> None:
    path = folder.calibration_path(trial, measure)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1))


def calibrations(folder: RunFolder) -> list[dict[str, Any]]:
    """Every calibration record of the run, each with its ``trial``."""
    root = folder.calibration_dir
    if not root.is_dir():
        return []
    out = []
    files = [f for d in sorted(root.iterdir()) if d.is_dir() for f in sorted(d.glob("*.json"))]
    for f in files:
        try:
            out.append({"trial": f.parent.name, **read_json(f, "it is set aside and the "
                                                        "pilot runs again at the next probe")})
        except UnreadableFile as err:
            warn_once(f, f"skipping calibration {err}")
    return out
