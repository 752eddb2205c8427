"""A trial's data files in a run folder: metric parts, training state, weights, events.

Where each file lies is ``emergence_core.run_folder``'s to say; this module reads and writes
them. Every file appears atomically (written under a hidden temporary name, then renamed), so a
reader never sees half a file, and readers skip names starting with '.'.

Exactly-once rows: a trial's rows reach disk only in a *commit*: the part holding the rows up
to step s is written, then the state at step s. A run resumed from the state at step c first
deletes every part that starts after c (rows of a lost attempt that the resumed run will
produce again), so no row is written twice and none is lost. Compaction writes one part that
covers several, then deletes them; a crash between the two leaves parts contained in a larger
one, which ``heal`` (and every reader here) drops.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from emergence_core.atomic import atomic_path
from emergence_core.errors import first_line
from emergence_core.metrics import ALERTS_SCHEMA, METRICS_SCHEMA
from emergence_core.readers import UnreadableFile, read_parquet
from emergence_core.run_folder import RunFolder, RunFolderError, parse_part, part_name, parts_in

if TYPE_CHECKING:
    from torch import nn

__all__ = ["TrialStore", "metric_files", "read_alerts", "read_metrics"]


def _superseded(parts: list[tuple[int, int, Path]]) -> set[Path]:
    """Parts whose step range lies inside another part's (left behind by a compaction)."""
    dead = set()
    for f, last, p in parts:
        for f2, last2, p2 in parts:
            if p2 != p and f2 <= f and last <= last2 and (f2, last2) != (f, last):
                dead.add(p)
    return dead


class TrialStore:
    """The files of one trial in a run folder."""

    def __init__(self, run_dir: str | Path | RunFolder, trial: str, source: str = "trial"
                 ) -> None:
        self.folder = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
        self.run_dir = self.folder.path
        self.trial = trial
        self.metrics_dir = self.folder.metrics_dir(source, trial)
        self.checkpoint_dir = self.folder.checkpoint_dir(trial)
        self.state_path = self.folder.state_path(trial)
        self.weights_dir = self.folder.weights_dir(trial)
        self.events_path = self.folder.events_path(trial)
        self.notes: list[str] = []  # what a reader recovered from, for the caller to show

    # -- metric parts --------------------------------------------------------------------------

    def parts(self) -> list[tuple[int, int, Path]]:
        return parts_in(self.metrics_dir)

    def write_part(self, table: pa.Table) -> Path | None:
        if table.num_rows == 0:
            return None
        steps = table.column("step")
        first, last = pc.min(steps).as_py(), pc.max(steps).as_py()
        final = self.metrics_dir / part_name(first, last)
        with atomic_path(final) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        return final

    def prune_after(self, step: int) -> list[Path]:
        """Delete the parts that start after ``step`` (rows the resumed run will redo)."""
        removed = [p for first, _, p in self.parts() if first > step]
        for p in removed:
            p.unlink(missing_ok=True)
        return removed

    def heal(self) -> list[Path]:
        dead = sorted(_superseded(self.parts()))
        for p in dead:
            p.unlink(missing_ok=True)
        return dead

    def read(self, after: int | None = None) -> pa.Table:
        """The trial's rows (superseded parts skipped); only parts reaching past ``after``."""
        parts = self.parts()
        dead = _superseded(parts)
        files = [p for _, last, p in parts if p not in dead and (after is None or last > after)]
        if not files:
            return METRICS_SCHEMA.empty_table()
        return pa.concat_tables([_read_part(p, self.trial) for p in files])

    def compact(self) -> Path | None:
        """Merge the trial's parts into one, sorted by step."""
        self.heal()
        parts = self.parts()
        if len(parts) <= 1:
            return parts[0][2] if parts else None
        table = self.read().sort_by([("step", "ascending")])
        merged = self.write_part(table)
        for _, _, p in parts:
            if p != merged:
                p.unlink(missing_ok=True)
        return merged

    # -- training state and weights ------------------------------------------------------------

    def save_state(self, state: dict) -> None:
        """The new state, keeping the one before it (see ``load_state``)."""
        import torch  # here, not at the top: reading rows and ``emerge status`` need no torch

        previous = self.folder.previous_state_path(self.trial)
        buffer = io.BytesIO()  # serialised first: a full disk then fails as a plain write
        torch.save(state, buffer)
        had = self.state_path.exists()
        if had:
            os.replace(self.state_path, previous)
        try:
            with atomic_path(self.state_path) as tmp:
                tmp.write_bytes(buffer.getbuffer())
        except BaseException:
            if had:  # the latest good state stays the latest
                os.replace(previous, self.state_path)
            raise

    def load_state(self) -> dict | None:
        """The latest state; if it is damaged (or a crash left only the previous one), the
        previous one, with a note: the commits after it are computed again, identically."""
        import torch

        latest, previous = self.state_path, self.folder.previous_state_path(self.trial)
        problem = None
        for path in (latest, previous):
            if not path.exists():
                continue
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # truncated, zeroed, not a torch file at all
                problem = problem or f"{path} cannot be read ({first_line(err)})"
                continue
            if path == previous:
                why = problem or f"{latest} is missing"
                self.notes.append(f"training state {why}; resumed from the previous one "
                                  f"(step {state.get('step')}): the steps after it are "
                                  "trained again, giving the same rows")
            return state
        if problem is not None:
            raise RunFolderError(f"training state {problem} and no readable earlier copy "
                                 f"exists; delete {self.checkpoint_dir} and "
                                 f"{self.metrics_dir} to retrain {self.trial} from step 0")
        return None

    def weights_path(self, step: int) -> Path:
        return self.folder.weights_path(self.trial, step)

    def save_weights(self, model: nn.Module, step: int, metadata: dict[str, str]) -> Path:
        from safetensors.torch import save_model

        final = self.weights_path(step)
        with atomic_path(final) as tmp:
            save_model(model, str(tmp), metadata={**metadata, "step": str(step)})
        return final

    def load_weights(self, model: nn.Module, step: int) -> nn.Module:
        from safetensors.torch import load_model

        device = str(next(model.parameters()).device)
        path = self.weights_path(step)
        try:
            load_model(model, str(path), device=device)
        except Exception as err:  # missing, truncated, or another model's
            raise RunFolderError(f"weights file {path} cannot be read ({first_line(err)}); "
                                 f"the expensive probes of {self.trial} at step {step} need it "
                                 "(they are recorded as failed)") from None
        return model

    def weight_steps(self) -> list[int]:
        return self.folder.weight_steps(self.trial)

    # -- live alerts -----------------------------------------------------------------------------

    def write_alerts(self, table: pa.Table) -> Path | None:
        """The alerts raised at one probe step, as their own part (they show at once)."""
        if table.num_rows == 0:
            return None
        step = pc.max(table["step"]).as_py()
        final = self.folder.trial_alerts_dir(self.trial) / part_name(step, step)
        with atomic_path(final) as tmp:
            pq.write_table(table, tmp)
        return final

    def prune_alerts_after(self, step: int) -> None:
        """A resumed run raises the alerts after ``step`` again: drop the old ones."""
        for first, _, p in parts_in(self.folder.trial_alerts_dir(self.trial)):
            if first > step:
                p.unlink(missing_ok=True)

    # -- events ----------------------------------------------------------------------------------

    def write_events(self, table: pa.Table) -> Path:
        with atomic_path(self.events_path) as tmp:
            pq.write_table(table, tmp)
        return self.events_path


