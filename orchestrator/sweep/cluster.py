"""Joining or starting Ray, and the checks to run before a sweep starts on it."""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from emergence_core.run_folder import RunFolder
from orchestrator.common.errors import RuntimeFault, UsageError
from orchestrator.probe_pool.config import Probes
from orchestrator.sweep.spec import Trial

__all__ = ["CONNECT_TIMEOUT_S", "Capacity", "capacity_in_view", "connect", "preflight"]

# How long joining a cluster at host:port waits for its GCS to accept a connection; Ray's
# own client retries for minutes without a word.
CONNECT_TIMEOUT_S = 10.0


def _unreachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why nothing answers at a ``host:port`` address (None when something does, or for
    ``auto``, ``local`` and ``ray://`` addresses, which Ray resolves itself)."""
    import socket

    if address in ("auto", "local") or "://" in address:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return "not a host:port address (e.g. 10.0.0.5:6379, auto or local)"
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)),
                                 timeout=timeout_s).close()
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def connect(address: str | None, console: Console) -> bool:
    """Join the cluster at ``address`` (or RAY_ADDRESS, or the one ``ray start`` left on this
    machine); with none running, start a local one. ``address="local"`` always starts one.
    Returns True (the caller calls ``ray.shutdown()``, which only detaches from a cluster it
    joined)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Tune warns about slow callbacks and frequent reports in the driver's console; the live
    # board is the console here, and a trial's errors reach it through the callbacks.
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    # ...and a failed trial's traceback: the board prints its last line (and where Tune keeps
    # the whole trace), so one failure is one line, as for every other error of emerge.
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    # Tune's experiment state lives in the run folder; when it cannot be saved there (a
    # full disk) the trials fail for the same reason, and the board names it once.
    logging.getLogger("ray.tune.execution.experiment_state").setLevel(logging.CRITICAL)
    # ...and so is the driver's background sync of that state: on a full disk it warned
    # "Last sync command failed" with pyarrow's whole traceback (CI, stop 33)
    logging.getLogger("ray.train._internal.syncer").setLevel(logging.ERROR)
    kwargs = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address is not None and (why := _unreachable(address)) is not None:
        raise RuntimeFault(f"cannot reach the Ray cluster at {address} ({why}); start it "
                           "(`ray start --head`), or leave out --address to start a local "
                           "one; nothing was started")
    try:
        ctx = ray.init(address=address, **kwargs)
    except ConnectionError as e:
        if address not in (None, "auto"):
            raise RuntimeFault(f"cannot reach the Ray cluster at {address}: {e}") from None
        # A stale /tmp/ray/ray_current_cluster from a cluster that is gone: start our own.
        console.print(f"[yellow]no Ray cluster answered ({e}); starting a local one[/yellow]")
        ctx = ray.init(address="local", **kwargs)
    res = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n["Alive"]]
    url = getattr(ctx, "dashboard_url", None)
    console.print(f"Ray {ctx.address_info.get('address', '')}: {len(nodes)} node(s), "
                  f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs"
                  + (f"; dashboard http://{url}" if url else ""))
    return True


@dataclass(frozen=True)
class Capacity:
    """What the dry run plans against: where, and its CPUs and GPUs."""

    where: str
    cpus: float
    gpus: float


def capacity_in_view(address: str | None) -> Capacity:
    """The resources of the Ray cluster that answers at ``address`` (or RAY_ADDRESS);
    otherwise this machine's cores and GPUs, what a local Ray would have. Starts nothing."""
    import shutil
    import subprocess

    address = address or os.environ.get("RAY_ADDRESS")
    if address not in (None, "local") and (why := _unreachable(address)) is not None:
        raise RuntimeFault(f"cannot reach the Ray cluster at {address} ({why}); leave out "
                           "--address to plan against this machine")
    if address not in (None, "local"):
        import ray

        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
            res = ray.cluster_resources()
            return Capacity(f"the Ray cluster at {address}", res.get("CPU", 0.0),
                            res.get("GPU", 0.0))
        except (ConnectionError, RuntimeError):
            pass
        finally:
            ray.shutdown()
    gpus = 0
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
        gpus = sum(line.startswith("GPU ") for line in out.stdout.splitlines())
    return Capacity("this machine (no Ray cluster given)", float(os.cpu_count() or 1),
                    float(gpus))


def _node_sees(path: str) -> tuple[bool, str]:
    import socket

    return os.path.exists(path), socket.gethostname()


def preflight(run_dir: Path, trials: list[Trial], *, allow_pending: bool,
              pool: Probes | None = None) -> None:
    """Refuse, before anything starts, a sweep this cluster cannot run."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"]]
    max_cpu = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
    max_gpu = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
    problems = []
    total = ray.cluster_resources()
    for p in trials:
        for name, amount in p.resources.custom.items():
            if max((n["Resources"].get(name, 0) for n in nodes), default=0) < amount:
                problems.append(f"per_scale.{p.config.scale}.resources.custom.{name}: no node "
                                f"offers {amount:g} of resource {name!r} (start nodes with "
                                "ray start --resources)")
        if p.resources.cpus > max_cpu:
            problems.append(f"trial {p.name} needs {p.resources.cpus:g} CPUs, but the largest "
                            f"node has {max_cpu:g}; lower per_scale.{p.config.scale}."
                            "resources.cpus")
        if p.resources.gpus > max_gpu and not allow_pending:
            problems.append(f"trial {p.name} needs {p.resources.gpus:g} GPU(s), but no node of "
                            f"this cluster has that many; add GPU nodes, run on CPU "
                            f"(per_scale.{p.config.scale}.resources.gpus: 0), or pass "
                            "--allow-pending to wait for an autoscaler")
    if pool is not None and pool.measures:
        if pool.resources.gpus > max_gpu and not allow_pending:
            problems.append(f"probes.resources.gpus: {pool.resources.gpus:g} GPU(s) per actor, "
                            "but no node has that many; pass --allow-pending to wait for an "
                            "autoscaler")
        for name, amount in pool.resources.custom.items():
            if total.get(name, 0) < amount:
                problems.append(f"probes.resources.custom.{name}: no node offers {amount:g} of "
                                f"resource {name!r} (start nodes with ray start --resources)")
    if problems:
        raise UsageError(*dict.fromkeys(problems))
    if len(nodes) > 1:
        # Every node must see the run folder: write a marker here, look for it everywhere.
        run_dir.mkdir(parents=True, exist_ok=True)
        marker = RunFolder(run_dir).shared_check_path(uuid.uuid4().hex)
        marker.write_text("")
        try:
            check = ray.remote(num_cpus=0)(_node_sees)
            refs = [check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                n["NodeID"], soft=False)).remote(str(marker)) for n in nodes]
            blind = [(n, host) for n, (seen, host) in zip(nodes, ray.get(refs), strict=True)
                     if not seen]
        finally:
            marker.unlink(missing_ok=True)
        if blind:
            n, host = blind[0]
            raise UsageError(
                f"run folder {run_dir} is not visible from node {n['NodeManagerAddress']} "
                f"({host}); on a multi-node cluster the run folder must be shared storage "
                "(NFS, mounted at the same path on every node): set run_dir in the sweep file")
