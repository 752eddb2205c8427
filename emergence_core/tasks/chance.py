"""Chance baselines of a diagnostic set: what a model that ignores the prompt can score.

The emergence rule is applied to chance-corrected accuracy (docs/methods.md §4), so each (task,
level) needs the accuracy of the *best constant answer* on its own diagnostic set: the
share of the most frequent whole answer (PAR's majority parity, about 0.5; CMP's commonest
relation). For the log-prob rule the baseline is the log-prob of the correct answer under
the best prompt-blind *per-position* predictor, the answer-token frequencies of each answer
position on the diagnostic set:

    logprob_chance = sum_j sum_v f_j(v) log f_j(v)     (minus the per-position entropies),

so ``1 - logprob / logprob_chance`` is 0 at that predictor and 1 at certainty, on every
task alike (PAR: log 0.5; COPY of 16 uniform digits: 16 log 0.1). The whole-answer
frequencies would be a tighter constant predictor, but on a set of 1,000 mostly distinct
answers they are the set memorised, not a baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PAIR_CHANCE", "Chance", "answer_chance"]

# A set scored as a forced choice between two continuations (Pythia's grammar pairs).
PAIR_CHANCE = 0.5


@dataclass(frozen=True)
class Chance:
    """``accuracy``: exact-match accuracy of the best constant answer; ``answer``: that
    answer (symbols); ``logprob``: per-position-marginal baseline (see the module)."""

    accuracy: float
    answer: tuple[int, ...]
    logprob: float


def answer_chance(answers: np.ndarray) -> Chance:
    """Chance baselines of a set whose answers are ``answers`` [n, A] (any integer ids).

    Ties between equally frequent answers go to the smallest (lexicographic) answer.
    """
    a = np.asarray(answers)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"answers must be a non-empty [n, A] array, got shape {a.shape}")
    rows, counts = np.unique(a, axis=0, return_counts=True)
    best = int(np.argmax(counts))  # first maximum: rows are sorted, so the smallest answer
    logprob = 0.0
    for j in range(a.shape[1]):
        _, c = np.unique(a[:, j], return_counts=True)
        f = c / a.shape[0]
        logprob += float(np.sum(f * np.log(f)))
    return Chance(float(counts[best] / a.shape[0]), tuple(int(x) for x in rows[best]),
                  logprob)
