"""Evaluate one Pythia revision on the probe sets and emit metrics rows (docs/methods.md §5).

Per probe set and revision:

- ``accuracy``: the set's scoring rule (see :mod:`emergence_core.pythia.probesets`): exact
  greedy match of the whole continuation, log p(good) > log p(bad) for grammar pairs, or
  pooled per-token top-1 accuracy for general text;
- ``logprob``: log p(expected continuation | prompt), summed over its tokens, mean over the
  items (for grammar pairs: of the good continuation);
- ``rankme`` and ``rankme_uncentred`` per layer (0 = embedding output, l = after block l),
  of the [n_items, d_model] matrix of residual-stream states at the read position, always
  computed in float32 (states of a bfloat16 model are cast before the SVD);
- ``chance``: the set's chance rate under its scoring rule (``probeset_chance``), so the
  statistics stage corrects accuracy for it as it does for trained tasks;
- ``model_dtype.<dtype>`` (value 1): the dtype the weights ran in. The residual stream of a
  bfloat16 forward differs from a float32 one, so RankMe of one checkpoint depends on it;
  the statistics stage flags a trajectory whose revisions ran in different dtypes.

Rows follow :mod:`emergence_core.metrics`: source ``"pythia"``, ``task`` = probe-set name,
``scale`` = model name, ``seed`` = the ``-seedN`` suffix (0 otherwise), ``step`` = the
revision's training step, ``level`` null. The trial id is :func:`trial_id` (model, probe
set): one trial is one probe set's trajectory over a model's revisions, as one trained
trial is one task's trajectory over its training steps, so ``(trial, step, measure, layer,
level)`` stays unique and the statistics stage can treat revisions as steps.

:func:`evaluate_revision` is the unit of work of the Pythia fan-out: one (model, revision)
in, one Arrow table out, nothing written, the model freed before returning.
"""

from __future__ import annotations

import gc
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import torch
from torch import nn

from emergence_core.measures.rankme import rankme
from emergence_core.metrics import Measure, RowBuffer, TrialKey, measure_name
from emergence_core.pythia.loading import load_checkpoint
from emergence_core.pythia.probesets import ProbeSet, load_probeset
from emergence_core.pythia.revisions import parse_model_name, revision_step
from emergence_core.pythia.scoring import ItemScores, score_probeset
from emergence_core.tasks.chance import PAIR_CHANCE

__all__ = ["ProbeSetResult", "evaluate_model", "evaluate_revision", "probeset_chance",
           "results_to_table", "trial_id"]


@dataclass(frozen=True)
class ProbeSetResult:
    """The measures of one probe set on one checkpoint.

    ``rankme[position]`` and ``rankme_uncentred[position]`` hold one value per layer
    (index 0 = embedding output). ``item_logprob`` and ``item_correct`` are per item.
    """

    name: str
    n_items: int
    accuracy: float
    logprob: float
    rankme: dict[str, tuple[float, ...]]
    rankme_uncentred: dict[str, tuple[float, ...]]
    item_logprob: tuple[float, ...]
    item_correct: tuple[bool, ...]
    chance: float | None = None
    dtype: str = "float32"


def probeset_chance(probeset: ProbeSet, tokenizer=None) -> float | None:
    """Accuracy of the best prompt-blind constant answer under the set's scoring rule.

    Pair sets (forced choice between two continuations): 0.5. Exact-match sets: the share
    of the most frequent expected continuation. Token-scored sets: the share of the most
    frequent continuation token among all continuation tokens (needs ``tokenizer``; None
    without one).
    """
    if probeset.spec.scoring == "pair":
        return PAIR_CHANCE
    if probeset.spec.scoring == "exact":
        counts = Counter(item.continuation for item in probeset.items)
        return max(counts.values()) / len(probeset.items)
    if tokenizer is None:
        return None
    tokens = Counter(t for item in probeset.items
                     for t in tokenizer(item.continuation, add_special_tokens=False)["input_ids"])
    return max(tokens.values()) / sum(tokens.values()) if tokens else None


def trial_id(model_name: str, probeset: str) -> str:
    """``EleutherAI/pythia-160m`` + ``grammar`` -> ``EleutherAI--pythia-160m:grammar``.

    Path-safe (no '/'), as the Hub's own cache names repositories, so sinks may use it as
    a folder or file name; the model and probe set are still readable from it.
    """
    return f"{model_name.replace('/', '--')}:{probeset}"


