"""Diffusion-Forcing "pyramid" schedule, re-expressed for masks (docs/algorithm.md#diffusion-forcing-pyramid).

A baseline. Frame ``c`` of a window (columns count from the window start, context included, as
upstream) is at pyramid level ℓ = clip(r − c, 1, T) on row r, so each frame lags its left neighbour
by one step. At level ℓ a frame takes the FM Euler step from (ℓ − 1)/T to ℓ/T, and level T unmasks
what is left. Frames that have not started yet repeat the first step (upstream's minimum level 1/T);
finished frames are clean and seen at t = 1.

Upstream runs rows 0..T+k−2 (T+k−1 calls), which leaves the last frame one step short of t = 1; this
runs T+k rows, the paper's count (NFE_DF = C·(T+k)), so every frame reaches level T.

Axis letters: b batch, f frames, h w token grid.
"""

from __future__ import annotations

import torch

from worldmodel.sampling.base import Denoiser
from worldmodel.sampling.fm import EulerSampler, euler_unmask_probability, frame_times, masked_euler_step


def pyramid_levels(rows: int, frames: int, steps: int) -> torch.Tensor:
    """Integer level ℓ[r, c] = clip(r − c, 1, T) of every row and window column: (rows, frames) long."""
    r = torch.arange(rows)[:, None]
    c = torch.arange(frames)[None, :]
    return (r - c).clamp(1, steps)


class DiffusionForcingSampler(EulerSampler):
    """Pyramid schedule over one window: T + f denoiser calls for an f-frame window."""

    def nfe_per_chunk(self, frames: int) -> int:
        """T + f calls (the paper's T + k)."""
        return self.steps + frames

    def sample_chunk(self, denoise: Denoiser, window: torch.Tensor, actions: torch.Tensor, mask_id: int,
                     generator: torch.Generator) -> torch.Tensor:
        """Fill every mask token of ``window`` (b f h w) along the pyramid; (b f h w) out."""
        b, f = window.shape[:2]
        steps, x = self.steps, window
        h = 1.0 / steps
        levels = pyramid_levels(steps + f, f, steps).to(x.device)               # (rows f)
        for row in levels:
            t = ((row - 1).float() * h).expand(b, f)                            # time before this step
            p = euler_unmask_probability(self.scheduler, t, h)
            p = torch.where((row == steps).expand(b, f), torch.ones_like(p), p)  # level T: finish the frame
            x = masked_euler_step(denoise, x, frame_times(x, t, mask_id), p, actions, mask_id,
                                  self.config.temperature, generator)
        return x
