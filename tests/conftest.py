"""Shared fixtures. Tests start what they need (Ray, MLflow) and stop it themselves."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# The suite runs on two workers (pytest-xdist, ``-n 2`` in pyproject.toml): the end-to-end
# tests wait on Ray, MLflow and subprocesses about half their time, so a second worker nearly
# halves the wall time (measured on 2 cores: 38 min serial, 18-24 min on two workers). Longest
# first, handed out one at a time (--maxschedchunk 1), so that the last test to start is a
# short one: xdist's default chunks gave one worker every slow test (24 min against 18).
LONGEST_FIRST = (
    "tests/test_sweep_e2e.py::test_smoke_sweep_end_to_end_with_sqlite",
    "tests/test_multinode.py",
    "tests/test_probe_pool_e2e.py",
    "tests/test_sweep_e2e.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        for i, prefix in enumerate(LONGEST_FIRST):
            if item.nodeid.startswith(prefix):
                return i
        return len(LONGEST_FIRST) + (0 if item.get_closest_marker("slow") else 1)

    items.sort(key=rank)  # stable: within a rank, the files' own order


@pytest.fixture(autouse=True)
def _one_thread():
    """Bit-exact comparisons need a fixed thread count; one is also fastest for tiny models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _registries_as_shipped():
    """Registries are per process: what a test registers (a plugin's task, a declared scale)
    is removed after it, so that no other test sees it."""
    from emergence_core.expensive import MEASURES
    from emergence_core.scales import SCALES
    from emergence_core.tasks import TASKS

    saved = [(r, dict(r)) for r in (MEASURES, SCALES, TASKS)]
    yield
    for registry, before in saved:
        registry.restore(before)


def tiny_overrides(**extra):
    """A run small enough for unit tests: a few seconds on one CPU thread."""
    base = {
        "steps": 24, "batch_size": 12, "train_size": 200, "diag_size": 40, "warmup_steps": 4,
        "probe": {"n_probes": 8, "rankme_samples": 16, "eval_batch_size": 64},
        "checkpoint": {"every_probes": 2, "weights_every": 2},
        "device": "cpu",
    }
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return base
