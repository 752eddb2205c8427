"""Running real sweeps in tests: the CLI in a subprocess, a real local Ray, a real MLflow."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

ROOT = Path(__file__).resolve().parents[1]
EMERGE = [sys.executable, "-m", "orchestrator.cli"]


def sweep_env(ray_tmp: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1",
               HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    return env


@contextmanager
def ray_tmpdir() -> Iterator[str]:
    """A short temp root for Ray (its socket paths must stay under 107 characters)."""
    d = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def assert_usage_errors(result: Any, expected: list[str]) -> None:
    """A refused command: exit code 2 and one ``error:`` line per problem, each naming it."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert all(ln.startswith("error: ") for ln in lines), result.output
    assert len(lines) == len(expected), result.output
    for want in expected:
        assert any(want in ln for ln in lines), (want, result.output)


def write_spec(path: Path, **fields: Any) -> Path:
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def start_sweep(args: list[str], ray_tmp: str, log: Path,
                address: str | None = "local") -> subprocess.Popen:
    """``emerge <args> --address <address>`` in its own process group (no --address: None)."""
    out = open(log, "w")  # noqa: SIM115 - closed by the caller through the process
    where = [] if address is None else ["--address", address]
    return subprocess.Popen([*EMERGE, *args, *where], cwd=ROOT,
                            env=sweep_env(ray_tmp), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def run_sweep(args: list[str], ray_tmp: str, log: Path, timeout: float = 900,
              address: str | None = "local") -> int:
    proc = start_sweep(args, ray_tmp, log, address)
    try:
        return proc.wait(timeout=timeout)
    finally:
        stop(proc)


REFERENCE = ("import sys, torch\n"
             "from emergence_core.trial.runner import run_trial\n"
             "from orchestrator.sweep.spec import load_spec\n"
             "torch.set_num_threads(1)\n"
             "for plan in load_spec(sys.argv[1]).trials():\n"
             "    run_trial(plan.config, sys.argv[2])\n")


def start_reference(spec_path: Path, out: Path, log: Path) -> subprocess.Popen:
    """Every trial of the sweep file, uninterrupted, one thread (as in the sweep), into
    ``out``: in a process of its own, so it runs beside a sweep of one trial on a free core.
    ``wait_reference`` gives its rows."""
    return subprocess.Popen([sys.executable, "-c", REFERENCE, str(spec_path), str(out)],
                            cwd=ROOT, env=sweep_env("/tmp"), stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_reference(proc: subprocess.Popen, out: Path, log: Path) -> list[tuple]:
    try:
        assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        stop(proc)
    from emergence_core.store import read_metrics

    return comparable(read_metrics(out))


def stop(proc: subprocess.Popen) -> None:
    """Stop a driver and everything it started (its Ray included)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Ray's own daemons (raylet, GCS) may outlive the driver in the same session: end them.
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            raise AssertionError(f"driver exited ({proc.returncode}) before {what}:\n{tail}")
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}:\n{tail}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(root: Path, port: int | None = None, store: str | None = None
                  ) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (its store in ``root``, or the backend store
    ``store``, e.g. a sweep's own ``sqlite:///RUN_DIR/mlflow.db``), stopped on exit."""
    port = port or free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / "server.log", "a")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", store or f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(uri), 90, "the MLflow server", proc, root / "server.log")
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def comparable(table: pa.Table) -> list[tuple]:
    """Rows without wall time and attempt, sorted: equal tables are the same series."""
    t = table.drop_columns(["wall_time", "attempt", "sweep"]).sort_by(
        [(c, "ascending") for c in ("trial", "step", "measure", "layer", "level")])
    return list(zip(*(t[c].to_pylist() for c in t.column_names), strict=True))


def keys_unique(table: pa.Table) -> bool:
    cols = ("trial", "step", "measure", "layer", "level")
    keys = list(zip(*(table[c].to_pylist() for c in cols), strict=True))
    return len(keys) == len(set(keys))


def assert_mlflow_equals_parquet(uri: str, run_dir: Path, experiment: str,
                                 trials: list[str], status: str = "FINISHED") -> None:
    """Exactly one MLflow run per trial (counted by run id, whatever its name), and every
    metric of it equal to Parquet's: the same keys, steps and values."""
    import math

    import pyarrow.compute as pc
    from mlflow.tracking import MlflowClient

    from emergence_core.store import read_metrics
    from orchestrator.tracking.sync import CONSTANT_MEASURES, metric_rows, mlflow_view

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.info.run_name for r in children) == sorted(trials), \
        "one MLflow run per trial, and no other"
    table = read_metrics(run_dir)
    for run in children:
        assert run.info.status == status and run.info.end_time, (run.info.run_name,
                                                                  run.info.status)
        rows = table.filter(pc.equal(table["trial"], run.info.run_name))
        view, params = mlflow_view(metric_rows(rows))
        want: dict[str, list[tuple[int, float]]] = {}
        for key, value, _, step in view:
            want.setdefault(key, []).append((step, value))
        # constants (chance, diagnostic set sizes) are params, not one-bar charts
        assert {k: run.data.params.get(k) for k in params} == params, run.info.run_name
        assert not any(k.split("/")[0] in CONSTANT_MEASURES for k in run.data.metrics)
        assert set(run.data.metrics) == set(want), run.info.run_name
        for key, expected in want.items():
            got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id,
                                                                               key))
            expected = sorted(expected)
            if [s for s, _ in got] != [s for s, _ in expected]:
                have, want_steps = [s for s, _ in got], [s for s, _ in expected]
                twice = sorted({s for s in have if have.count(s) > 1})
                raise AssertionError(
                    f"{run.info.run_name} {key}: MLflow has {len(have)} points, Parquet "
                    f"{len(want_steps)} rows; steps only in MLflow "
                    f"{sorted(set(have) - set(want_steps))[:20]}, only in Parquet "
                    f"{sorted(set(want_steps) - set(have))[:20]}, twice in MLflow {twice[:20]}")
            for (_, a), (_, b) in zip(got, expected, strict=True):
                assert a == b or (math.isnan(a) and math.isnan(b)), (run.info.run_name, key)
