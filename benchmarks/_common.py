"""Shared by the measure benchmarks: the benchmark model, its probe batch, BENCHMARKS.md.

The model is a small GPT-2 (2 layers, d 128, 4 heads, vocab 30, sequences of 20 tokens)
trained briefly on a copy task, so that its Hessian is measured near a minimum, as at a
real checkpoint; the probe batch is 64 held-out sequences scored on their 10 answer tokens.
"""

from __future__ import annotations

import platform
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that need it: benchmarks of the statistics stage
# share write_section without loading it.

VOCAB, SEP, EOS, N_COPY = 30, 28, 29, 9  # sequence: 9 symbols, SEP, the 9 again, EOS


def copy_sequences(n: int, generator: torch.Generator) -> torch.Tensor:
    import torch

    x = torch.randint(0, SEP, (n, N_COPY), generator=generator)
    sep = torch.full((n, 1), SEP)
    eos = torch.full((n, 1), EOS)
    return torch.cat([x, sep, x, eos], dim=1)  # [n, 20]


def benchmark_model(train_steps: int = 80, seed: int = 0):
    """(model, probe batch): the GPT-2 above after ``train_steps`` AdamW steps of batch 64."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from emergence_core.measures.batch import ScoredBatch

    hf_logging.set_verbosity_error()
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=VOCAB, n_positions=32,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None,
                     eos_token_id=None, pad_token_id=None, use_cache=False)
    model = GPT2LMHeadModel(cfg)
    gen = torch.Generator().manual_seed(seed)
    n_answer = N_COPY + 1
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(train_steps):
        batch = ScoredBatch.from_causal_lm(copy_sequences(64, gen), n_answer)
        opt.zero_grad(set_to_none=True)
        batch.loss(model).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    probe = ScoredBatch.from_causal_lm(copy_sequences(64, gen), n_answer)
    return model, probe


def header(threads: int) -> str:
    import torch

    return (f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} "
            f"({platform.processor() or 'cpu'}), torch {torch.__version__}, "
            f"{threads} torch thread(s), both sides in the same process.")


def markdown_table(rows: list[list[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def write_section(name: str, text: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Insert or replace ``<!-- bench:name --> ... <!-- /bench:name -->`` in BENCHMARKS.md."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{text.strip()}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else (
        old.rstrip("\n") + "\n\n" + block + "\n")
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(new)
    tmp.replace(path)
