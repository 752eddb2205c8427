"""Ctrl-C around Tune's fit(): Tune's own handler must not outlive fit() (it would swallow
the next Ctrl-C, e.g. while the probe pool drains), and a Ctrl-C it takes must count; SIGTERM
and SIGHUP, inside the driver's ``stop_signals``, stop fit() just as Ctrl-C does."""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray
from ray import tune

from orchestrator.common.signals import exit_code, stop_signals
from orchestrator.sweep import tune_run
from tests.sweep_helpers import ray_tmpdir

pytestmark = pytest.mark.slow


def _quiet(config: dict) -> None:
    time.sleep(0.1)


def _ctrl_c_the_driver(config: dict) -> None:
    os.kill(config["driver"], signal.SIGINT)
    time.sleep(5)


def _signal_the_driver(config: dict) -> None:
    os.kill(config["driver"], config["signal"])
    time.sleep(5)


def _tuner(fn, tmp_path, name: str, **space) -> tune.Tuner:
    return tune.Tuner(fn, param_space={"driver": os.getpid(), **space},
                      run_config=tune.RunConfig(name=name, storage_path=str(tmp_path),
                                                verbose=0))


def test_fit_restores_the_handler_and_reports_a_ctrl_c_tune_took(tmp_path) -> None:
    ours_calls: list[int] = []

    def ours(sig, frame) -> None:
        ours_calls.append(sig)

    previous = signal.signal(signal.SIGINT, ours)
    try:
        with ray_tmpdir() as rt:
            ray.init(address="local", num_cpus=1, include_dashboard=False, _temp_dir=rt)
            try:
                _, interrupted = tune_run.fit(_tuner(_quiet, tmp_path, "quiet"))
                assert not interrupted
                assert signal.getsignal(signal.SIGINT) is ours  # not Tune's, left behind

                _, interrupted = tune_run.fit(_tuner(_ctrl_c_the_driver, tmp_path, "cc"))
                assert interrupted
                assert signal.getsignal(signal.SIGINT) is ours
                assert ours_calls == []  # Tune took that one; the next comes to us
            finally:
                ray.shutdown()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_and_sighup_stop_fit_as_ctrl_c_does(tmp_path) -> None:
    """In a real local Ray: each signal stops fit() through Tune's own Ctrl-C path (the
    trials stopped, the experiment saved), is remembered for the exit code (143, 129), and
    every handler is the one before afterwards (not Tune's, not Ray's sys.exit)."""
    with ray_tmpdir() as rt:
        ray.init(address="local", num_cpus=1, include_dashboard=False, _temp_dir=rt)
        try:
            for sig, code in ((signal.SIGTERM, 143), (signal.SIGHUP, 129)):
                before = {s: signal.getsignal(s) for s in (signal.SIGINT, sig)}
                t0 = time.monotonic()
                with stop_signals() as stop:
                    _, interrupted = tune_run.fit(_tuner(_signal_the_driver, tmp_path,
                                                         sig.name, signal=sig))
                assert interrupted and stop.signum == sig and exit_code(stop) == code
                assert time.monotonic() - t0 < 60
                assert {s: signal.getsignal(s) for s in (signal.SIGINT, sig)} == before
                assert tune.Tuner.can_restore(str(tmp_path / sig.name))  # state saved
        finally:
            ray.shutdown()


def test_outside_fit_a_sigterm_is_a_keyboard_interrupt_where_the_driver_stops() -> None:
    with pytest.raises(KeyboardInterrupt), stop_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs at once; never reached
    assert stop.signum == signal.SIGTERM and exit_code(stop) == 143
