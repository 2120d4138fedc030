"""How many tokens each sampling step unmasks, and the inverse of the masking schedule κ.

MGM unmasks ``n_i`` tokens at step i (docs/algorithm.md#unmask-count-schedules). Upstream's
``adap_scheduler`` spreads the count over *all* window tokens, context included, so its loop runs out
early (pitfall 3); here the count is spread over each sample's *masked* tokens only, so a chunk always
takes exactly T steps, and the bookkeeping is per sample (pitfall 4).

Axis letters: b batch, i step.
"""

from __future__ import annotations

import math

import torch

from envs.common.errors import SamplerSettingsError
from worldmodel.objective.schedules import Scheduler

COUNT_MODES = ("arccos", "cosine", "linear", "square", "root")

# γ(r): fraction of the masked tokens unmasked once a fraction r of the steps is done (γ(0)=0, γ(1)=1).
_GAMMA = {
    "cosine": lambda r: 1.0 - torch.cos(r * math.pi / 2),      # MaskGIT's cosine mask schedule
    "linear": lambda r: r,                                      # the same count every step
    "square": lambda r: r * r,
    "root": lambda r: r.sqrt(),
}


def step_weights(steps: int, mode: str = "arccos") -> torch.Tensor:
    """Relative share of each step (i), float64.

    ``arccos`` is upstream's ``adap_scheduler``: w_i = arccos(1 − x_i)/(π/2) at x = linspace(0, 1, T),
    few tokens early and many late (its first weight is 0, so step 1 unmasks a single token). The
    other modes give step i the share γ(i/T) − γ((i−1)/T) of a cumulative schedule γ.
    """
    if mode not in COUNT_MODES:
        raise SamplerSettingsError(f"unknown unmask-count schedule {mode!r}; choose one of {', '.join(COUNT_MODES)}")
    if steps < 1:
        raise SamplerSettingsError(f"steps must be >= 1, got {steps}")
    if steps == 1:
        return torch.ones(1, dtype=torch.float64)
    if mode == "arccos":
        return torch.arccos(1.0 - torch.linspace(0.0, 1.0, steps, dtype=torch.float64)) / (math.pi / 2)
    return torch.diff(_GAMMA[mode](torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)))


def unmask_counts(num_masked: torch.Tensor, steps: int, mode: str = "arccos") -> torch.Tensor:
    """Tokens to unmask per step for each sample: (b,) long -> (b i) long.

    Every row sums exactly to its ``num_masked``; when a sample has at least ``steps`` masked tokens,
    every step unmasks at least one (upstream's "0 becomes 1" rule), and the rest is split in
    proportion to :func:`step_weights` by cumulative rounding (so the total is exact).
    """
    w = step_weights(steps, mode).to(num_masked.device)                  # the samples' device (a GPU's, say)
    frac = torch.cumsum(w, 0) / w.sum()                                   # (i,) cumulative share, ends at 1
    m = num_masked.to(torch.float64).clamp(min=0)
    floor = (m >= steps).to(torch.float64) * 1.0                          # one token per step when possible
    rest = m - floor * steps
    cum = torch.round(rest[:, None] * frac[None, :])                      # (b i) cumulative count of the rest
    cum[:, -1] = rest                                                      # exact total despite rounding
    counts = torch.diff(cum, dim=1, prepend=torch.zeros_like(cum[:, :1])) + floor[:, None]
    return counts.to(torch.long)


class KappaInverse:
    """t = κ⁻¹(u): the per-frame time whose keep-probability is ``u`` (the unmasked fraction).

    Tabulated once on a fine grid and inverted by ``searchsorted`` + linear interpolation, so it works
    for any monotone scheduler and costs a handful of tensor ops per call.
    """

    def __init__(self, scheduler: Scheduler, points: int = 4097) -> None:
        t = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
        k = torch.cummax(scheduler.kappa(t), 0).values                     # guard against flat/clamped ends
        k[0], k[-1] = 0.0, 1.0                                             # u = 0 -> t = 0, u = 1 -> t = 1
        self._t, self._k = t.float(), k.float()

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """Elementwise κ⁻¹ of ``u`` in [0, 1]; same shape, float32."""
        if self._k.device != u.device:
            self._t, self._k = self._t.to(u.device), self._k.to(u.device)
        u = u.float().clamp(0.0, 1.0)
        i = torch.searchsorted(self._k, u.contiguous()).clamp(1, self._k.numel() - 1)
        k0, k1 = self._k[i - 1], self._k[i]
        w = ((u - k0) / (k1 - k0).clamp(min=1e-12)).clamp(0.0, 1.0)
        return torch.lerp(self._t[i - 1], self._t[i], w)
