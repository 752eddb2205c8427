"""Measures: pure functions over tensors that return small frozen results."""

from emergence_core.measures.behaviour import AnswerScores, score_answers
from emergence_core.measures.linear_probe import linear_probe_accuracy
from emergence_core.measures.rankme import RANKME_EPS, effective_rank, rankme

__all__ = [
    "RANKME_EPS",
    "AnswerScores",
    "effective_rank",
    "linear_probe_accuracy",
    "rankme",
    "score_answers",
]
