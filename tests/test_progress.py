"""The sweep's progress line and `emerge status`: what they say is what the run folder holds."""

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


def test_status_names_what_each_live_probe_actor_does_and_its_pilots_progress(tmp_path) -> None:
    """A pool that sits on an LLC pilot for an hour must not look hung: `emerge status` lists
    the live actors' jobs with how long they have run and how many runs the pilot finished;
    an earlier session's actors (their process gone) and idle ones are left out."""
    import json
    import os
    import socket
    import subprocess
    import time

    from emergence_core.calibrations import PilotRuns, pilot_runs, write_calibration
    from emergence_core.folder_records import probe_actors
    from emergence_core.run_folder import RunFolder
    from orchestrator.sweep.views import _actor_line

    folder = RunFolder(tmp_path)
    gone = subprocess.Popen(["true"])
    gone.wait()
    here, now = socket.gethostname(), time.time()
    for pid, host, job, since in ((os.getpid(), here, ["CMP-s0-0", 0, "llc"], now - 2520),
                                  (gone.pid, here, ["COPY-s0-0", 0, "llc"], now - 9000),
                                  (os.getppid(), here, None, now - 60),
                                  (12345, "node-b", ["MOD-s1-0", 30, "hessian"], now - 60)):
        path = folder.probe_worker_path(pid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"pid": pid, "host": host, "job": job, "started": since}))
    (path.parent / "7.json").write_text("{")  # being replaced: skipped
    actors = probe_actors(folder)
    assert [(a["trial"], a["host"]) for a in actors] == [("CMP-s0-0", here),
                                                         ("MOD-s1-0", "node-b")]
    assert pilot_runs(folder, "CMP-s0-0", "llc") == 0  # started, no run finished yet
    runs = PilotRuns(folder, "CMP-s0-0", "llc", 1200)
    runs.put("a", {}), runs.put("b", {})
    assert pilot_runs(folder, "CMP-s0-0", "llc") == 2
    line = _actor_line({**actors[0], "pilot_runs": 2}, now)
    assert line == "CMP-s0-0 llc@0 for 42 min (pilot: 2 runs finished)"
    assert _actor_line({**actors[1], "pilot_runs": None}, now) == "MOD-s1-0 hessian@30 for 1 min"
    write_calibration(folder, "CMP-s0-0", "llc", {"chosen": None})
    assert pilot_runs(folder, "CMP-s0-0", "llc") is None  # the record is written: no pilot
