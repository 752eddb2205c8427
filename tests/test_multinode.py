"""Beyond one machine: sweeps on a cluster of several real Ray nodes on 127.0.0.1.

Trials and probe actors are placed with custom resources; nodes are killed mid-sweep; a node
that cannot see the run folder (its own mount namespace) is refused; MLflow's server goes
down and comes back. Every test checks the exactly-once and completeness guarantees.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from emergence_core.store import read_metrics
from orchestrator.sweep.spec import load_spec
from tests.cluster_helpers import can_unshare, hidden_node, local_cluster, node_of, wait_nodes
from tests.sweep_helpers import (
    assert_mlflow_equals_parquet,
    comparable,
    keys_unique,
    mlflow_server,
    run_sweep,
    start_reference,
    start_sweep,
    stop,
    wait_for,
    wait_reference,
    write_spec,
)
from tests.test_probe_pool_e2e import MEASURE_ROWS, _check_exactly_once

pytestmark = pytest.mark.slow

TRAIN = {"steps": 200, "diag_size": 100, "probe": {"n_probes": 40, "rankme_samples": 50},
         "checkpoint": {"every_probes": 3}}
ON_TRAINERS = {"s0": {"resources": {"cpus": 1, "custom": {"trainer": 1}}}}


def _worker(run_dir: Path, trial: str) -> dict:
    return json.loads((run_dir / "status" / f"{trial}.worker.json").read_text())


def _parts(run_dir: Path, trial: str) -> int:
    return len(list((run_dir / "metrics" / "trial" / trial).glob("part-*")))


def _one_run_per_trial_with_every_row(run_dir: Path, spec_path: Path, uri: str) -> None:
    spec = load_spec(spec_path)
    assert_mlflow_equals_parquet(uri, run_dir, spec.name, [p.name for p in spec.trials()])


def _probe_rows_exactly_once(run_dir: Path, spec_path: Path) -> None:
    """The run folder's half of the probe pool's exactly-once check (its MLflow half reads
    a local store; a sweep against a server is checked by ``assert_mlflow_equals_parquet``)."""
    import pyarrow.compute as pc

    from orchestrator.probe_pool.queue import ProbeQueue

    due = {j for p in load_spec(spec_path).trials() for j in p.plan.jobs}
    assert due and ProbeQueue(run_dir).done_jobs() == due
    table = read_metrics(run_dir)
    probe = table.filter(pc.equal(table["source"], "probe"))
    got = set(zip(probe["trial"].to_pylist(), probe["step"].to_pylist(),
                  probe["measure"].to_pylist(), strict=True))
    assert got == {(j.trial, j.step, m) for j in due for m in MEASURE_ROWS[j.measure]}


def pa_equal(table, column: str, value: str):
    import pyarrow.compute as pc

    return pc.equal(table[column], value)


def test_losing_the_node_of_a_trial_moves_it_and_loses_nothing(tmp_path: Path) -> None:
    nodes = [{"num_cpus": 1, "resources": {"trainer": 1}} for _ in range(3)]
    run_dir = tmp_path / "run"
    spec_path = write_spec(tmp_path / "s.yaml", name="loss", run_dir=str(run_dir),
                           tasks=["MOD"], scales=["s0"], seeds=[0], retries=3,
                           train={**TRAIN, "steps": 300}, per_scale=ON_TRAINERS)
    log = tmp_path / "log"
    # the same trial uninterrupted, on the core the sweep's one trial leaves free
    reference = start_reference(spec_path, tmp_path / "reference", tmp_path / "reference.log")
    with local_cluster(nodes) as cluster:
        proc = start_sweep(["sweep", str(spec_path)], cluster.tmpdir, log, cluster.address)
        try:
            wait_for(lambda: _parts(run_dir, "MOD-s0-0") >= 2, 300, "two commits", proc, log)
            # the Ray dashboard's state API shows the trial's actor under the trial's name
            from ray.util.state import list_actors

            actors = list_actors(address=f"http://{cluster.webui_url}", detail=True,
                                 filters=[("state", "=", "ALIVE")])
            assert "MOD-s0-0" in {a.repr_name for a in actors}
            lost = _worker(run_dir, "MOD-s0-0")["node_id"]
            cluster.remove_node(node_of(cluster, lost), allow_graceful=False)
            assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
        finally:
            stop(proc)
    assert _worker(run_dir, "MOD-s0-0")["node_id"] != lost
    table = read_metrics(run_dir)
    assert keys_unique(table) and max(table["attempt"].to_pylist()) >= 1
    _one_run_per_trial_with_every_row(run_dir, spec_path, f"sqlite:///{run_dir / 'mlflow.db'}")
    assert comparable(table) == wait_reference(reference, tmp_path / "reference",
                                               tmp_path / "reference.log")


def test_losing_the_node_of_a_probe_actor_moves_its_job(tmp_path: Path) -> None:
    nodes = [{"num_cpus": 1, "resources": {"trainer": 1}},
             {"num_cpus": 1, "resources": {"probe": 1}},
             {"num_cpus": 1, "resources": {"probe": 1}}]
    run_dir = tmp_path / "run"
    spec_path = write_spec(
        tmp_path / "s.yaml", name="ploss", run_dir=str(run_dir), tasks=["MOD"],
        scales=["s0"], seeds=[0], train=TRAIN, per_scale=ON_TRAINERS,
        probes={"measures": {"llc": {"every": 10, "batch_size": 256, "settings": {
            "n_chains": 2, "n_draws": 300, "n_burnin": 100}}},
            "resources": {"cpus": 0, "custom": {"probe": 1}}})
    workers = run_dir / "probes" / "workers"
    log = tmp_path / "log"

    def busy() -> str | None:
        for f in workers.glob("*.json") if workers.is_dir() else []:
            info = json.loads(f.read_text())
            if info.get("job") and time.time() - info["started"] > 1.0:
                return info["node_id"]
        return None

    with local_cluster(nodes) as cluster:
        proc = start_sweep(["sweep", str(spec_path)], cluster.tmpdir, log, cluster.address)
        try:
            wait_for(lambda: busy() is not None, 600, "a probe job in flight", proc, log)
            lost = busy()
            cluster.remove_node(node_of(cluster, lost), allow_graceful=False)
            assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
        finally:
            stop(proc)
    later = {json.loads(f.read_text())["node_id"] for f in workers.glob("*.json")}
    assert later - {lost}, "no actor on a surviving node took the work over"
    _check_exactly_once(run_dir, spec_path)


def test_preflight_refuses_what_the_cluster_cannot_run(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    spec_path = write_spec(tmp_path / "s.yaml", name="pre", run_dir=str(shared / "run"),
                           tasks=["MOD"], scales=["s0"], seeds=[0], train=TRAIN)
    gpu_spec = write_spec(tmp_path / "g.yaml", name="gpu", run_dir=str(tmp_path / "grun"),
                          tasks=["MOD"], scales=["s0"], seeds=[0], train=TRAIN,
                          per_scale={"s0": {"resources": {"cpus": 1, "gpus": 1}}})
    with local_cluster([{"num_cpus": 1}]) as cluster:
        # a GPU scale on a cluster without GPUs: refused, unless the user expects an autoscaler
        rc = run_sweep(["sweep", str(gpu_spec)], cluster.tmpdir, tmp_path / "g.log",
                       address=cluster.address)
        text = (tmp_path / "g.log").read_text()
        assert rc == 2 and "needs 1 GPU(s)" in text and "--allow-pending" in text, text
        proc = start_sweep(["sweep", str(gpu_spec), "--allow-pending"], cluster.tmpdir,
                           tmp_path / "p.log", cluster.address)
        try:
            wait_for(lambda: (tmp_path / "grun" / "sweep.json").exists(), 120, "the launch",
                     proc, tmp_path / "p.log")
            time.sleep(5)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=120) == 130
        finally:
            stop(proc)
        if not can_unshare():
            pytest.skip("mount namespaces are not available here (unshare refused)")
        # a node that does not see the run folder: refused before anything starts
        with hidden_node(cluster.address, shared, {"hidden": 1}, cluster.tmpdir):
            wait_nodes(cluster.address, 3)
            rc = run_sweep(["sweep", str(spec_path)], cluster.tmpdir, tmp_path / "h.log",
                           address=cluster.address)
    text = (tmp_path / "h.log").read_text()
    assert rc == 2, text
    assert "is not visible from node" in text and "shared storage" in text, text
    assert not (shared / "run" / "sweep.json").exists()


def test_trials_and_probes_on_different_nodes_with_mlflow_down_then_sync_fills_it_in(
        tmp_path: Path) -> None:
    """One sweep for two claims: trials and probe actors on different nodes share one run
    folder; and MLflow's server goes down mid-sweep, stays down to the end, and
    `emerge sync-mlflow` fills it in afterwards."""
    nodes = [{"num_cpus": 1, "resources": {"trainer": 1, "node_a": 1}},
             {"num_cpus": 1, "resources": {"trainer": 1, "node_b": 1}},
             {"num_cpus": 1, "resources": {"probe": 1, "node_c": 1}}]
    run_dir = tmp_path / "run"
    spec_path = write_spec(
        tmp_path / "s.yaml", name="outage", run_dir=str(run_dir), tasks=["MOD", "COPY"],
        scales=["s0"], seeds=[0], max_concurrent_trials=2, train={**TRAIN, "steps": 300},
        per_scale=ON_TRAINERS,
        probes={"measures": {"fisher": {"every": 10}, "hessian": {
            "every": 20, "batch_size": 32, "settings": {"trace_probes": 4}}},
            "resources": {"cpus": 0, "custom": {"probe": 1}}})
    log = tmp_path / "log"
    server_root = tmp_path / "mlflow"
    with local_cluster(nodes) as cluster:
        node_c = next(i for i, spec in cluster.specs.items() if "node_c" in spec["resources"])
        with mlflow_server(server_root) as uri:
            proc = start_sweep(["sweep", str(spec_path), "--tracking-uri", uri],
                               cluster.tmpdir, log, cluster.address)
            wait_for(lambda: _parts(run_dir, "MOD-s0-0") >= 1, 300, "first commits", proc, log)
        # the server is down now, and stays down through the end of the sweep: the sweep
        # goes on, Parquet keeps every row, and the driver says MLflow missed the end
        try:
            assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
        finally:
            stop(proc)
        text = log.read_text()
        assert "MLflow unavailable" in text and "MLflow missed the end of the sweep" in text
        port = uri.rsplit(":", 1)[1]
        with mlflow_server(server_root, port=int(port)) as uri2:  # up only afterwards
            assert uri2 == uri
            rc = run_sweep(["sync-mlflow", str(run_dir)], cluster.tmpdir,
                           tmp_path / "sync.log", address=None)
            assert rc == 0, (tmp_path / "sync.log").read_text()
            _one_run_per_trial_with_every_row(run_dir, spec_path, uri)
            parent = [r for r in MlflowClient(uri).search_runs(
                [MlflowClient(uri).get_experiment_by_name("outage").experiment_id])
                if "mlflow.parentRunId" not in r.data.tags]
            assert len(parent) == 1 and parent[0].info.status == "FINISHED"
            assert parent[0].info.end_time
    assert keys_unique(read_metrics(run_dir))
    placed = {_worker(run_dir, t)["node_id"] for t in ("MOD-s0-0", "COPY-s0-0")}
    assert len(placed) == 2 and node_c not in placed  # one trial on each trainer node
    probe_nodes = {json.loads(f.read_text())["node_id"]
                   for f in (run_dir / "probes" / "workers").glob("*.json")}
    assert probe_nodes == {node_c}
    # every due probe job done once, on the probe node, and nothing else; MLflow's side of
    # it (each probe metric at exactly its steps) is the server check above
    _probe_rows_exactly_once(run_dir, spec_path)
