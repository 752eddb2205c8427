"""Behaviour on the diagnostic set: exact-match accuracy and answer log-probabilities.

Given logits at the answer positions [n, A, V] and the answer tokens [n, A] (-100 where a
sample's answer is shorter than A), per sample:

    correct      = every answer token is the argmax prediction (exact match)
    tokens_right = number of answer tokens that are the argmax
    logprob      = sum over answer tokens of log p(token)  (log-prob of the whole answer)
    n_tokens     = number of answer tokens
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["AnswerScores", "score_answers"]


@dataclass(frozen=True)
class AnswerScores:
    correct: torch.Tensor  # [n] bool
    tokens_right: torch.Tensor  # [n] int64
    logprob: torch.Tensor  # [n] float64
    n_tokens: torch.Tensor  # [n] int64

    @staticmethod
    def cat(parts: list[AnswerScores]) -> AnswerScores:
        return AnswerScores(*(torch.cat([getattr(p, f) for p in parts])
                              for f in ("correct", "tokens_right", "logprob", "n_tokens")))

    def accuracy(self) -> float:
        return float(self.correct.double().mean())

    def token_accuracy(self) -> float:
        return float(self.tokens_right.sum() / self.n_tokens.sum())

    def mean_logprob(self) -> float:
        return float(self.logprob.mean())

    def loss_per_token(self) -> float:
        return float(-self.logprob.sum() / self.n_tokens.sum())


def score_answers(logits: torch.Tensor, targets: torch.Tensor,
                  ignore_index: int = -100) -> AnswerScores:
    valid = targets != ignore_index
    safe = targets.clamp_min(0)
    logp = torch.log_softmax(logits.double(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    right = (logits.argmax(-1) == safe) & valid
    n_tok = valid.sum(1)
    return AnswerScores(
        correct=(right | ~valid).all(1),
        tokens_right=right.sum(1),
        logprob=(logp * valid).sum(1),
        n_tokens=n_tok,
    )
