"""Measures: pure functions over tensors that return small frozen results."""

from emergence_core.measures.rankme import RANKME_EPS, effective_rank, rankme

__all__ = ["RANKME_EPS", "effective_rank", "rankme"]
