"""One driver per run folder: a second one is refused in one line; a killed one's lock is
stale and the next driver takes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from typer.testing import CliRunner

from emergence_core.folder_lock import driver_lock
from emergence_core.run_folder import RunFolder
from orchestrator.cli.app import app
from tests.sweep_helpers import ROOT, assert_usage_errors, write_spec

HOLD = ("import sys, time\n"
        "from emergence_core.folder_lock import driver_lock\n"
        "from emergence_core.run_folder import RunFolder\n"
        "with driver_lock(RunFolder(sys.argv[1]), 'emerge sweep held.yaml'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n")


def test_a_second_driver_is_refused_and_a_killed_drivers_lock_is_stale(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    spec = write_spec(tmp_path / "s.yaml", name="s", run_dir=str(run_dir), tasks=["MOD"],
                      scales=["s0"], train={"steps": 10})
    RunFolder(run_dir).record_launch(yaml.safe_dump(yaml.safe_load(spec.read_text())),
                                     "sqlite:///x.db", [{"name": "launch-0",
                                                         "trials": ["MOD-s0-0"]}])
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (["resume", str(run_dir)], ["sweep", str(spec)]):
            result = CliRunner().invoke(app, args)
            assert_usage_errors(result, [f"is in use by another driver (`emerge sweep held.yaml`, "
                                         f"pid {holder.pid}"])
        assert not (run_dir / "tune").exists()  # nothing started
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # the killed driver's lock file is still there, and stale: the next driver takes it
    assert RunFolder(run_dir).lock_path.exists()
    t0 = time.monotonic()
    with driver_lock(RunFolder(run_dir), "emerge resume"):
        pass
    assert time.monotonic() - t0 < 1


def test_a_new_folder_holding_only_a_lock_is_still_new(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "new" / "run")
    with driver_lock(folder, "emerge sweep x.yaml"):
        assert folder.is_empty() and not folder.is_sweep()
    # nothing left behind: the lock file, and the folders made for it that stayed empty
    assert list(tmp_path.iterdir()) == []
    folder.path.mkdir(parents=True)
    (folder.path / "stray.txt").write_text("x")
    assert not folder.is_empty()
    with driver_lock(folder, "emerge sweep x.yaml"):
        pass
    assert sorted(p.name for p in folder.path.iterdir()) == ["stray.txt"]  # only its lock went
