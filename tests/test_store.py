"""Run-folder files: atomic parts, pruning, healing after an interrupted compaction."""

from __future__ import annotations

from pathlib import Path

from emergence_core.atomic import atomic_path
from emergence_core.metrics import RowBuffer, TrialKey
from emergence_core.store import TrialStore, metric_files, read_metrics

KEY = TrialKey("sw", "T-s0-0", "MOD", "s0", 0)


def _rows(steps: range) -> RowBuffer:
    rows = RowBuffer(KEY)
    for s in steps:
        rows.add(s, "accuracy", s / 100, level=1)
    return rows


def test_parts_prune_heal_and_compact(tmp_path: Path) -> None:
    store = TrialStore(tmp_path, KEY.trial)
    for chunk in (range(0, 5), range(5, 10), range(10, 15)):
        store.write_part(_rows(chunk).take())
    assert [(a, b) for a, b, _ in store.parts()] == [(0, 4), (5, 9), (10, 14)]
    assert store.prune_after(7) and [(a, b) for a, b, _ in store.parts()] == [(0, 4), (5, 9)]
    # a compaction that died after writing the merged part, before deleting the old ones
    store.write_part(store.read())
    assert len(store.parts()) == 3
    assert read_metrics(tmp_path).num_rows == 10  # readers skip the superseded parts
    assert len(metric_files(tmp_path)) == 1
    store.heal()
    assert [(a, b) for a, b, _ in store.parts()] == [(0, 9)]
    store.write_part(_rows(range(10, 12)).take())
    store.compact()
    assert [(a, b) for a, b, _ in store.parts()] == [(0, 11)]
    assert read_metrics(tmp_path)["step"].to_pylist() == list(range(12))


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "x" / "f.txt"
    try:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError("disk full")
    except OSError:
        pass
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_row_buffer_take_splits_at_a_step() -> None:
    rows = _rows(range(10))
    first = rows.take(4)
    assert first["step"].to_pylist() == [0, 1, 2, 3, 4] and len(rows) == 5
    assert rows.take()["step"].to_pylist() == [5, 6, 7, 8, 9] and len(rows) == 0
