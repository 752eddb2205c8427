"""Teacher-forced scoring of probe items and residual-stream capture, in padded batches.

Each scored sequence is ``prompt tokens + continuation tokens``, tokenised separately
(no special tokens; Pythia's tokenizer adds none) so that the prompt's last token, the
read position, is the same whatever follows it. Batches are right-padded: with a causal
mask a real token never sees the padding after it, and position ids stay 0, 1, 2, ... so
no position bookkeeping is needed; the attention mask is passed all the same.

Continuation token t_i (at position p + i for a prompt of p tokens) is scored by the
logits at position p + i - 1. Logits are computed only at those positions (the output
head applied to the base model's last hidden state), which halves the cost of small models
and avoids a [batch, length, vocab] tensor for large vocabularies.

Representations are the residual stream: index 0 is the embedding output (the input of the
first block), index l the output of block l, before the final layer norm. Each is read at
the positions named in ``positions``:

- ``"sep"``: the last prompt token, the position that predicts the continuation;
- ``"prompt_mean"``: the mean over the prompt tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from emergence_core.pythia.probesets import ProbeSet

__all__ = ["POSITIONS", "ItemScores", "decoder_layers", "residual_capture", "score_probeset"]

POSITIONS = ("sep", "prompt_mean")


@dataclass(frozen=True)
class ItemScores:
    """Per-item scores of one probe set, and its representations per position and layer.

    ``reps[position]`` has shape [n_layers + 1, n_items, d_model] (float32, on the CPU).
    For pair sets ``logprob`` and ``token_hits``/``n_tokens`` refer to the good continuation
    and ``logprob_bad`` to the bad one; otherwise ``logprob_bad`` is None.
    """

    logprob: torch.Tensor  # [n_items] float64: sum of log p over the continuation tokens
    exact: torch.Tensor  # [n_items] bool: every continuation token is the argmax
    token_hits: torch.Tensor  # [n_items] int64: continuation tokens that are the argmax
    n_tokens: torch.Tensor  # [n_items] int64: continuation tokens
    logprob_bad: torch.Tensor | None
    reps: dict[str, torch.Tensor]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of a causal LM (GPT-NeoX ``layers``, GPT-2 ``h``...)."""
    base = model.base_model
    n = getattr(model.config, "num_hidden_layers", None)
    for attr in ("layers", "h", "blocks"):
        found = getattr(base, attr, None)
        if isinstance(found, nn.ModuleList) and (n is None or len(found) == n):
            return found
    raise TypeError(f"cannot find the decoder blocks of {type(model).__name__}")


