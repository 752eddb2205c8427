"""What a trial's numbers were computed on: the build and the hardware its kernels ran on.

A seed fixes the training run on one machine and build (the rows repeat bit for bit), but
not across them: another CPU instruction set (AVX2 against AVX-512), another torch or a
GPU changes the last digits of every matmul, and a series near the emergence threshold can
then cross it at another probe step (``studies/cpu-s0``: 8 of 72 events moved). The
completion record keeps this, so a run whose trials finished on different environments
says so (``emerge analyze``), and two runs can be told apart after the fact.
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["describe_environment", "environment_label"]


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def describe_environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The build and hardware of this process, as JSON-ready values."""
    import torch  # here: emerge analyze reads the labels without torch

    device = torch.device(device)
    env: dict[str, Any] = {
        "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(), "device": device.type,
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def environment_label(env: dict[str, Any]) -> str:
    """One short line naming what changes the digits: torch, the kernels' instruction set
    (or the GPU), and the thread count."""
    where = env.get("gpu") or f"{env.get('cpu') or 'cpu'} ({env.get('cpu_capability')})"
    return f"torch {env.get('torch')} on {where}, {env.get('threads')} thread(s)"