def _accuracy(probeset: ProbeSet, scores: ItemScores) -> tuple[float, torch.Tensor]:
    """The set's accuracy under its scoring rule, and which items are correct."""
    if probeset.spec.scoring == "pair":
        correct = scores.logprob > scores.logprob_bad
    else:
        correct = scores.exact
    if probeset.spec.scoring == "token":
        return float(scores.token_hits.sum() / scores.n_tokens.sum()), correct
    return float(correct.double().mean()), correct


def evaluate_model(model: nn.Module, tokenizer, probesets: Sequence[ProbeSet], *,
                   batch_size: int = 16, positions: Sequence[str] = ("sep",)
                   ) -> dict[str, ProbeSetResult]:
    """Measure an already loaded causal LM on each probe set (keyed by set name, in order)."""
    results: dict[str, ProbeSetResult] = {}
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    for ps in probesets:
        scores = score_probeset(model, tokenizer, ps, batch_size=batch_size, positions=positions)
        accuracy, correct = _accuracy(ps, scores)
        results[ps.name] = ProbeSetResult(
            name=ps.name,
            n_items=len(ps),
            accuracy=accuracy,
            logprob=float(scores.logprob.mean()),
            rankme={p: tuple(rankme(z.float()) for z in r) for p, r in scores.reps.items()},
            rankme_uncentred={p: tuple(rankme(z.float(), centre=False) for z in r)
                              for p, r in scores.reps.items()},
            item_logprob=tuple(scores.logprob.tolist()),
            item_correct=tuple(bool(c) for c in correct),
            chance=probeset_chance(ps, tokenizer),
            dtype=dtype,
        )
    return results


def results_to_table(results: dict[str, ProbeSetResult], *, model_name: str, revision: str,
                     sweep: str, attempt: int = 0) -> pa.Table:
    """The metrics rows of one revision's results (schema :data:`METRICS_SCHEMA`)."""
    model = parse_model_name(model_name)
    step = revision_step(revision)
    tables = []
    for name, r in results.items():
        key = TrialKey(sweep=sweep, trial=trial_id(model.name, name), task=name,
                       scale=model.name, seed=model.seed, source="pythia")
        buf = RowBuffer(key, attempt=attempt)
        buf.add(step, Measure.ACCURACY, r.accuracy)
        buf.add(step, Measure.LOGPROB, r.logprob)
        if r.chance is not None:
            buf.add(step, Measure.CHANCE, r.chance)
        buf.add(step, f"{Measure.MODEL_DTYPE}.{r.dtype}", 1.0)
        for pos, values in r.rankme.items():
            buf.extend(step, measure_name(Measure.RANKME, pos), values)
        for pos, values in r.rankme_uncentred.items():
            buf.extend(step, measure_name(Measure.RANKME_UNCENTRED, pos), values)
        tables.append(buf.take())
    return pa.concat_tables(tables)


def evaluate_revision(
    model_name: str,
    revision: str,
    probesets: Sequence[ProbeSet | str],
    *,
    device: str | torch.device,
    dtype: torch.dtype | str,
    sweep: str,
    batch_size: int = 16,
    positions: Sequence[str] = ("sep",),
    attn_implementation: str = "sdpa",
    attempt: int = 0,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> pa.Table:
    """Load ``model_name`` at ``revision``, measure it on ``probesets``, return its rows.

    ``probesets`` are :class:`ProbeSet` objects or registered names. Names are validated
    before anything loads (:class:`~emergence_core.pythia.revisions.ModelNameError`,
    :class:`~emergence_core.pythia.revisions.RevisionError`); a checkpoint that cannot be
    loaded raises :class:`~emergence_core.pythia.loading.PythiaLoadError`. Safe to call
    repeatedly in one process (a reused Ray worker): the model is released on return.
    """
    model_id = parse_model_name(model_name)
    revision_step(revision)
    sets = [load_probeset(p) if isinstance(p, str) else p for p in probesets]
    if not sets:
        raise ValueError("no probe sets to evaluate")
    model, tokenizer = load_checkpoint(
        model_id.name, revision, device=device, dtype=dtype,
        attn_implementation=attn_implementation, cache_dir=cache_dir,
        local_files_only=local_files_only,
    )
    try:
        results = evaluate_model(model, tokenizer, sets, batch_size=batch_size,
                                 positions=positions)
    finally:
        del model
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return results_to_table(results, model_name=model_id.name, revision=revision,
                            sweep=sweep, attempt=attempt)
