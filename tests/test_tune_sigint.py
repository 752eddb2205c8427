"""Ctrl-C around Tune's fit(): Tune's own handler must not outlive fit() (it would swallow
the next Ctrl-C, e.g. while the probe pool drains), and a Ctrl-C it takes must count."""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray
from ray import tune

from orchestrator.sweep import tune_run
from tests.sweep_helpers import ray_tmpdir

pytestmark = pytest.mark.slow


def _quiet(config: dict) -> None:
    time.sleep(0.1)


def _ctrl_c_the_driver(config: dict) -> None:
    os.kill(config["driver"], signal.SIGINT)
    time.sleep(5)


def _tuner(fn, tmp_path, name: str) -> tune.Tuner:
    return tune.Tuner(fn, param_space={"driver": os.getpid()},
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
