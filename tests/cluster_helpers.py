"""A Ray cluster of several nodes on this machine, started and stopped by a test.

The nodes use the machine's own address: Ray rewrites a 127.0.0.1 bootstrap address to that
address when a driver connects, so a cluster bound to loopback only would be unreachable.
Each node is a real raylet with its own worker processes (``ray.cluster_utils.Cluster``); the
nodes get distinct custom resources so a test can place trials and probe actors. A node can
also be started in a private mount namespace (``unshare``) where a folder is hidden behind an
empty tmpfs: a node that cannot see the head's run folder, as on a real cluster without
shared storage.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@contextmanager
def local_cluster(nodes: list[dict[str, Any]], head_cpus: int = 0) -> Iterator[Any]:
    """A head (``head_cpus`` CPUs: by default it runs no trial) plus one node per entry of
    ``nodes`` (``{"num_cpus": 1, "resources": {...}}``). Sets RAY_TMPDIR for this process."""
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp  # keeps /tmp/ray/ray_current_cluster of others untouched
    # a dashboard port of its own: with tests in parallel (pytest -n) two clusters asking for
    # the default 8265 leave the second without a dashboard, and its state API unreachable
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": head_cpus, "resources": {"head": 1}, "dashboard_port": _free_port()})
    try:
        cluster.specs = {}  # node id -> the arguments it was started with
        for spec in nodes:
            node = cluster.add_node(**spec)
            cluster.specs[node.node_id] = spec
        cluster.wait_for_nodes()
        cluster.tmpdir = tmp
        yield cluster
    finally:
        cluster.shutdown()
        if old is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old
        shutil.rmtree(tmp, ignore_errors=True)


def node_of(cluster: Any, node_id: str) -> Any:
    """The cluster's worker Node object with ``node_id`` (hex)."""
    for node in cluster.worker_nodes:
        if node.node_id == node_id:
            return node
    raise AssertionError(f"no worker node {node_id}")


def can_unshare() -> bool:
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                           capture_output=True)
    return probe.returncode == 0


@contextmanager
def hidden_node(address: str, hide: Path, resources: dict[str, float],
                ray_tmp: str) -> Iterator[subprocess.Popen]:
    """A node in its own mount namespace, where ``hide`` is an empty tmpfs."""
    ray = str(Path(sys.executable).with_name("ray"))
    cmd = (f"mount -t tmpfs tmpfs {hide} && exec {ray} start --address={address} "
           f"--num-cpus=1 --resources='{json.dumps(resources)}' --block --disable-usage-stats")
    env = dict(os.environ, RAY_TMPDIR=ray_tmp)
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", cmd],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_nodes(address: str, count: int, timeout: float = 60) -> None:
    """Until ``count`` nodes are alive (checked from a separate process)."""
    code = ("import ray,sys; ray.init(address=sys.argv[1], log_to_driver=False); "
            "print(sum(n['Alive'] for n in ray.nodes()))")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = subprocess.run([sys.executable, "-c", code, address], capture_output=True,
                             text=True)
        if out.returncode == 0 and out.stdout.strip() and int(out.stdout.split()[-1]) >= count:
            return
        time.sleep(1)
    raise AssertionError(f"{count} nodes did not come up")
