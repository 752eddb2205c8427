"""Measures: pure functions over tensors that return small frozen results.

Cheap, in the trial: behaviour (``score_answers``), ``rankme``, ``linear_probe_accuracy``.
Expensive, on checkpoints: the Hessian (``estimate_hessian``), the local learning
coefficient (``estimate_llc``, a reduction over the SGLD draws of ``sample_sgld``), the
Fisher and gradient-covariance effective ranks.
"""

from emergence_core.measures.batch import (
    IGNORE_INDEX,
    RegressionBatch,
    ScoredBatch,
    eval_mode,
    trainable_parameters,
)
from emergence_core.measures.behaviour import AnswerScores, score_answers
from emergence_core.measures.gradrank import (
    GradRankResult,
    GradRankSettings,
    fisher_effective_rank,
    gradcov_effective_rank,
    gradient_gram,
)
from emergence_core.measures.hessian import (
    HessianOperator,
    HessianResult,
    HessianSettings,
    estimate_hessian,
    hutchinson_trace,
    lanczos_lambda_max,
)
from emergence_core.measures.linear_probe import linear_probe_accuracies, linear_probe_accuracy
from emergence_core.measures.llc import LLCResult, estimate_llc, llc_from_trace, split_rhat
from emergence_core.measures.rankme import (
    RANKME_EPS,
    effective_rank,
    effective_ranks,
    rankme,
    rankme_batched,
)
from emergence_core.measures.sgld import LLCSettings, SGLDTrace, default_n_beta, sample_sgld

__all__ = [
    "IGNORE_INDEX",
    "RANKME_EPS",
    "AnswerScores",
    "GradRankResult",
    "GradRankSettings",
    "HessianOperator",
    "HessianResult",
    "HessianSettings",
    "LLCResult",
    "LLCSettings",
    "RegressionBatch",
    "SGLDTrace",
    "ScoredBatch",
    "default_n_beta",
    "effective_rank",
    "effective_ranks",
    "estimate_hessian",
    "estimate_llc",
    "eval_mode",
    "fisher_effective_rank",
    "gradcov_effective_rank",
    "gradient_gram",
    "hutchinson_trace",
    "lanczos_lambda_max",
    "linear_probe_accuracies",
    "linear_probe_accuracy",
    "llc_from_trace",
    "rankme",
    "rankme_batched",
    "sample_sgld",
    "score_answers",
    "split_rhat",
    "trainable_parameters",
]
