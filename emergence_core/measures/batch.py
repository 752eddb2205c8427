"""The probe batch shared by the expensive measures, and the model-state helpers they use.

A :class:`ScoredBatch` is a fixed set of N samples on which a model's loss is scored: per
sample, A label positions (``-100`` where a position is not scored) and a ``forward``
closure that returns the logits at exactly those positions. Every expensive measure
(Hessian, LLC, Fisher and gradient-covariance ranks) takes one, so the trainer decides once
what "the loss" is (the answer tokens of a sequence task) and the measures never see
prompts, padding or tokenisation.

Conventions, fixed here so the measures agree:

- ``loss`` is the *training* loss: the mean cross-entropy over all scored positions of the
  selected samples (a ratio of sums when samples have different numbers of scored positions).
- ``per_sample_loss`` is the *sum* of cross-entropy over one sample's scored positions: the
  negative log-likelihood of the sample's whole answer, whose gradient is that sample's score.
- Measures evaluate the model in eval mode (dropout off: a Hessian or a Fisher of a random
  loss is not defined) and restore every module's ``training`` flag afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from emergence_core.registry import did_you_mean

__all__ = [
    "IGNORE_INDEX",
    "RegressionBatch",
    "ScoredBatch",
    "eval_mode",
    "trainable_parameters",
]

IGNORE_INDEX = -100

Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


# eq=False: a generated __eq__ would compare tensors element-wise and fail; identity is the
# only meaningful equality for a batch that holds a closure anyway.
@dataclass(frozen=True, eq=False)
class ScoredBatch:
    """A fixed batch of n_samples on which a model's loss is scored."""

    targets: torch.Tensor  # [N, A] int64 labels per scored position; -100 = not scored
    forward: Forward
    # forward(model, sample_ids[int64, n]) -> logits [n, A, V] for those samples
    n_population: int | None = None  # size of the data set the batch was drawn from, if any

    def __post_init__(self) -> None:
        t = self.targets
        if t.ndim != 2 or t.dtype != torch.int64:
            raise ValueError(
                f"ScoredBatch.targets must be an int64 tensor [N, A], got dtype {t.dtype} and "
                f"shape {tuple(t.shape)}; use y.long().reshape(N, -1)"
            )
        if t.shape[0] < 1 or not bool((t != IGNORE_INDEX).any()):
            raise ValueError("ScoredBatch has no scored position: every target is -100")

    @property
    def n_samples(self) -> int:
        return int(self.targets.shape[0])

    def subset(self, ids: torch.Tensor) -> ScoredBatch:
        """The batch of the samples ``ids`` (same forward, same population)."""
        ids = ids.to(self.targets.device)
        forward = self.forward
        return ScoredBatch(targets=self.targets[ids],
                           forward=lambda model, sel: forward(model, ids[sel.to(ids.device)]),
                           n_population=self.n_population)

    @property
    def n_scored(self) -> int:
        """Number of scored positions over the whole batch."""
        return int((self.targets != IGNORE_INDEX).sum())

    def _ids(self, ids: torch.Tensor | None) -> torch.Tensor:
        if ids is None:
            return torch.arange(self.n_samples, device=self.targets.device)
        return ids.to(self.targets.device)

    def logits(self, model: nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [n, A, V] of the selected samples (all samples when ``ids`` is None)."""
        ids = self._ids(ids)
        out = self.forward(model, ids)
        if out.ndim != 3 or out.shape[:2] != (ids.shape[0], self.targets.shape[1]):
            raise ValueError(
                f"ScoredBatch.forward returned shape {tuple(out.shape)}; expected "
                f"[{ids.shape[0]}, {self.targets.shape[1]}, V] (samples, scored positions, vocab)"
            )
        return out

    def loss(self, model: nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy over the scored positions of the selected samples."""
        ids = self._ids(ids)
        logits = self.logits(model, ids)
        targets = self.targets[ids].to(logits.device)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)

    def per_sample_loss(self, model: nn.Module, ids: torch.Tensor | None = None,
                        targets: torch.Tensor | None = None) -> torch.Tensor:
        """[n] sum of cross-entropy over each selected sample's scored positions.

        ``targets`` (shape [n, A], aligned with ``ids``) replaces the batch's own labels, e.g.
        with labels drawn from the model (:meth:`sample_targets`) for the Fisher.
        """
        ids = self._ids(ids)
        logits = self.logits(model, ids)
        if targets is None:
            targets = self.targets[ids]
        targets = targets.to(logits.device)
        ce = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                             reduction="none")  # [n, A]; 0 at unscored positions
        return ce.sum(dim=1)

    @torch.no_grad()
    def sample_targets(self, model: nn.Module, generator: torch.Generator,
                       ids: torch.Tensor | None = None) -> torch.Tensor:
        """Labels [n, A] drawn from the model's own predictive distribution.

        Each scored position gets one label from softmax(logits) at that position; unscored
        positions stay -100. Pitfall: with teacher forcing, position j is conditioned on the
        *true* earlier answer tokens, not on sampled ones, so for multi-token answers this is
        the Fisher of the per-position conditionals under the data's prefixes.
        ``generator`` must live on the logits' device.
        """
        ids = self._ids(ids)
        logits = self.logits(model, ids)
        n, a, v = logits.shape
        probs = torch.softmax(logits.reshape(n * a, v).to(torch.float64), dim=-1)
        drawn = torch.multinomial(probs, 1, generator=generator).reshape(n, a)
        own = self.targets[ids].to(drawn.device)
        return torch.where(own == IGNORE_INDEX, own, drawn)

    @staticmethod
    def from_classification(x: torch.Tensor, y: torch.Tensor,
                            model_forward: Callable[[nn.Module, torch.Tensor], torch.Tensor]
                            | None = None) -> ScoredBatch:
        """A batch for a plain classifier: inputs x [N, ...], labels y [N]; A = 1.

        ``model_forward(model, x_rows) -> logits [n, V]`` defaults to ``model(x_rows)``.
        """
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must be [N] with N = {x.shape[0]}, got shape {tuple(y.shape)}")
        call = model_forward if model_forward is not None else (lambda m, xs: m(xs))

        def forward(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
            return call(model, x[ids.to(x.device)]).unsqueeze(1)  # [n, V] -> [n, 1, V]

        return ScoredBatch(targets=y.long().reshape(-1, 1), forward=forward)

    @staticmethod
    def from_causal_lm(input_ids: torch.Tensor, n_answer: int) -> ScoredBatch:
        """A batch for a Hugging Face causal LM whose rows end with ``n_answer`` answer tokens.

        Logits are computed only at the n_answer positions that predict the answer
        (``logits_to_keep``), which roughly halves the cost for short answers.
        """
        if input_ids.ndim != 2 or not 1 <= n_answer < input_ids.shape[1]:
            raise ValueError(f"need input_ids [N, T] with 1 <= n_answer < T, got shape "
                             f"{tuple(input_ids.shape)} and n_answer={n_answer}")

        def forward(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
            x = input_ids[ids.to(input_ids.device)]
            out = model(input_ids=x, logits_to_keep=n_answer + 1, use_cache=False).logits
            return out[:, :-1]  # [n, n_answer, V]: positions T-1-n_answer .. T-2

        return ScoredBatch(targets=input_ids[:, -n_answer:].long().clone(), forward=forward)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode; restore every submodule's ``training`` flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def trainable_parameters(model: nn.Module, prefixes: Sequence[str] | None = None,
                         ) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) pairs that require grad, in ``named_parameters`` order.

    With ``prefixes``, only names starting with one of them; a prefix that matches no
    trainable parameter is an error (a typo would otherwise measure nothing).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("model has no parameter that requires grad")
    if prefixes is None:
        return named
    if isinstance(prefixes, str):
        raise TypeError(f"prefixes must be a sequence of strings, got the string {prefixes!r}")
    names = [n for n, _ in named]
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n in names):
            hint = did_you_mean(prefix, names, n=3, cutoff=0.6, quote=False, prefix="; ")
            raise ValueError(f"parameter prefix {prefix!r} matches no trainable parameter{hint}")
    return [(n, p) for n, p in named if any(n.startswith(pre) for pre in prefixes)]


