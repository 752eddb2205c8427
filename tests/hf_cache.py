"""An offline Hugging Face hub cache holding a tiny GPT-NeoX under a Pythia-like name.

The cache has the Hub's own layout, so ``from_pretrained(name, revision=...)`` resolves
revisions exactly as it does for the real Pythia checkpoints:

    <hub>/models--EleutherAI--pythia-tiny-test/
        refs/<revision>                 a 40-hex commit id (one per revision, and main)
        snapshots/<commit>/<file>       symlinks into blobs/
        blobs/<sha256>                  config, weights (safetensors), tokenizer files

Each revision has different weights (its own seed). The tokenizer is a byte-level BPE
trained offline on the shipped probe sets, like Pythia's (no BOS, leading-space tokens).

Bind the fixtures in a test module (``hf_hub_dir, offline_hub = hf_cache.hf_hub_dir,
hf_cache.offline_hub``) and request ``offline_hub``: it points ``HF_HOME`` and
``HF_HUB_CACHE`` at the cache, sets ``HF_HUB_OFFLINE=1`` and makes any socket connection
fail, so no test can reach a hub.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import torch

__all__ = [
    "TINY_LAYERS",
    "TINY_MODEL",
    "TINY_REVISIONS",
    "build_hub_cache",
    "build_tokenizer",
    "hf_hub_dir",
    "offline_hub",
    "repo_dir",
    "tiny_config",
]

TINY_MODEL = "EleutherAI/pythia-tiny-test"
TINY_REVISIONS = ("step0", "step1", "step1000")
TINY_LAYERS = 2


def build_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on ``texts``, as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>")


def tiny_config(vocab_size: int):
    """A 2-layer GPT-NeoX with hidden size 32, shaped like Pythia (untied head, rotary 25%)."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=TINY_LAYERS,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=256,
        rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
    )


def repo_dir(hub: Path, model_name: str = TINY_MODEL) -> Path:
    """The cache folder of ``model_name`` inside the hub cache ``hub``."""
    return hub / f"models--{model_name.replace('/', '--')}"


def _commit_id(model_name: str, revision: str) -> str:
    return hashlib.sha1(f"{model_name}@{revision}".encode()).hexdigest()


def build_hub_cache(hub: Path, tokenizer, model_name: str = TINY_MODEL,
                    revisions: Iterable[str] = TINY_REVISIONS) -> dict[str, str]:
    """Write one snapshot per revision (seeded by its index) and its ref; return rev -> commit.

    ``refs/main`` points at the last revision, as on the Hub.
    """
    from transformers import GPTNeoXForCausalLM

    repo = repo_dir(hub, model_name)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    # Pythia pads its vocabulary beyond the tokenizer's (50304 vs 50277): do the same.
    config = tiny_config(vocab_size=(len(tokenizer) + 63) // 64 * 64)
    commits: dict[str, str] = {}
    for i, rev in enumerate(revisions):
        with torch.random.fork_rng():  # leave the global generator as the test found it
            torch.manual_seed(1000 + i)
            model = GPTNeoXForCausalLM(config)
        commit = _commit_id(model_name, rev)
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        with tempfile.TemporaryDirectory(dir=hub) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            for f in sorted(Path(staging).iterdir()):
                blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
                if not blob.exists():
                    shutil.move(f, blob)
                (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
        (repo / "refs" / rev).write_text(commit)
        commits[rev] = commit
    (repo / "refs" / "main").write_text(list(commits.values())[-1])
    return commits


@pytest.fixture(scope="session")
def hf_hub_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide hub cache (``<HF_HOME>/hub``) with the tiny model's revisions."""
    from emergence_core.pythia.probesets import load_probesets

    home = tmp_path_factory.mktemp("hf_home")
    hub = home / "hub"
    hub.mkdir()
    texts = [t for ps in load_probesets() for item in ps.items
             for t in (item.prompt, item.continuation, item.bad or "")]
    build_hub_cache(hub, build_tokenizer(texts))
    return hub


@pytest.fixture
def offline_hub(hf_hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point the Hugging Face libraries at ``hf_hub_dir``, offline, with sockets disabled.

    huggingface_hub reads its environment once, at import: the module constants are
    patched beside the variables so that the change holds in this already-running process.
    """
    from huggingface_hub import constants

    home = hf_hub_dir.parent
    for var, value in (("HF_HOME", str(home)), ("HF_HUB_CACHE", str(hf_hub_dir)),
                       ("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_hub_dir))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise OSError("network access is disabled in the Pythia tests")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    # One thread: on a shared 2-core machine OpenMP's second thread turns a 4 ms forward of
    # the tiny model into 150 ms; restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield hf_hub_dir
    finally:
        torch.set_num_threads(threads)
