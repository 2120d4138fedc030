"""The weights every training loop exports: an exponential moving average (EMA) of the trained ones."""

from __future__ import annotations

import torch
import torch.nn as nn


def warmup_decay(step: int, decay: float) -> float:
    """The EMA decay at ``step``: ``decay``, lowered to (1 + step) / (10 + step) early on so that the
    first (random) weights fade fast."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """Move ``ema``'s parameters towards ``model``'s trained ones (frozen ones stay bit-identical); copy the
    buffers (e.g. a VQ codebook, itself an EMA)."""
    pairs = [(e, m) for e, m in zip(ema.parameters(), model.parameters()) if m.requires_grad]
    torch._foreach_lerp_([e for e, _ in pairs], [m for _, m in pairs], 1.0 - decay)
    for eb, mb in zip(ema.buffers(), model.buffers()):
        eb.copy_(mb)
