"""The settings of the expensive measures: frozen dataclasses whose fields sweep files set.

They live apart from the measures (outside the ``measures`` package, whose import loads
torch), so that validating a sweep file, ``emerge status`` and the dry run never import it.
Each measure's module re-exports its own, and states its meaning: ``HessianSettings``
(``hessian``), ``GradRankSettings`` (``gradrank``), ``LLCSettings`` (``sgld``, ``llc``) and
the LLC pilot's ``CalibrationSettings`` (``llc_calibration``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["N_BETA_OF", "SAMPLERS", "CalibrationSettings", "GradRankSettings",
           "HessianSettings", "LLCSettings", "LanczosMethod", "Method", "numbers"]

LanczosMethod = Literal["torch", "arpack"]
Method = Literal["auto", "vmap", "loop"]
SAMPLERS = ("sgld", "rmsprop")
N_BETA_OF = ("train", "batch", "minibatch")


@dataclass(frozen=True)
class HessianSettings:
    """How to estimate lambda_max and the trace.

    ``lanczos_tol`` is ARPACK's stopping criterion ||H v - theta v|| <= tol * |theta|, and
    the torch Lanczos stops on the same test; for a symmetric H an eigenvalue lies within
    ||H v - theta v|| of theta, so the relative error of the returned lambda_max is at most
    ``lanczos_tol`` (and in practice far smaller: the error of a Ritz value is quadratic in
    the residual once the top eigenvalue is isolated).
    """

    lanczos_tol: float = 1e-3
    lanczos_ncv: int = 10  # Lanczos basis size before a restart (capped at P)
    max_hvps: int = 400  # Lanczos budget (exact for torch; ARPACK counts restarts, not products)
    lanczos: LanczosMethod = "torch"  # basis on the model's device; "arpack": scipy on the CPU
    trace_probes: int = 64  # Rademacher probes for Hutchinson; 0 skips the trace
    params: tuple[str, ...] | None = None  # parameter-name prefixes; None: all trainable
    cache_graph: bool = True  # keep the first-gradient graph between HVPs (see HessianOperator)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.lanczos_tol < 1:
            raise ValueError(f"lanczos_tol must be in (0, 1), got {self.lanczos_tol}")
        if self.max_hvps < 1 or self.trace_probes < 0:
            raise ValueError(f"max_hvps must be >= 1 and trace_probes >= 0, got "
                             f"{self.max_hvps} and {self.trace_probes}")
        if self.lanczos_ncv < 2:
            raise ValueError(f"lanczos_ncv must be >= 2, got {self.lanczos_ncv}")
        if self.lanczos not in ("torch", "arpack"):
            raise ValueError(f"lanczos must be 'torch' or 'arpack', got {self.lanczos!r}")


@dataclass(frozen=True)
class GradRankSettings:
    n_samples: int = 64  # N: a seeded random subset of the batch (all of it when smaller)
    params: tuple[str, ...] | None = None  # parameter-name prefixes; None: all trainable
    first_k: int | None = None  # then keep only the first K flattened entries (study: 50_000)
    memory_budget_bytes: int = 2 * 1024**3  # J_c and a group's gradients: half each
    method: Method = "auto"
    jackknife: bool = True
    # the subset (CPU generator) and the Fisher's labels (a generator on the model's device,
    # seed + 1: the same seed draws other labels on another device type)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_samples < 2:
            raise ValueError(f"n_samples must be >= 2, got {self.n_samples}")
        if self.first_k is not None and self.first_k < 1:
            raise ValueError(f"first_k must be >= 1 or None, got {self.first_k}")
        if self.memory_budget_bytes < 1:
            raise ValueError(f"memory_budget_bytes must be positive, got "
                             f"{self.memory_budget_bytes}")
        if self.method not in ("auto", "vmap", "loop"):
            raise ValueError(f"method must be 'auto', 'vmap' or 'loop', got {self.method!r}")


@dataclass(frozen=True)
class LLCSettings:
    # eps and gamma: None derives them from the checkpoint's stiffness S = n_beta * lambda_max
    # (eps = 0.05 / S, gamma = 1e-3 * S, see llc_calibration); the default procedure (the
    # calibration) chooses them per trial and fixes numbers
    eps: float | None = None  # SGLD step size
    gamma: float | None = None  # localisation strength
    n_chains: int = 4
    n_draws: int = 200  # per chain, burn-in included
    n_burnin: int = 100  # first draws of each chain excluded from the mean
    n_beta: float | None = None  # inverse temperature; None: see n_beta_of
    n_beta_of: str = "batch"  # n_beta = m / log m, m: "batch", "train" or "minibatch"
    minibatch_size: int | None = 32  # None (or >= n): full batch
    rhat_max: float = 1.1
    seed: int = 0
    sampler: str = "sgld"  # "sgld", or "rmsprop" (preconditioned, see the module docstring)
    rms_alpha: float = 0.99  # RMSProp's running-average decay (devinterp's default)
    rms_eps: float = 0.1  # RMSProp's floor under sqrt(V) (devinterp's default)
    rms_freeze: bool = True  # freeze G after the first half of the burn-in (exact sampling)
    rms_bias_correction: bool = True  # V / (1 - alpha^t); False: devinterp's running mean
    # all chains as one vmapped computation (True), one at a time (False), or None: batched
    # on an accelerator, one at a time on the CPU, where batching measured 1.2x slower
    batch_chains: bool | None = None
    max_rise: float | None = None  # the basin bound on the loss rise (set by the calibration)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        if self.n_beta_of not in N_BETA_OF:
            raise ValueError(f"n_beta_of must be one of {', '.join(N_BETA_OF)}, got "
                             f"{self.n_beta_of!r}")
        if not 0 <= self.rms_alpha < 1 or not self.rms_eps > 0:
            raise ValueError(f"need 0 <= rms_alpha < 1 and rms_eps > 0, got "
                             f"{self.rms_alpha}, {self.rms_eps}")
        if (self.eps is not None and not self.eps > 0) or (self.gamma is not None
                                                            and self.gamma < 0):
            raise ValueError(f"need eps > 0 and gamma >= 0, got eps={self.eps}, gamma={self.gamma}")
        if self.n_chains < 1 or not 0 <= self.n_burnin < self.n_draws:
            raise ValueError(f"need n_chains >= 1 and 0 <= n_burnin < n_draws, got "
                             f"{self.n_chains}, {self.n_burnin}, {self.n_draws}")
        if self.n_beta is not None and not self.n_beta > 0:
            raise ValueError(f"n_beta must be positive or None, got {self.n_beta}")
        if self.max_rise is not None and not self.max_rise > 0:
            raise ValueError(f"max_rise must be positive or None, got {self.max_rise}")
        if self.minibatch_size is not None and self.minibatch_size < 1:
            raise ValueError(f"minibatch_size must be >= 1 or None, got {self.minibatch_size}")


@dataclass(frozen=True)
class CalibrationSettings:
    steps: tuple[float, ...] = (0.2, 0.1, 0.05, 0.025, 0.0125, 0.00625)  # eps * n_beta * l_max
    localisations: tuple[float, ...] = (1e-2, 1e-3, 1e-4)  # gamma / (n_beta * lambda_max)
    max_rise_fraction: float = 0.25
    max_halving_change: float = 0.1
    # check 3 is decided once halving_z x the Monte Carlo error of the change is within
    # max_halving_change; until then both runs' kept draws double (up to max_draws), and
    # the chosen setting keeps the length that decided it. None: the point values alone
    halving_z: float | None = 2.0
    max_localisation_change: float = 0.05
    # the relaxation budget, off by default (0: the settings' own lengths); see the module
    relaxation_burnin: float = 0.0  # burn-in, in relaxation times tau = 1 / (c * k)
    relaxation_kept: float = 0.0  # kept draws, in tau
    max_draws: int = 20_000  # per chain; a point needing more is not run
    # the spectral budget: chains doubled until the quadratic model of the checkpoint's
    # measured Hessian spectrum predicts at most this shortfall (None: off); see the module
    max_shortfall: float | None = None
    spectrum_probes: int = 4  # stochastic Lanczos quadrature: probes
    spectrum_steps: int = 40  # and Lanczos steps per probe
    # the localised tier, when no gamma-independent setting passes: the LLC at the stated
    # localisation gamma = localised * n_beta * lambda_max (None: no such tier), its chains
    # long enough for gamma to act (burn-in and kept draws each >= localised_relaxation tau)
    localised: float | None = 0.1
    localised_relaxation: float = 2.0
    # lambda_max by Lanczos on at most this many samples of the batch, evenly spaced (levels
    # in equal shares); None: all. A Hessian-vector product costs the whole batch (at
    # n = 4096 the pilot's 80 products took ~10 min on a core); a subset's lambda_max is the
    # larger (sampling noise: 474 on 512 samples of ADD s0 against 276 on 4,096), so eps = c / S
    # is the more cautious and gamma = k * S the stronger
    stiffness_samples: int | None = None
    # the stiffness is S = n_beta * max(lambda_max at w*, lambda_max where the chains go): the
    # latter at the point along a random direction where the batch loss has risen by this
    # fraction of the basin bound (check 2's max_rise), the edge of what the basin check
    # accepts. At a checkpoint trained to near-zero loss the curvature at w* vanishes with the
    # softmax's saturation (REV s0: 0.23 at w*, 84 at the bound), and a grid set by it takes
    # steps the chains cannot hold once they rise. None: lambda_max at w* only
    stiffness_rise: float | None = 1.0

    def chain_length(self, step: float, localisation: float, settings: LLCSettings,
                     relaxation: tuple[float, float] | None = None) -> tuple[int, int]:
        """(n_draws, n_burnin) per chain at (c, k): the module's relaxation budget (burn-in
        and kept draws in relaxation times tau = 1 / (c k); ``relaxation`` overrides the
        settings' pair), never shorter than ``settings`` asks."""
        tau = 1.0 / (step * localisation)
        r_burn, r_kept = relaxation if relaxation is not None \
            else (self.relaxation_burnin, self.relaxation_kept)
        burnin = max(settings.n_burnin, math.ceil(r_burn * tau))
        kept = max(settings.n_draws - settings.n_burnin, math.ceil(r_kept * tau))
        return burnin + kept, burnin

    def __post_init__(self) -> None:
        for name, grid in (("steps", self.steps), ("localisations", self.localisations)):
            g = tuple(grid)
            if len(g) < 2 or any(not v > 0 for v in g) \
                    or any(b >= a for a, b in itertools.pairwise(g)):
                raise ValueError(f"{name} needs at least two positive values, largest first, "
                                 f"got {list(g)}")
        if any(abs(b / a - 0.5) > 1e-9 for a, b in itertools.pairwise(self.steps)):
            raise ValueError(f"steps must halve from one to the next (the discretisation "
                             f"check compares c with c/2), got {list(self.steps)}")
        if not 0 < self.max_rise_fraction <= 1 or not self.max_halving_change > 0 \
                or not self.max_localisation_change > 0:
            raise ValueError("need 0 < max_rise_fraction <= 1 and positive change tolerances")
        if self.max_shortfall is not None and not 0 < self.max_shortfall < 1:
            raise ValueError(f"max_shortfall must be in (0, 1) or None, got {self.max_shortfall}")
        if self.spectrum_probes < 1 or self.spectrum_steps < 2:
            raise ValueError(f"need spectrum_probes >= 1 and spectrum_steps >= 2, got "
                             f"{self.spectrum_probes}, {self.spectrum_steps}")
        if self.halving_z is not None and not self.halving_z > 0:
            raise ValueError(f"halving_z must be positive (standard errors) or None, got "
                             f"{self.halving_z}")
        if self.stiffness_rise is not None and not 0 < self.stiffness_rise <= 1:
            raise ValueError(f"stiffness_rise must be in (0, 1] (a fraction of the basin "
                             f"bound) or None, got {self.stiffness_rise}")
        if self.localised is not None and not 0 < self.localised <= 0.5:
            raise ValueError(f"localised must be in (0, 0.5] (gamma / (n_beta lambda_max); at "
                             f"0.5 the sharpest direction keeps 2/3 of its share) or None, got "
                             f"{self.localised}")
        if not self.localised_relaxation > 0:
            raise ValueError(f"localised_relaxation must be positive, got "
                             f"{self.localised_relaxation}")
        if not self.relaxation_burnin >= 0 or not self.relaxation_kept >= 0 \
                or self.max_draws < 2:
            raise ValueError(f"need relaxation_burnin >= 0, relaxation_kept >= 0 and "
                             f"max_draws >= 2, got {self.relaxation_burnin}, "
                             f"{self.relaxation_kept}, {self.max_draws}")


def numbers(cls: type, fields: dict[str, Any]) -> dict[str, Any]:
    """YAML 1.1 reads ``1e-6`` (no dot) as a string: numbers for the fields whose default is
    a float, or a tuple of floats; ValueError names a field that is not a number."""
    out = dict(fields)
    for f in dataclasses.fields(cls):
        v, d = out.get(f.name), f.default
        try:  # a float field, or an optional one ("float | None"), read from YAML
            if isinstance(v, str) and (isinstance(d, float) or str(f.type).startswith("float")):
                out[f.name] = float(v)
            elif isinstance(d, tuple) and d and isinstance(d[0], float) \
                    and isinstance(v, list | tuple):
                out[f.name] = tuple(float(x) for x in v)
        except ValueError:
            raise ValueError(f"{f.name} must be a number, got {v!r}") from None
    return out