@contextmanager
def residual_capture(model: nn.Module) -> Iterator[list[torch.Tensor | None]]:
    """Collect the residual stream of each forward: [embedding output, block 1, ..., block L].

    The yielded list is overwritten by every forward pass inside the context; the hooks
    are always removed on exit.
    """
    layers = decoder_layers(model)
    states: list[torch.Tensor | None] = [None] * (len(layers) + 1)

    def pre_hook(_module, args, kwargs):
        states[0] = args[0] if args else kwargs["hidden_states"]

    def make_hook(i: int):
        def hook(_module, _args, output):
            states[i + 1] = output[0] if isinstance(output, tuple) else output
        return hook

    handles = [layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True)]
    handles += [layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(layers)]
    try:
        yield states
    finally:
        for h in handles:
            h.remove()


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def score_probeset(model: nn.Module, tokenizer, probeset: ProbeSet, *, batch_size: int = 16,
                   positions: Sequence[str] = ("sep",)) -> ItemScores:
    """Score every item of ``probeset`` and read its representations (see module docstring)."""
    bad_positions = [p for p in positions if p not in POSITIONS]
    if bad_positions or not positions:
        raise ValueError(f"read positions must be among {POSITIONS}, got {list(positions)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pair = probeset.spec.kind == "pair"
    # One job per scored sequence: (item index, is the bad alternative, prompt ids, cont ids).
    jobs: list[tuple[int, bool, list[int], list[int]]] = []
    for i, item in enumerate(probeset.items):
        prompt = _encode(tokenizer, item.prompt)
        jobs.append((i, False, prompt, _encode(tokenizer, item.continuation)))
        if pair:
            jobs.append((i, True, prompt, _encode(tokenizer, item.bad)))
    max_len = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(p) + len(c) for _, _, p, c in jobs)
    if max_len is not None and longest > max_len:
        raise ValueError(f"probe set {probeset.name!r} has a sequence of {longest} tokens, "
                         f"longer than the model's {max_len}")

    n = len(probeset.items)
    logprob = torch.zeros(2 if pair else 1, n, dtype=torch.float64)
    hits = torch.zeros(n, dtype=torch.int64)
    n_tokens = torch.zeros(n, dtype=torch.int64)
    reps: dict[str, list[torch.Tensor]] = {p: [] for p in positions}
    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    with torch.inference_mode(), residual_capture(model) as states:
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start:start + batch_size]
            lengths = [len(p) + len(c) for _, _, p, c in batch]
            ids = torch.zeros(len(batch), max(lengths), dtype=torch.long)  # pad id 0: masked
            mask = torch.zeros_like(ids)
            for b, (_, _, p, c) in enumerate(batch):
                ids[b, :lengths[b]] = torch.tensor(p + c)
                mask[b, :lengths[b]] = 1
            out = model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                   use_cache=False)
            # Scored positions, flattened over the batch: row b, position p-1+i predicts c[i].
            rows = [b for b, (_, _, p, c) in enumerate(batch) for _ in c]
            cols = [len(p) - 1 + k for _, _, p, c in batch for k in range(len(c))]
            target = torch.tensor([t for _, _, _, c in batch for t in c], device=device)
            logits = head(out.last_hidden_state[rows, cols]).float()  # [n_scored, vocab]
            tok_lp = torch.log_softmax(logits, dim=-1).gather(1, target[:, None])[:, 0]
            tok_hit = logits.argmax(dim=-1) == target
            seq = torch.tensor(rows, device=device)
            seq_lp = torch.zeros(len(batch), dtype=torch.float64, device=device)
            seq_lp.index_add_(0, seq, tok_lp.double())
            seq_hits = torch.zeros(len(batch), dtype=torch.int64, device=device)
            seq_hits.index_add_(0, seq, tok_hit.long())
            seq_lp, seq_hits = seq_lp.cpu(), seq_hits.cpu()  # one device sync per batch
            keep = [b for b, job in enumerate(batch) if not job[1]]  # good / only sequences
            for b, (i, is_bad, _, c) in enumerate(batch):
                logprob[int(is_bad), i] = seq_lp[b]
                if not is_bad:
                    hits[i], n_tokens[i] = seq_hits[b], len(c)
            _read(states, batch, keep, positions, reps)
    return ItemScores(
        logprob=logprob[0],
        exact=hits == n_tokens,
        token_hits=hits,
        n_tokens=n_tokens,
        logprob_bad=logprob[1] if pair else None,
        reps={p: torch.cat(r, dim=1) for p, r in reps.items()},
    )


def _read(states: list[torch.Tensor | None], batch: list, keep: list[int],
          positions: Sequence[str], reps: dict[str, list[torch.Tensor]]) -> None:
    """Append [n_layers + 1, len(keep), d] representations of this batch to ``reps``."""
    if not keep:  # a batch holding only bad alternatives of pairs
        return
    assert all(s is not None for s in states), "a residual hook did not fire"
    device = states[0].device
    rows = torch.tensor(keep, device=device)
    prompt_len = torch.tensor([len(batch[b][2]) for b in keep], device=device)
    for pos in positions:
        if pos == "sep":
            r = torch.stack([s[rows, prompt_len - 1] for s in states])  # [L+1, B_keep, d]
        else:  # prompt_mean, accumulated in float32 whatever the model's dtype
            t = torch.arange(states[0].shape[1], device=device)
            m = (t[None, :] < prompt_len[:, None]).float()[:, :, None]  # [B_keep, T, 1]
            r = torch.stack([(s[rows].float() * m).sum(1) for s in states])
            r = r / prompt_len[None, :, None]
        reps[pos].append(r.float().cpu())