def _read_part(path: Path, trial: str) -> pa.Table:
    try:
        return pq.read_table(path, schema=METRICS_SCHEMA)
    except Exception as err:  # truncated or zeroed: its rows cannot be recovered from it
        raise RunFolderError(
            f"metric part {path} cannot be read ({first_line(err)}); its rows are lost and "
            f"emerge will not write them again over kept rows: delete the trial's checkpoints "
            f"and metrics to retrain {trial} from step 0") from None


def metric_files(run_dir: str | Path) -> list[Path]:
    """Every live metric part of a run folder (superseded parts excluded)."""
    root = RunFolder(run_dir).metrics_root
    if not root.is_dir():
        return []
    files: list[Path] = []
    for directory in sorted({p.parent for p in root.rglob("*.parquet")
                             if parse_part(p.name) is not None}):
        parts = parts_in(directory)
        dead = _superseded(parts)
        files += [p for _, _, p in parts if p not in dead]
    return files


def read_alerts(run_dir: str | Path, trial: str | None = None, *,
                damaged: list[str] | None = None) -> pa.Table:
    """The live alerts of a run folder, or of one trial (``metrics.ALERTS_SCHEMA``). A damaged
    part raises ``UnreadableFile`` naming it, or with ``damaged`` is left out and named there
    (its path in the run folder and what is wrong)."""
    folder = RunFolder(run_dir)
    root = folder.alerts_dir if trial is None else folder.trial_alerts_dir(trial)
    pattern = "*/part-*.parquet" if trial is None else "part-*.parquet"
    files = sorted(root.glob(pattern)) if root.is_dir() else []
    tables = []
    for p in files:
        try:
            tables.append(read_parquet(p, _ALERTS_FIX, schema=ALERTS_SCHEMA))
        except UnreadableFile as err:
            if damaged is None:
                raise
            damaged.append(f"{p.relative_to(folder.path)} ({err.problem})")
    return pa.concat_tables(tables) if tables else ALERTS_SCHEMA.empty_table()


_ALERTS_FIX = ("delete it to go on without the alerts it held (they are a view of the "
               "metric rows, which are kept apart and intact)")


def read_metrics(run_dir: str | Path) -> pa.Table:
    """The whole metrics table of a run folder (for small runs; scan large ones lazily)."""
    files = metric_files(run_dir)
    if not files:
        return METRICS_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(p, schema=METRICS_SCHEMA) for p in files])
