"""Load one Pythia checkpoint (model + tokenizer) through the Hugging Face hub cache.

Revisions resolve only through the hub cache layout (``models--ORG--NAME/refs/<rev>``
holding a commit id, ``snapshots/<commit>/...``): ``from_pretrained(local_dir,
revision=...)`` silently ignores the revision, so a name that is a local directory is
refused. Offline (``HF_HUB_OFFLINE=1`` or ``local_files_only=True``) nothing touches the
network; online, a missing revision is downloaded into the cache.

Every way of failing to load (offline and not cached, unknown revision, broken snapshot,
Hub error) becomes one :class:`PythiaLoadError` whose message is one line naming the model
and the revision, so a Ray task can record it and move on.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["PythiaLoadError", "cached_revisions", "load_checkpoint", "resolve_dtype"]

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


class PythiaLoadError(RuntimeError):
    """A (model, revision) that cannot be loaded; the message is one line naming both."""

    def __init__(self, model_name: str, revision: str, reason: str) -> None:
        self.model_name, self.revision = model_name, revision
        self.reason = " ".join(str(reason).split())  # one line, whatever the cause said
        super().__init__(f"cannot load {model_name}@{revision}: {self.reason}")

    def __reduce__(self):  # picklable with its fields, so it crosses process boundaries (Ray)
        return type(self), (self.model_name, self.revision, self.reason)


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.bfloat16`` or one of 'float32', 'bfloat16', 'float16' (and fp32/bf16/fp16)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def _hub_cache(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    from huggingface_hub import constants  # read at call time: tests repoint it

    return Path(constants.HF_HUB_CACHE)


def cached_revisions(model_name: str, cache_dir: str | os.PathLike | None = None) -> list[str]:
    """The revision refs present in the local hub cache for ``model_name`` (sorted)."""
    refs = _hub_cache(cache_dir) / f"models--{model_name.replace('/', '--')}" / "refs"
    return sorted(p.name for p in refs.iterdir() if p.is_file()) if refs.is_dir() else []


def _diagnose(model_name: str, revision: str, cache_dir: str | os.PathLike | None,
              offline: bool, error: Exception) -> str:
    """A specific reason when the cache explains the failure, else the library's message."""
    if offline:
        repo = _hub_cache(cache_dir) / f"models--{model_name.replace('/', '--')}"
        if not repo.is_dir():
            return f"model not in the local hub cache {repo.parent} (offline)"
        cached = cached_revisions(model_name, cache_dir)
        if revision not in cached:
            return (f"revision not in the local hub cache (offline); cached: "
                    f"{', '.join(cached) or 'none'}")
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def load_checkpoint(
    model_name: str,
    revision: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str = "sdpa",
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
):
    """Load ``(model, tokenizer)`` of ``model_name`` at ``revision``, in eval mode on ``device``.

    ``attn_implementation`` is ``"sdpa"`` or ``"eager"``. Raises :class:`PythiaLoadError`
    for anything that prevents loading.
    """
    from huggingface_hub import constants
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    if attn_implementation not in ("sdpa", "eager"):
        raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', "
                         f"got {attn_implementation!r}")
    if os.path.isdir(model_name):
        raise PythiaLoadError(model_name, revision, "is a local directory, where "
                              "from_pretrained ignores the revision; use the hub-cache name")
    offline = local_files_only or constants.is_offline_mode()
    kwargs = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            model_name, dtype=torch_dtype, attn_implementation=attn_implementation, **kwargs
        )
    except Exception as e:  # the hub, transformers and safetensors raise many types
        raise PythiaLoadError(model_name, revision,
                              _diagnose(model_name, revision, cache_dir, offline, e)) from e
    model.eval()
    model.to(device)
    return model, tokenizer
