"""Every definition of the collapse measure, recomputed offline from a trial's kept weights.

What a probe step needs to recompute the cheap measures under another definition is its
weights (``train.checkpoint.weights_every: 1`` and the pool's ``keep_weights: true``: the dry
run states their disk) and the trial's diagnostic sets, which are rebuilt from its config
(deterministic). For each kept step, one forward pass per level reads every layer at every
position (the embedding, each block, the final layer norm, the logits), and
:func:`~emergence_core.multiverse.definitions.definition_values` computes every definition
of the grid. The rows go to ``RUN_DIR/multiverse/<trial>.parquet`` in the metrics
contract's schema (``source`` "multiverse"), so the statistics stage reads them as it reads
the trial's own.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import torch
from torch import nn

from emergence_core.atomic import atomic_path
from emergence_core.metrics import RowBuffer, TrialKey
from emergence_core.model import capture_residual
from emergence_core.multiverse.definitions import Definition, definition_values
from emergence_core.tasks import TrialData
from emergence_core.trial.cheap_probes import read_position

__all__ = ["multiverse_path", "read_all", "recompute_trial"]

SOURCE = "multiverse"


def multiverse_path(run_dir: str | Path, trial: str) -> Path:
    return Path(run_dir) / "multiverse" / f"{trial}.parquet"


def _pick(t: torch.Tensor, position: str, sep: int, answer_len: int) -> torch.Tensor:
    """The trial's read positions (``cheap_probes.read_position``), and ``all``: every
    position of every sequence a sample ([B, T, d], flattened after the samples are taken)."""
    return t if position == "all" else read_position(t, position, sep, answer_len)


@torch.no_grad()
def read_all(model: nn.Module, data: TrialData, positions: tuple[str, ...], samples: int,
             batch_size: int = 256) -> tuple[dict[str, list[list[torch.Tensor]]], list[int]]:
    """Per position, per level, per layer (embedding, blocks, final layer norm, logits) the
    first ``samples`` diagnostic samples' vectors; and the levels, in order."""
    was = model.training
    model.eval()
    out: dict[str, list[list[torch.Tensor]]] = {p: [] for p in positions}
    levels = []
    try:
        for ld, enc in zip(data.levels, data.diag, strict=True):
            enc = enc.select(torch.arange(min(samples, len(enc))))
            sep, answer_len = ld.spec.sep_pos, ld.spec.answer_len
            chunks: dict[str, list[list[torch.Tensor]]] = {p: [] for p in positions}
            with capture_residual(model) as slots:
                for start in range(0, len(enc), batch_size):
                    part = enc.select(torch.arange(start, min(start + batch_size, len(enc))))
                    hidden = model.transformer(input_ids=part.inputs).last_hidden_state
                    stack = [*slots, hidden, model.lm_head(hidden)]
                    for p in positions:
                        chunks[p].append([_pick(t, p, sep, answer_len).float().cpu()
                                          for t in stack])
            for p in positions:
                out[p].append([torch.cat(c) for c in zip(*chunks[p], strict=True)])
            levels.append(int(enc.level[0]))
    finally:
        model.train(was)
    return out, levels


def recompute_trial(run_dir: str | Path, trial: str, cfg: object,
                    definitions: list[Definition], *, sweep: str = "local",
                    steps: list[int] | None = None, progress=None) -> Path:
    """Every definition at every step with kept weights (or ``steps``), written to
    :func:`multiverse_path`; returns that path. ``cfg``: the trial's ``TrainConfig``."""
    from emergence_core.expensive import trial_model
    from emergence_core.store import TrialStore

    store = TrialStore(run_dir, trial)
    kept = store.weight_steps() if steps is None else steps
    data, model = trial_model(cfg)
    n_blocks = len(model.transformer.h)
    positions = tuple(sorted({d.position for d in definitions}))
    most = max(d.samples for d in definitions)
    rows = RowBuffer(TrialKey(sweep=sweep, trial=trial, task=cfg.task, scale=cfg.scale,
                              seed=cfg.seed, source=SOURCE))
    for i, step in enumerate(kept):
        store.load_weights(model, step)
        layers, levels = read_all(model, data, positions, most)
        for (d, layer, level), v in definition_values(layers, n_blocks, definitions,
                                                      levels).items():
            rows.add(step, d.name, v, layer=layer, level=level)
        if progress is not None:
            progress(i + 1, len(kept))
    path = multiverse_path(run_dir, trial)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(rows.take(), tmp)
    return path
