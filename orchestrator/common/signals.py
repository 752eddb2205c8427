"""SIGTERM and SIGHUP stop a driver as Ctrl-C does.

A scheduler (Slurm, Kubernetes), ``kill``, a closed terminal or a spot reclaim sends SIGTERM
or SIGHUP, not SIGINT. Inside ``stop_signals()`` each is handed to whatever handles SIGINT
at that moment: Ray Tune's handler while ``Tuner.fit()`` runs (it stops the trials, which
checkpoint, and saves the experiment), else Python's, which raises KeyboardInterrupt where
the driver already stops cleanly. ``Stop.signum`` remembers the signal, so that the driver
exits with 128 + its number (143 for SIGTERM, 129 for SIGHUP, 130 for Ctrl-C), as a shell
reports a process that the signal ended. A second signal, as a second Ctrl-C, aborts.

Ray's ``ray.init`` installs its own SIGTERM handler (``sys.exit``, which aborts the driver
mid-``fit()``), so the block must start after Ray is joined.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

__all__ = ["STOP_SIGNALS", "Stop", "exit_code", "stop_signals"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@dataclass
class Stop:
    """The signal that stopped the block, if any (SIGINT counts once the driver saw it)."""

    signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "Ctrl-C"


def exit_code(stop: Stop, default: int = 130) -> int:
    """128 + the signal's number; ``default`` (Ctrl-C's 130) when none was recorded."""
    return 128 + stop.signum if stop.signum else default


@contextmanager
def stop_signals() -> Iterator[Stop]:
    """Within the block, SIGTERM and SIGHUP act as Ctrl-C; the handlers before it come back
    after it. Outside the main thread (where handlers cannot be set) it does nothing."""
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def as_ctrl_c(signum: int, frame: FrameType | None) -> None:
        first = stop.signum is None
        stop.signum = signum
        handler = signal.getsignal(signal.SIGINT)
        if not first or not callable(handler):
            raise KeyboardInterrupt  # the second one aborts, as a second Ctrl-C does
        handler(signal.SIGINT, frame)

    before = {s: signal.signal(s, as_ctrl_c) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
