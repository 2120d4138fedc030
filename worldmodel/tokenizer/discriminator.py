"""The adversarial part of tokenizer training: a PatchGAN trained from scratch with the hinge loss.

After ``disc_start`` steps the generator's loss gains ``−D(reconstruction)``, scaled as in VQGAN by
:func:`adaptive_weight` so that it never dominates the reconstruction loss.

Axis letters: b batch, y x pixel rows/columns.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PatchDiscriminator(nn.Module):
    """PatchGAN from scratch: frames (b, 3, y, x) in [-1, 1] -> real/fake logits (b, 1, y/8, x/8)."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.GroupNorm(8, 2 * w), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.GroupNorm(8, 4 * w), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * w, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def adaptive_weight(rec: torch.Tensor, gen: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """VQGAN's balance: ||∇_last rec|| / ||∇_last gen||, so the adversarial term never dominates."""
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    g_gen = torch.autograd.grad(gen, last, retain_graph=True)[0]
    return (g_rec.norm() / (g_gen.norm() + 1e-4)).clamp(0.0, 1e3).detach()


def discriminator_step(disc: PatchDiscriminator, opt: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor,
                       grad_clip: float) -> float:
    """One hinge-loss update of ``disc`` on real frames and (detached) reconstructions (b, 3, y, x); returns
    the loss: real logits are pushed above +1, fake ones below −1."""
    disc.requires_grad_(True)
    loss = F.relu(1 - disc(real)).mean() + F.relu(1 + disc(fake)).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(disc.parameters(), grad_clip)
    opt.step()
    return loss.item()
