"""FM-style discrete flow-matching Euler sampler (docs/algorithm.md#fm-euler-sampler) and the masked Euler step
that the Diffusion-Forcing and Rolling-Diffusion baselines reuse.

The masked DFM velocity is u = κ'(t)/(1 − κ(t)) · (p_θ − δ_x) (paper eq. 6), so one Euler step of size h
turns a mask token into a draw from p_θ with probability h·κ'(t)/(1 − κ(t)) and never touches an
unmasked one. The mask class is excluded from p_θ (pitfall 5), and a frame's last step unmasks all
that is left (κ reaches 1 at t = 1), so no mask token survives. Unlike upstream, clean context frames
are shown at t = 1 (not 1 − h) and generated frames at their true time (floored at the training eps).

Axis letters: b batch, f frames, h w token grid, v vocabulary incl. mask.
"""

from __future__ import annotations

import torch

from worldmodel.objective.schedules import Scheduler, get_scheduler
from worldmodel.sampling.base import TIME_EPS, Denoiser, SamplerConfig
from worldmodel.sampling.draws import draw_tokens


def euler_unmask_probability(scheduler: Scheduler, t: torch.Tensor, h: torch.Tensor | float) -> torch.Tensor:
    """Probability that a mask token jumps during an Euler step of size ``h`` from time ``t``: (b f)."""
    rate = h * scheduler.kappa_derivative(t) / (1.0 - scheduler.kappa(t)).clamp(min=1e-6)
    return rate.clamp(0.0, 1.0)


def masked_euler_step(denoise: Denoiser, x: torch.Tensor, t: torch.Tensor, unmask_prob: torch.Tensor,
                      actions: torch.Tensor, mask_id: int, temperature: float,
                      generator: torch.Generator) -> torch.Tensor:
    """One denoiser call and one masked Euler jump.

    x (b f h w) long, t (b f) time shown to the model, unmask_prob (b f) jump probability of each
    frame's mask tokens, actions (b f). Returns the new (b f h w); only mask tokens can change.
    """
    logits = denoise(x, t, actions)                                              # (b f h w v)
    coin = torch.rand(x.shape, device=x.device, generator=generator)
    jump = (x == mask_id) & (coin < unmask_prob[:, :, None, None])
    if not bool(jump.any()):
        return x
    # draw only where a token jumps: FM steps move few tokens, so this skips most of the softmax work
    tokens, _ = draw_tokens(logits[jump], mask_id, temperature, generator)
    x = x.clone()
    x[jump] = tokens
    return x


def frame_times(x: torch.Tensor, t: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Time shown to the model: ``t`` floored at the training eps, and exactly 1 for frames without masks."""
    clean = ~(x == mask_id).flatten(2).any(-1)
    return torch.where(clean, torch.ones_like(t), t.clamp(min=TIME_EPS))


class EulerSampler:
    """What the masked-Euler samplers (FM, Diffusion Forcing, Rolling) hold: their config, their number of
    steps (T, or rolling's S) and the κ schedule the model was trained with (``scheduler`` overrides it)."""

    def __init__(self, config: SamplerConfig, scheduler: Scheduler | None = None) -> None:
        self.config = config
        self.steps = config.num_steps
        self.scheduler = scheduler or get_scheduler(config.masking)


class FMSampler(EulerSampler):
    """Discrete flow-matching Euler sampler with T uniform steps over t ∈ [0, 1]."""

    def nfe_per_chunk(self, frames: int) -> int:
        """T calls per chunk."""
        return self.steps

    def sample_chunk(self, denoise: Denoiser, window: torch.Tensor, actions: torch.Tensor, mask_id: int,
                     generator: torch.Generator) -> torch.Tensor:
        """Fill every mask token of ``window`` (b f h w) in exactly ``steps`` Euler steps; (b f h w) out."""
        b, f = window.shape[:2]
        steps, x = self.steps, window
        h = 1.0 / steps
        for j in range(steps):
            t = torch.full((b, f), j * h, device=x.device)
            # the last step lands on t = 1, where κ = 1: everything still masked is unmasked
            p = torch.ones_like(t) if j == steps - 1 else euler_unmask_probability(self.scheduler, t, h)
            x = masked_euler_step(denoise, x, frame_times(x, t, mask_id), p, actions, mask_id,
                                  self.config.temperature, generator)
        return x
