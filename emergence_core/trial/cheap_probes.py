"""The cheap probe suite, run inside the trial at every probe step (docs/methods.md §3).

One forward pass over each level's diagnostic set yields both the behaviour (accuracy,
log-prob) and the residual stream at the read positions; the geometric measures are then
pure functions of those tensors:

- RankMe, centred and uncentred, of the first ``rankme_samples`` diagnostic samples of each
  level, and of their union (pooled: level null), for every layer;
- a linear probe per layer: ridge readout of the first answer token (what SEP predicts),
  fitted on the first ``probe_fit_fraction`` of a level's diagnostic samples and scored on
  the rest; pooled fits one probe on all levels' fit parts.

The geometry is computed batched (:func:`geometry_rows`): one SVD call per centring and
shape over all layers and levels, one solve per ridge probe over all layers, and one host
transfer per read position; :func:`geometry_rows_per_value` is the former one-value-at-a-time
computation, kept as the reference the tests and ``benchmarks/bench_probe_step.py`` compare
against.

The model is used in eval mode without gradients and returned to its previous mode.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from emergence_core.config import ProbeConfig
from emergence_core.measures import (
    AnswerScores,
    linear_probe_accuracies,
    linear_probe_accuracy,
    rankme,
    rankme_batched,
    score_answers,
)
from emergence_core.metrics import Measure, RowBuffer, measure_name
from emergence_core.model import answer_logits, capture_residual
from emergence_core.tasks import EncodedSet, TrialData

__all__ = ["LevelReading", "geometry_rows", "geometry_rows_per_value", "read_level",
           "read_position", "run_cheap_probes"]


@dataclass(frozen=True)
class LevelReading:
    """What one level's diagnostic forward pass produced."""

    level: int
    scores: AnswerScores
    reps: dict[str, list[torch.Tensor]]  # read position -> per layer [n, d]
    first_answer: torch.Tensor  # [n] the first answer token (the linear probe's label)


def read_position(slot: torch.Tensor, position: str, sep: int, answer_len: int) -> torch.Tensor:
    """The [B, d] vectors of a [B, T, d] activation at a read position."""
    if position == "sep":
        return slot[:, sep]
    if position == "prompt_mean":
        return slot[:, 1:sep].mean(dim=1)  # prompt tokens sit between LEVEL and SEP
    if position == "last_answer":
        return slot[:, sep + answer_len]
    raise ValueError(f"unknown read position {position!r}")


@torch.no_grad()
def read_level(model: nn.Module, enc: EncodedSet, *, sep: int, answer_len: int,
               positions: tuple[str, ...], batch_size: int) -> LevelReading:
    """Score the answers of ``enc`` and keep the residual stream at the read positions."""
    scores, reps = [], {p: [] for p in positions}
    with capture_residual(model) as slots:
        for start in range(0, len(enc), batch_size):
            part = enc.select(torch.arange(start, min(start + batch_size, len(enc))))
            logits = answer_logits(model, part.inputs, part.positions)
            scores.append(score_answers(logits, part.targets))
            for p in positions:
                reps[p].append([read_position(s, p, sep, answer_len).float() for s in slots])
    per_layer = {p: [torch.cat(chunks) for chunks in zip(*reps[p], strict=True)]
                 for p in positions}
    return LevelReading(int(enc.level[0]), AnswerScores.cat(scores), per_layer,
                        enc.targets[:, 0].clone())


def run_cheap_probes(model: nn.Module, data: TrialData, cfg: ProbeConfig, step: int,
                     rows: RowBuffer, diag: list[EncodedSet] | None = None) -> dict[int, float]:
    """Add the cheap measures at ``step`` to ``rows``; returns accuracy per level.

    ``diag`` defaults to ``data.diag`` (pass it already on the model's device).
    """
    was_training = model.training
    model.eval()
    try:
        sets = diag if diag is not None else data.diag
        readings = [
            read_level(model, enc, sep=ld.spec.sep_pos, answer_len=ld.spec.answer_len,
                       positions=cfg.read_positions, batch_size=cfg.eval_batch_size)
            for ld, enc in zip(data.levels, sets, strict=True)
        ]
    finally:
        model.train(was_training)

    acc: dict[int, float] = {}
    for r in readings:
        acc[r.level] = r.scores.accuracy()
        rows.add(step, Measure.ACCURACY, acc[r.level], level=r.level)
        rows.add(step, Measure.TOKEN_ACCURACY, r.scores.token_accuracy(), level=r.level)
        rows.add(step, Measure.LOGPROB, r.scores.mean_logprob(), level=r.level)
        rows.add(step, Measure.DIAG_LOSS, r.scores.loss_per_token(), level=r.level)
    # Pooled behaviour: the levels weigh equally, as they do in the training mix.
    rows.add(step, Measure.ACCURACY, sum(acc.values()) / len(acc))
    rows.add(step, Measure.DIAG_LOSS,
             sum(r.scores.loss_per_token() for r in readings) / len(readings))

    for pos in cfg.read_positions:
        geometry_rows(readings, pos, cfg, step, rows)
    return acc


