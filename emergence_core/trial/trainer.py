"""The trainer: a plain loop with one hook where probes run.

Deterministic from the seed: the model is initialised from ``seed``, the batch of step t is a
pure function of (seed, t) (see ``tasks.stream_indices``), the learning rate is a pure
function of t, and dropout is off. The state at a step boundary (weights, AdamW moments,
step, probe position, running loss, RNG states) is everything that determines the future,
so a run resumed from ``state_dict()`` continues exactly, bit for bit on CPU, as if it had
never stopped.

``precision: bf16`` runs the training forward under bfloat16 autocast (the backward follows
its dtypes) while the weights and AdamW moments stay float32: the matmuls run at the
bfloat16 rate, updates keep float32 resolution. The probes run outside autocast, so every
measure sees the float32 weights in float32. On CUDA AdamW is fused (one kernel per step
instead of several per parameter group: training at batch 192 was launch-bound); on the
CPU the default implementation is kept, so CPU runs stay bit-identical to earlier ones.
Exact resume holds for a given device and precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from emergence_core.config import TrainConfig
from emergence_core.metrics import Measure, RowBuffer
from emergence_core.model import answer_logits, build_model, count_parameters, scale_shape
from emergence_core.plan import trial_plan
from emergence_core.schedule import lr_at
from emergence_core.tasks import EncodedSet, TrialData, stream_indices
from emergence_core.tasks.data import seed_key
from emergence_core.trial.cheap_probes import run_cheap_probes

__all__ = ["STATE_FORMAT", "Divergence", "ProbeSummary", "StateMismatch", "Trainer",
           "resolve_device"]

STATE_FORMAT = 1


@dataclass(frozen=True)
class ProbeSummary:
    accuracy: dict[int, float]  # per level
    train_loss: float | None  # mean over the updates since the previous probe


class StateMismatch(ValueError):
    """A saved state belongs to a different run configuration."""


@dataclass(frozen=True)
class Divergence:
    """Training produced a non-finite number: the first update at which it did, and what."""

    step: int  # the update (counted from 0) whose loss, or the step whose weights, are bad
    quantity: str  # "training loss" or "weights (<parameter name>)"
    detected_at: int  # the probe step at which it was found

    def line(self) -> str:
        return (f"diverged: the {self.quantity} became non-finite at step {self.step} "
                f"(found at probe step {self.detected_at})")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (weights and embeddings), not on biases or LayerNorm."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """One model, one task (its levels mixed equally), one seed."""

    def __init__(self, cfg: TrainConfig, *, device: str | torch.device | None = None) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device) if device is None else torch.device(device)
        self.data = TrialData(cfg.task, cfg.levels, cfg.effective_data_seed,
                              train_size=cfg.train_size, train_fraction=cfg.train_fraction,
                              diag_size=cfg.diag_size, level_params=cfg.level_params)
        self.shape = scale_shape(cfg.scale)
        self.model = build_model(self.shape, self.data.vocab.size, self.data.seq_len,
                                 seed=cfg.seed, init_std=cfg.init_std).to(self.device)
        self.model.train()
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, cfg.weight_decay),
                                           lr=cfg.lr, betas=cfg.betas,
                                           fused=True if self.device.type == "cuda" else None)
        self.probe_steps = list(trial_plan(cfg).probe_steps)
        self.step = 0  # optimizer updates made so far
        self.next_probe = 0  # index into probe_steps of the next probe to run
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._loss_count = 0
        # the first update whose loss was non-finite (-1: none); kept on the device, read once
        # per probe, so watching for divergence costs no host synchronisation per step
        self._bad_step = torch.full((), -1, dtype=torch.int64, device=self.device)
        self._train = [enc.to(self.device) for enc in self.data.train]
        self._diag = [enc.to(self.device) for enc in self.data.diag]
        n = len(self._train)
        self._per_level = [cfg.batch_size // n + (i < cfg.batch_size % n) for i in range(n)]
        self._stream_keys = [seed_key("batches", cfg.task, ld.spec.level, cfg.seed)
                             for ld in self.data.levels]
        self._stream_cache: list[dict] = [{} for _ in range(n)]

    @property
    def n_params(self) -> int:
        return count_parameters(self.model)

    @property
    def done(self) -> bool:
        return self.step >= self.cfg.steps and self.next_probe >= len(self.probe_steps)

    # -- the loop ----------------------------------------------------------------------------

    def batch(self, step: int) -> list[EncodedSet]:
        """The training batch of update ``step``: equal shares of every level, per level."""
        parts = []
        for enc, b, key, cache in zip(self._train, self._per_level, self._stream_keys,
                                      self._stream_cache, strict=True):
            ids = stream_indices(len(enc), step * b, b, key, cache)
            parts.append(enc.select(ids))
        return parts

    def train_step(self) -> torch.Tensor:
        """One AdamW update; returns the batch loss (mean cross-entropy per answer token)."""
        cfg = self.cfg
        lr = lr_at(self.step, lr=cfg.lr, steps=cfg.steps, warmup_steps=cfg.warmup_steps,
                   min_lr_ratio=cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # One forward per level (each has its own sequence length: no padding), one backward.
        total = None
        n_tokens = 0
        for part in self.batch(self.step):
            with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                enabled=cfg.precision == "bf16"):
                logits = answer_logits(self.model, part.inputs, part.positions)  # [b, A, V]
            # the loss in float32 whatever the forward's precision (a no-op for fp32)
            ce = F.cross_entropy(logits.float().flatten(0, 1), part.targets.flatten(),
                                 reduction="sum")
            total = ce if total is None else total + ce
            n_tokens += part.targets.numel()
        loss = total / n_tokens  # mean cross-entropy per answer token
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self._loss_sum += loss.detach().double()
        self._loss_count += 1
        first = (self._bad_step < 0) & ~torch.isfinite(loss.detach())
        self._bad_step = torch.where(first, self.step, self._bad_step)
        self.step += 1
        return loss.detach()

    def divergence(self) -> Divergence | None:
        """A non-finite training loss since the start, or non-finite weights now, if any."""
        bad = int(self._bad_step)
        if bad >= 0:
            return Divergence(bad, "training loss", self.step)
        for name, p in self.model.named_parameters():
            if not bool(torch.isfinite(p).all()):
                return Divergence(self.step, f"weights ({name})", self.step)
        return None

    def run(self, on_probe: Callable[[Trainer], bool | None],
            should_stop: Callable[[], bool] | None = None) -> None:
        """Train to ``cfg.steps``, calling ``on_probe(self)`` at every probe step not yet run.

        ``on_probe`` returning True, or ``should_stop()`` turning true between updates, ends
        the loop early at a step boundary, where the state is consistent to save.
        """
        while True:
            if (self.next_probe < len(self.probe_steps)
                    and self.step == self.probe_steps[self.next_probe]):
                self.next_probe += 1  # before the hook: a state saved in it counts this probe
                if on_probe(self):
                    return
            if self.step >= self.cfg.steps or (should_stop is not None and should_stop()):
                return
            self.train_step()

    def probe(self, rows: RowBuffer) -> ProbeSummary:
        """Add this step's cheap measures, the running training loss and the lr to ``rows``."""
        if self.next_probe == 1:  # the first probe: the diagnostic sets' baselines, once
            self._baselines(rows)
        acc = run_cheap_probes(self.model, self.data, self.cfg.probe, self.step, rows,
                               diag=self._diag)
        train_loss = None
        if self._loss_count:
            train_loss = float(self._loss_sum) / self._loss_count
            rows.add(self.step, Measure.TRAIN_LOSS, train_loss)
        cfg = self.cfg
        rows.add(self.step, Measure.LR, lr_at(max(self.step - 1, 0), lr=cfg.lr, steps=cfg.steps,
                                              warmup_steps=cfg.warmup_steps,
                                              min_lr_ratio=cfg.min_lr_ratio))
        self._loss_sum.zero_()
        self._loss_count = 0
        return ProbeSummary(acc, train_loss)

    def _baselines(self, rows: RowBuffer) -> None:
        """Chance rates and sizes of each level's diagnostic set (``tasks.chance``)."""
        for ld in self.data.levels:
            lv, chance = ld.spec.level, self.data.chance[ld.spec.level]
            rows.add(self.step, Measure.CHANCE, chance.accuracy, level=lv)
            rows.add(self.step, Measure.LOGPROB_CHANCE, chance.logprob, level=lv)
            rows.add(self.step, Measure.DIAG_SIZE, len(ld.diag_idx), level=lv)
            rows.add(self.step, Measure.DIAG_ASKED, self.data.diag_size, level=lv)

    # -- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": STATE_FORMAT,
            "fingerprint": self.cfg.fingerprint(),
            "step": self.step,
            "next_probe": self.next_probe,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loss_sum": self._loss_sum.detach().cpu(),
            "loss_count": self._loss_count,
            "rng": rng,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise StateMismatch(f"state format {state.get('format')!r} is not {STATE_FORMAT}")
        if state["fingerprint"] != self.cfg.fingerprint():
            raise StateMismatch("the saved state belongs to a different configuration "
                                f"({state['fingerprint']} != {self.cfg.fingerprint()})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.next_probe = int(state["next_probe"])
        self._loss_sum = state["loss_sum"].to(self.device, torch.float64)
        self._loss_count = int(state["loss_count"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
