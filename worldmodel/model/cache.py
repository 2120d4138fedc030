"""Sliding key/value cache for frame-by-frame rollouts of a causal Latte.

Axis letters: b batch (rollouts), p positions per frame, H heads, n cache slots, e head width.

Each temporal layer keeps the keys/values of the last ``slots`` = max_frames − 1 finished frames,
right-aligned in time (slot n − 1 is the newest frame). Keys are stored already rotated by their frame's
absolute index in its rollout (``positions`` counts the frames each rollout has committed), and a new
frame's query is rotated by its own index: rotary attention depends only on the distance between the
two, so the cache slides forever without re-rotating or copying its keys on every pass (the cost that
dominated batched dreams). ``valid`` marks filled slots per rollout, which lets vector envs reset one
rollout without touching the others. A model with heading rotary also rotates keys by their frame's
heading; ``headings`` keeps each rollout's heading at its newest frame, which the next frame turns from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LatteCache:
    """Per-layer rotated keys and values (b p H n e), the slot validity mask (b n), each rollout's
    next frame index (b,) long, the rotary position of the frame it will commit next, and the heading of
    its newest frame (b,) float64 degrees (zeros for a model without heading rotary)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: torch.Tensor
    positions: torch.Tensor
    headings: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.headings is None:
            self.headings = torch.zeros(self.valid.shape[0], dtype=torch.float64, device=self.valid.device)

    @classmethod
    def empty(cls, layers: int, batch: int, positions: int, heads: int, head_dim: int, slots: int,
              device: torch.device, dtype: torch.dtype = torch.float32) -> LatteCache:
        """A cache with every slot empty."""
        shape = (batch, positions, heads, slots, head_dim)
        return cls([torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)],
                   [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)],
                   torch.zeros(batch, slots, dtype=torch.bool, device=device),
                   torch.zeros(batch, dtype=torch.long, device=device))

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    @property
    def slots(self) -> int:
        return self.valid.shape[1]

    @property
    def num_frames(self) -> torch.Tensor:
        """Cached frames per rollout, (b,) long."""
        return self.valid.sum(dim=1)

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values) of temporal layer ``i``, each (b p H n e)."""
        return self.keys[i], self.values[i]

    def append(self, kv: list[tuple[torch.Tensor, torch.Tensor]], headings: torch.Tensor | None = None) -> None:
        """Push one finished frame's (rotated k, v), each (b p H 1 e) per layer, and its ``headings`` (b,)
        (None: unchanged); the oldest slot falls out."""
        self.positions = self.positions + 1
        if headings is not None:
            self.headings = headings.to(self.headings)
        if self.slots == 0:
            return
        for i, (k, v) in enumerate(kv):
            self.keys[i] = torch.cat([self.keys[i][:, :, :, 1:], k.to(self.keys[i].dtype)], dim=3)
            self.values[i] = torch.cat([self.values[i][:, :, :, 1:], v.to(self.values[i].dtype)], dim=3)
        self.valid = torch.cat([self.valid[:, 1:], self.valid.new_ones(self.batch_size, 1)], dim=1)

    def reset(self, mask: torch.Tensor | None = None) -> None:
        """Forget the history of the rollouts where ``mask`` (b,) bool is True (all when None)."""
        if mask is None:
            self.valid = torch.zeros_like(self.valid)
            self.positions = torch.zeros_like(self.positions)
            self.headings = torch.zeros_like(self.headings)
            return
        mask = mask.to(self.valid.device)
        self.valid = self.valid & ~mask[:, None]
        self.positions = torch.where(mask, 0, self.positions)
        self.headings = torch.where(mask, 0.0, self.headings)

    def splice(self, rows: torch.Tensor, other: LatteCache) -> None:
        """Replace the rollouts flagged in ``rows`` (b,) bool by those of ``other`` (one per flagged row)."""
        for i in range(len(self.keys)):
            self.keys[i][rows] = other.keys[i].to(self.keys[i].dtype)
            self.values[i][rows] = other.values[i].to(self.values[i].dtype)
        self.valid[rows] = other.valid
        self.positions[rows] = other.positions
        self.headings[rows] = other.headings.to(self.headings)

    def clone(self) -> LatteCache:
        """An independent copy (e.g. to branch a rollout)."""
        return LatteCache([k.clone() for k in self.keys], [v.clone() for v in self.values], self.valid.clone(),
                          self.positions.clone(), self.headings.clone())

    def nbytes(self) -> int:
        """Memory held by the cache, in bytes (constant over a rollout)."""
        return sum(t.numel() * t.element_size() for t in [*self.keys, *self.values, self.valid, self.positions,
                                                          self.headings])