def geometry_rows(readings: list[LevelReading], pos: str, cfg: ProbeConfig, step: int,
                  rows: RowBuffer) -> None:
    """Add RankMe (centred, uncentred) and the linear probe at ``pos`` for every layer and
    level, and pooled over levels: the rows of :func:`geometry_rows_per_value`, in its order.

    Why batched: on a GPU the per-value path ran hundreds of small kernels per probe step,
    each RankMe and probe ending in a host synchronisation (4.6 s per s4 probe step on an
    H200, against a forward pass of a fraction of that). Here the values stay tensors on
    the representations' device until one transfer at the end.
    """
    stacks = [torch.stack(r.reps[pos]) for r in readings]  # per level [layers, n, d]
    n_layers = stacks[0].shape[0]
    k = cfg.rankme_samples
    pooled = len(readings) > 1
    z = [s[:, :k] for s in stacks]
    if pooled:
        z.append(torch.cat(z, dim=1))
    centred, uncentred = _rankmes(z, centre=True), _rankmes(z, centre=False)
    probes: tuple[torch.Tensor, ...] = ()
    if cfg.linear_probe:
        cuts = [round(cfg.probe_fit_fraction * s.shape[1]) for s in stacks]
        fits = [(s[:, :c], r.first_answer[:c]) for s, c, r in zip(stacks, cuts, readings,
                                                                  strict=True)]
        tests = [(s[:, c:], r.first_answer[c:]) for s, c, r in zip(stacks, cuts, readings,
                                                                   strict=True)]
        if pooled:
            fits.append((torch.cat([x for x, _ in fits], dim=1),
                         torch.cat([y for _, y in fits])))
            tests.append((torch.cat([x for x, _ in tests], dim=1),
                          torch.cat([y for _, y in tests])))
        probes = tuple(linear_probe_accuracies(*fit, *test, ridge=cfg.ridge)
                       for fit, test in zip(fits, tests, strict=True))
    measures = [centred, uncentred, *([probes] if cfg.linear_probe else [])]
    # [groups, measures, layers] in one host transfer; groups: the levels, then pooled
    values = torch.stack([torch.stack(group) for group in zip(*measures, strict=True)]).tolist()
    names = [measure_name(m, pos) for m in
             (Measure.RANKME, Measure.RANKME_UNCENTRED, Measure.LINEAR_PROBE)][:len(measures)]
    levels: list[int | None] = [r.level for r in readings] + ([None] if pooled else [])
    for layer in range(n_layers):
        for group, level in enumerate(levels):
            for name, by_layer in zip(names, values[group], strict=True):
                rows.add(step, name, by_layer[layer], layer=layer, level=level)


def _rankmes(stacks: list[torch.Tensor], *, centre: bool) -> list[torch.Tensor]:
    """RankMe [layers] of each stack [layers, n, d]: one batched SVD per distinct shape."""
    by_shape: dict[torch.Size, list[int]] = defaultdict(list)
    for i, s in enumerate(stacks):
        by_shape[s.shape].append(i)
    out: list[torch.Tensor] = [torch.empty(0)] * len(stacks)
    for idx in by_shape.values():
        ranks = rankme_batched(torch.cat([stacks[i] for i in idx]), centre=centre)
        for i, part in zip(idx, ranks.split([stacks[i].shape[0] for i in idx]), strict=True):
            out[i] = part
    return out


def geometry_rows_per_value(readings: list[LevelReading], pos: str, cfg: ProbeConfig,
                            step: int, rows: RowBuffer) -> None:
    """The rows of :func:`geometry_rows`, one RankMe and one probe at a time (the reference:
    the scalar measures, each a host synchronisation)."""
    n_layers = len(readings[0].reps[pos])
    k = cfg.rankme_samples
    rk, rk_u, lp = (measure_name(m, pos) for m in
                    (Measure.RANKME, Measure.RANKME_UNCENTRED, Measure.LINEAR_PROBE))
    for layer in range(n_layers):
        pooled_z, fits, tests = [], [], []
        for r in readings:
            h = r.reps[pos][layer]
            z = h[:k]
            pooled_z.append(z)
            rows.add(step, rk, rankme(z), layer=layer, level=r.level)
            rows.add(step, rk_u, rankme(z, centre=False), layer=layer, level=r.level)
            if cfg.linear_probe:
                cut = round(cfg.probe_fit_fraction * h.shape[0])
                fit = (h[:cut], r.first_answer[:cut])
                test = (h[cut:], r.first_answer[cut:])
                fits.append(fit)
                tests.append(test)
                rows.add(step, lp, linear_probe_accuracy(*fit, *test, ridge=cfg.ridge),
                         layer=layer, level=r.level)
        if len(readings) > 1:
            z = torch.cat(pooled_z)
            rows.add(step, rk, rankme(z), layer=layer)
            rows.add(step, rk_u, rankme(z, centre=False), layer=layer)
            if cfg.linear_probe:
                xf, yf = (torch.cat(t) for t in zip(*fits, strict=True))
                xt, yt = (torch.cat(t) for t in zip(*tests, strict=True))
                rows.add(step, lp, linear_probe_accuracy(xf, yf, xt, yt, ridge=cfg.ridge),
                         layer=layer)
