"""MGM-style confidence sampling (docs/algorithm.md#mgm-confidence-sampling), rebuilt without the upstream bugs.

Each of the T steps: call the denoiser on the *current* window (upstream's ``MGMSampler.sample`` fed
a frozen copy of the input, pitfall 1), draw one token per position from softmax(logits/τ) with the
mask class excluded (pitfall 5), score each draw by its log-probability (optionally plus annealed
Gumbel noise), and commit the ``n_i`` most confident draws among each sample's still-masked
positions. ``n_i`` follows the arccos schedule over the masked tokens only (pitfall 3), per sample
(pitfall 4), so every token is unmasked after exactly T calls.

Time given to the model: ``mgm`` passes each frame's true time t_f = κ⁻¹(unmasked fraction of f)
(context frames are fully unmasked, so t = 1); ``mgm_tfree`` passes t = 1 for every frame, the
paper's training-free trick (what upstream does with ``time_cond = 1``).

Axis letters: b batch, f frames, h w token grid, p positions (f·h·w), v vocabulary incl. mask.
"""

from __future__ import annotations

import torch
from einops import rearrange

from worldmodel.objective.schedules import Scheduler, get_scheduler
from worldmodel.sampling.base import TIME_EPS, Denoiser, SamplerConfig
from worldmodel.sampling.draws import draw_tokens, gumbel_noise, select_top
from worldmodel.sampling.unmask_schedule import KappaInverse, unmask_counts


class MGMSampler:
    """Masked-generative (MaskGIT-style) sampler; ``config.name`` is ``mgm`` or ``mgm_tfree``."""

    def __init__(self, config: SamplerConfig, scheduler: Scheduler | None = None) -> None:
        self.config = config
        self.steps = config.num_steps
        self.time_free = config.name == "mgm_tfree"
        self.kappa_inverse = KappaInverse(scheduler or get_scheduler(config.masking))

    def nfe_per_chunk(self, frames: int) -> int:
        """T calls per chunk, whatever the window length."""
        return self.steps

    def frame_times(self, x: torch.Tensor, mask_id: int) -> torch.Tensor:
        """Per-frame time the model sees: (b f h w) -> (b f) float."""
        b, f = x.shape[:2]
        if self.time_free:
            return torch.ones(b, f, device=x.device)
        unmasked = (x != mask_id).flatten(2).float().mean(-1)
        return self.kappa_inverse(unmasked).clamp_(min=TIME_EPS)

    def sample_chunk(self, denoise: Denoiser, window: torch.Tensor, actions: torch.Tensor, mask_id: int,
                     generator: torch.Generator) -> torch.Tensor:
        """Fill every mask token of ``window`` (b f h w) in exactly ``steps`` denoiser calls.

        ``actions`` (b f) are passed through. Returns a new (b f h w) long tensor with no mask token.
        """
        b, f, h, w = window.shape
        cfg, steps = self.config, self.steps
        x = rearrange(window, "b f h w -> b (f h w)").clone()
        masked = x == mask_id                                                   # (b p) still to fill
        counts = unmask_counts(masked.sum(1), steps, cfg.schedule).to(x.device)  # (b i) per sample
        for i in range(steps):
            grid = rearrange(x, "b (f h w) -> b f h w", f=f, h=h, w=w)
            logits = denoise(grid, self.frame_times(grid, mask_id), actions)   # (b f h w v)
            # draw only where still masked (about 2/3 of the positions over a frame's steps)
            where = masked.nonzero(as_tuple=True)
            drawn, logp = draw_tokens(rearrange(logits, "b f h w v -> b (f h w) v")[where], mask_id,
                                      cfg.temperature, generator)               # (n,), (n,)
            tokens = x.clone()
            tokens[where] = drawn
            conf = torch.full(x.shape, float("-inf"), device=x.device)
            conf[where] = logp
            if cfg.gumbel > 0:
                # MaskGIT choice-temperature annealing: noisy ranking early, greedy at the end
                anneal = cfg.gumbel * (1.0 - i / max(steps - 1, 1))
                conf = conf + anneal * gumbel_noise(conf.shape, conf.device, generator)
            chosen = select_top(conf, counts[:, i]) & masked
            x = torch.where(chosen, tokens, x)
            masked &= ~chosen
        assert not bool(masked.any()), "MGM left masked tokens: unmask counts do not sum to the masked count"
        return rearrange(x, "b (f h w) -> b f h w", f=f, h=h, w=w)
