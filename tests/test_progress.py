"""The sweep's progress line: what it counts is what the run folder holds."""

from __future__ import annotations

import io

from rich.console import Console

from orchestrator.common.progress import SweepBoard


def test_a_resumed_sweeps_finished_trials_count_as_done() -> None:
    """On `emerge resume` the driver marks the trials with a COMPLETE.json done and then
    reports their events; the report used to set them running again, so the line read
    "0 done, 6 running" where `emerge status` showed 4 done (stop 37, the two-scale sweep)."""
    board = SweepBoard({"COPY-s0-0": 300, "REV-s0-1": 300}, Console(file=io.StringIO()),
                       live=False)
    board.finished("COPY-s0-0", True)
    board.result("COPY-s0-0", 300, {1: 39, 2: 57})  # the driver's first pass on resume
    board.started("REV-s0-1")
    board.result("REV-s0-1", 111, {})
    assert board.counts()["done"] == 1 and board.counts()["running"] == 1
    assert board.counts_line().startswith("trials: 1 done, 1 running, 0 pending, 0 failed | "
                                          "emergence events: 2")
