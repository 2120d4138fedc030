"""Rolling-Diffusion schedule re-expressed for masks (docs/algorithm.md#rolling-diffusion), a baseline.

A window of k frames holds m clean context frames and L = k − m generated frames on a time ramp: the
j-th generated frame is at t = (L − 1 − j)/L, so the newest is fully masked. Three phases:

1. init (S calls): from all-masked, every generated frame walks to its ramp value in S Euler steps;
2. N − k shifts of ⌈S/L⌉ calls each: all generated frames advance by 1/L, the oldest reaches t = 1 and
   becomes context, and the window slides by one frame (a new fully masked frame enters on the right);
3. final (S calls): every frame left in the last window walks to t = 1.

NFE = 2S + (N − k)·⌈S/(k − m)⌉ (paper A.2). Unlike upstream, which reset the per-frame t to the init
ramp at every shift (pitfall 10), each frame keeps its own time, so the t given to the model always
matches how far that frame has been unmasked; the per-shift step is 1/(L·⌈S/L⌉) so the ramp is exact.

Axis letters: b batch, f frames, h w token grid.
"""

from __future__ import annotations

import math

import torch

from envs.common.errors import SamplerSettingsError
from worldmodel.sampling.base import Denoiser
from worldmodel.sampling.fm import EulerSampler, euler_unmask_probability, frame_times, masked_euler_step


def rolling_nfe(total: int, window: int, context: int, steps: int) -> int:
    """2S + (N − k)·⌈S/(k − m)⌉."""
    return 2 * steps + (total - window) * math.ceil(steps / (window - context))


class RollingSampler(EulerSampler):
    """Rolling-Diffusion over a whole sequence (its own driver: it slides one frame at a time)."""

    def _walk(self, denoise: Denoiser, x: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, calls: int,
              finish: torch.Tensor, actions: torch.Tensor, mask_id: int, generator: torch.Generator) -> torch.Tensor:
        """``calls`` Euler steps moving frame f from ``t0[f]`` to ``t1[f]``; frames flagged ``finish``
        are fully unmasked by the last call (they reach t = 1 there). t0, t1 (f,), finish (f,) bool."""
        b = x.shape[0]
        dt = (t1 - t0) / calls
        for c in range(calls):
            t = (t0 + c * dt).expand(b, -1)                                      # exact, no float drift
            p = euler_unmask_probability(self.scheduler, t, dt)
            if c == calls - 1:
                p = torch.where(finish, torch.ones_like(p), p)
            p = torch.where(dt > 0, p, torch.zeros_like(p))                      # frames not moving stay put
            x = masked_euler_step(denoise, x, frame_times(x, t, mask_id), p, actions, mask_id,
                                  self.config.temperature, generator)
        return x

    def generate_sequence(self, denoise: Denoiser, video: torch.Tensor, actions: torch.Tensor, window: int,
                          context: int, mask_id: int, generator: torch.Generator) -> torch.Tensor:
        """Fill frames ``context..N-1`` of ``video`` (b N h w; the first ``context`` frames are given).

        ``actions`` (b N) are sliced along with each window. Returns (b N h w) with no mask token.
        """
        n = video.shape[1]
        k, m, s = window, context, self.steps
        if n < k:
            raise SamplerSettingsError(f"rolling diffusion needs total frames N >= window k; got N={n}, k={k}")
        ell = k - m
        dev = video.device
        video = video.clone()
        gen = torch.arange(k, device=dev) >= m                                    # (f,) generated columns
        ramp = torch.tensor([1.0] * m + [(ell - 1 - j) / ell for j in range(ell)], device=dev)
        zero, one = torch.where(gen, 0.0, ramp), torch.ones_like(ramp)
        oldest = torch.arange(k, device=dev) == m
        # 1. init: walk from t = 0 to the ramp in S calls
        x = self._walk(denoise, video[:, :k].clone(), zero, ramp, s, torch.zeros_like(gen), actions[:, :k],
                       mask_id, generator)
        # 2. shifts: ⌈S/L⌉ calls move every generated frame by 1/L (the oldest reaches 1), then slide
        per_shift = math.ceil(s / ell)
        for start in range(n - k):
            x = self._walk(denoise, x, ramp, torch.where(gen, ramp + 1.0 / ell, ramp), per_shift, oldest,
                           actions[:, start:start + k], mask_id, generator)
            assert not bool((x[:, m] == mask_id).any()), "rolling: the oldest generated frame is not finished"
            video[:, start:start + k] = x
            x = video[:, start + 1:start + 1 + k].clone()                         # new right frame: all masks
        # 3. final: every frame of the last window walks to t = 1 in S calls
        video[:, n - k:] = self._walk(denoise, x, ramp, one, s, gen, actions[:, n - k:], mask_id, generator)
        return video
