"""Masking schedules κ(t): the probability that a token is *unmasked* at per-frame time t.

t = 0 is fully masked, t = 1 is clean, and the mask ratio is 1 − κ(t) (docs/algorithm.md#schedulers).
Every scheduler also gives κ'(t), which the flow-matching Euler sampler needs for its jump rate.
The sigmoid scheduler (the paper's) is the default; cosine and linear are the configs' alternatives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from envs.common.errors import ConfigError


@dataclass(frozen=True)
class SigmoidScheduler:
    """Normalised sigmoid κ(t) of the upstream code: κ(0) ≈ 0 (clamped to ``clip_min``), κ(1) = 1.

    κ(t) = (σ((t(e−s)+s)/τ) − σ(s/τ)) / (σ(e/τ) − σ(s/τ)), clamped to [clip_min, 1].
    """

    start: float = -3.0
    end: float = 3.0
    tau: float = 1.0
    clip_min: float = 1e-5

    def _norm(self) -> tuple[float, float]:
        lo = 1.0 / (1.0 + math.exp(-self.start / self.tau))
        hi = 1.0 / (1.0 + math.exp(-self.end / self.tau))
        return lo, hi - lo

    def kappa(self, t: torch.Tensor) -> torch.Tensor:
        """κ(t), elementwise, same shape as ``t``."""
        lo, span = self._norm()
        u = (t * (self.end - self.start) + self.start) / self.tau
        return ((torch.sigmoid(u) - lo) / span).clamp(self.clip_min, 1.0)

    def kappa_derivative(self, t: torch.Tensor) -> torch.Tensor:
        """dκ/dt, elementwise (of the unclamped curve)."""
        _, span = self._norm()
        s = torch.sigmoid((t * (self.end - self.start) + self.start) / self.tau)
        return (self.end - self.start) / self.tau * s * (1 - s) / span


@dataclass(frozen=True)
class CosineScheduler:
    """κ(t) = 1 − cos(πt/2): slow unmasking early, fast late."""

    def kappa(self, t: torch.Tensor) -> torch.Tensor:
        """κ(t), elementwise."""
        return 1.0 - torch.cos(0.5 * math.pi * t)

    def kappa_derivative(self, t: torch.Tensor) -> torch.Tensor:
        """dκ/dt, elementwise."""
        return 0.5 * math.pi * torch.sin(0.5 * math.pi * t)


@dataclass(frozen=True)
class LinearScheduler:
    """κ(t) = t."""

    def kappa(self, t: torch.Tensor) -> torch.Tensor:
        """κ(t), elementwise."""
        return t.clone()

    def kappa_derivative(self, t: torch.Tensor) -> torch.Tensor:
        """dκ/dt = 1, elementwise."""
        return torch.ones_like(t)


Scheduler = SigmoidScheduler | CosineScheduler | LinearScheduler

SCHEDULERS: dict[str, type] = {"sigmoid": SigmoidScheduler, "cosine": CosineScheduler, "linear": LinearScheduler}


def get_scheduler(name: str) -> Scheduler:
    """Build the scheduler called ``name`` (``sigmoid`` | ``cosine`` | ``linear``)."""
    if name not in SCHEDULERS:
        raise ConfigError(f"unknown masking scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name]()


def inverse_kappa(scheduler: Scheduler, keep: torch.Tensor | float, iters: int = 50) -> torch.Tensor:
    """The time t with κ(t) = ``keep`` (elementwise, by bisection on [0, 1]; κ is increasing)."""
    target = torch.as_tensor(keep, dtype=torch.float64)
    lo, hi = torch.zeros_like(target), torch.ones_like(target)
    for _ in range(iters):
        mid = (lo + hi) / 2
        below = scheduler.kappa(mid) < target
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return ((lo + hi) / 2).float()