@dataclass(frozen=True, eq=False)
class RegressionBatch:
    """A fixed regression batch: inputs x [N, ...], targets y [N, D], mean squared error.

    ``loss`` is ``F.mse_loss`` (the mean over samples and outputs), the loss of devinterp's
    reduced-rank-regression tests; for a Gaussian likelihood of unit variance it is the
    negative log-likelihood up to a constant and a factor 2 / D, which leaves the learning
    coefficient unchanged. Used by the known-truth checks of the LLC (deep linear networks,
    reduced-rank regressions), and by anyone measuring a regression model.
    """

    x: torch.Tensor
    y: torch.Tensor
    n_population: int | None = None

    def __post_init__(self) -> None:
        if self.y.ndim != 2 or self.x.shape[0] != self.y.shape[0] or self.x.shape[0] < 1:
            raise ValueError(f"need x [N, ...] and y [N, D] with the same N >= 1, got shapes "
                             f"{tuple(self.x.shape)} and {tuple(self.y.shape)}")

    @property
    def n_samples(self) -> int:
        return int(self.x.shape[0])

    def subset(self, ids: torch.Tensor) -> RegressionBatch:
        """The batch of the samples ``ids``."""
        ids = ids.to(self.x.device)
        return RegressionBatch(self.x[ids], self.y[ids], self.n_population)

    def loss(self, model: nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
        if ids is None:
            return F.mse_loss(model(self.x), self.y)
        ids = ids.to(self.x.device)
        return F.mse_loss(model(self.x[ids]), self.y[ids])
