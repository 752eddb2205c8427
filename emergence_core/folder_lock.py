"""One driver at a time in a run folder: ``emerge sweep``, ``resume`` and ``pythia`` hold its
``driver.lock`` (``RunFolder.lock_path``) while they run its work.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from emergence_core.run_folder import RunFolder, RunFolderError

__all__ = ["driver_lock"]


@contextmanager
def driver_lock(folder: RunFolder, command: str) -> Iterator[None]:
    """Hold the folder for one driver (``emerge sweep``, ``resume``, ``pythia``).

    An advisory ``flock`` on ``driver.lock``: the kernel releases it when its process
    ends, however it ends, so the lock of a killed driver is stale by construction and
    the next driver takes it. The file names the holder for the refusal's message; it is
    removed when the block ends (a refusal included), with the folders made for it if
    they stayed empty.
    """
    path, lock_path = folder.path, folder.lock_path
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"run folder {path} is a file; set run_dir to a folder")
    made = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    while True:
        f = open(lock_path, "a+")  # noqa: SIM115 - held for the block, closed below
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            try:
                held = json.loads(f.read() or "{}")
            except ValueError:
                held = {}
            f.close()
            since = time.strftime("%H:%M:%S", time.localtime(held.get("since", 0)))
            raise RunFolderError(
                f"{path} is in use by another driver (`{held.get('command', 'emerge')}`"
                f", pid {held.get('pid', '?')} on {held.get('host', '?')}, since {since}); "
                "wait for it to end, or stop it with Ctrl-C, then run this again") from None
        try:  # the file a driver that just ended removed is not the lock any more
            same = os.stat(lock_path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()
    try:
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"command": command, "pid": os.getpid(),
                            "host": socket.gethostname(), "since": time.time()}))
        f.flush()
        yield
    finally:
        # Removed while still held, so nothing is left behind; a driver killed before
        # this leaves a stale file that the kernel has already unlocked.
        lock_path.unlink(missing_ok=True)
        f.close()  # releases the lock
        for d in made:  # folders this driver made and left empty (a refused sweep)
            try:
                d.rmdir()
            except OSError:
                break
