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

Heading recall (``bank``, :class:`HeadingBank`, optional): a frame that falls out of the window is kept, the
first one per heading bucket and place, with the *place* it was seen at (the count of actions that moved the
camera so far).
While the camera has only turned since, a new frame whose heading no frame of the window shares but the
bank does attends to that frame in place of the oldest slot, its keys re-rotated to that slot's index
(:meth:`Latte._frame_pass`): the window the model was trained on, with its oldest frame swapped for the
view the heading points to. Memory stays constant (one entry per bucket), and loops longer than the window
(turning 30 times away and back) can come back to views they saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HeadingBank:
    """Evicted frames by heading bucket: keys/values per layer (b p H B e), rotated by their frame's own index
    (``positions`` (b B)) and heading; ``valid`` (b B); ``places`` (b B) the place each was seen at. The window's
    slots' headings (b n) float64 and places (b n), each rollout's current ``place`` (b,), and ``stays``
    (A + 1,) bool: which actions keep the camera in place (the last entry, action −1 = unknown, moves)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: torch.Tensor
    positions: torch.Tensor
    places: torch.Tensor
    slot_headings: torch.Tensor
    slot_places: torch.Tensor
    place: torch.Tensor
    stays: torch.Tensor
    width: float
    # one frame's recall, reused by its unmasking passes and commit (Latte._recalled); any change of the
    # cache or bank clears it
    memo: tuple | None = None

    @classmethod
    def empty(cls, layers: int, shape: tuple[int, ...], slots: int, stays: torch.Tensor, width: float,
              device: torch.device, dtype: torch.dtype) -> HeadingBank:
        """An empty bank for caches of ``shape`` (b p H n e); 360 / ``width`` buckets."""
        buckets = round(360.0 / width)
        if buckets < 1 or abs(buckets * width - 360.0) > 1e-6:
            raise ValueError(f"heading recall needs a bucket width that divides 360 degrees, got {width}")
        b, p, h, _, e = shape
        z = (b, p, h, buckets, e)
        return cls([torch.zeros(z, device=device, dtype=dtype) for _ in range(layers)],
                   [torch.zeros(z, device=device, dtype=dtype) for _ in range(layers)],
                   torch.zeros(b, buckets, dtype=torch.bool, device=device),
                   torch.zeros(b, buckets, dtype=torch.long, device=device),
                   torch.zeros(b, buckets, dtype=torch.long, device=device),
                   torch.zeros(b, slots, dtype=torch.float64, device=device),
                   torch.zeros(b, slots, dtype=torch.long, device=device),
                   torch.zeros(b, dtype=torch.long, device=device), stays.to(device=device, dtype=torch.bool), width)

    @property
    def buckets(self) -> int:
        return self.valid.shape[1]

    def bucket(self, headings: torch.Tensor) -> torch.Tensor:
        """Bucket index (...,) long of ``headings`` (...,) degrees."""
        return torch.round(headings / self.width).long() % self.buckets

    def next_place(self, actions: torch.Tensor) -> torch.Tensor:
        """The place (b,) a new frame reached by ``actions`` (b,) is at (action −1: a new place)."""
        return self.place + (~self.stays[actions]).long()

    def lookup(self, headings: torch.Tensor, actions: torch.Tensor, slot_valid: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """For new frames at ``headings`` (b,) reached by ``actions`` (b,): which rollouts recall (b,) bool, and
        from which bucket (b,) long: the bank holds a view at that heading from the same place, and no valid
        window slot (``slot_valid`` (b n)) from the same place faces that heading."""
        where, place = self.bucket(headings), self.next_place(actions)
        rows = torch.arange(len(where), device=where.device)
        held = self.valid[rows, where] & (self.places[rows, where] == place)
        in_window = (slot_valid & (self.bucket(self.slot_headings) == where[:, None])
                     & (self.slot_places == place[:, None])).any(1)
        return held & ~in_window, where

    def push(self, cache: LatteCache, headings: torch.Tensor, actions: torch.Tensor) -> None:
        """Before ``cache`` appends frames at ``headings`` (b,) reached by ``actions`` (b,): keep the frame that
        falls out of a full window in its heading's bucket, then record the new frame's heading and place."""
        self.memo = None
        place = self.next_place(actions)
        if cache.slots:
            out = cache.valid[:, 0]
            # a bucket keeps the first view of its heading at a place: the real context precedes dreamed
            # frames, and the dream's later versions of a view drift
            every = torch.arange(len(out), device=out.device)
            first = self.bucket(self.slot_headings[:, 0])
            out = out & ~(self.valid[every, first] & (self.places[every, first] == self.slot_places[:, 0]))
            if bool(out.any()):
                rows = out.nonzero()[:, 0]
                where = first[rows]
                for i in range(len(cache.keys)):
                    self.keys[i][rows, :, :, where] = cache.keys[i][rows, :, :, 0].to(self.keys[i].dtype)
                    self.values[i][rows, :, :, where] = cache.values[i][rows, :, :, 0].to(self.values[i].dtype)
                self.valid[rows, where] = True
                self.positions[rows, where] = cache.positions[rows] - cache.slots
                self.places[rows, where] = self.slot_places[rows, 0]
            self.slot_headings = torch.cat([self.slot_headings[:, 1:], headings.to(self.slot_headings)[:, None]], 1)
            self.slot_places = torch.cat([self.slot_places[:, 1:], place[:, None]], 1)
        self.place = place

    def reset(self, mask: torch.Tensor | None = None) -> None:
        """Forget the rollouts where ``mask`` (b,) is True (all when None)."""
        self.memo = None
        mask = torch.ones_like(self.place, dtype=torch.bool) if mask is None else mask.to(self.place.device)
        self.valid = self.valid & ~mask[:, None]
        self.place = torch.where(mask, 0, self.place)

    def splice(self, rows: torch.Tensor, other: HeadingBank) -> None:
        """Replace the rollouts flagged in ``rows`` (b,) bool by those of ``other``."""
        self.memo = None
        for i in range(len(self.keys)):
            self.keys[i][rows] = other.keys[i].to(self.keys[i].dtype)
            self.values[i][rows] = other.values[i].to(self.values[i].dtype)
        for name in ("valid", "positions", "places", "slot_headings", "slot_places", "place"):
            getattr(self, name)[rows] = getattr(other, name)

    def clone(self) -> HeadingBank:
        return HeadingBank([k.clone() for k in self.keys], [v.clone() for v in self.values], self.valid.clone(),
                           self.positions.clone(), self.places.clone(), self.slot_headings.clone(),
                           self.slot_places.clone(), self.place.clone(), self.stays, self.width)

    def tensors(self) -> list[torch.Tensor]:
        return [*self.keys, *self.values, self.valid, self.positions, self.places, self.slot_headings,
                self.slot_places, self.place]


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
    bank: HeadingBank | None = None

    def __post_init__(self) -> None:
        if self.headings is None:
            self.headings = torch.zeros(self.valid.shape[0], dtype=torch.float64, device=self.valid.device)

    @classmethod
    def empty(cls, layers: int, batch: int, positions: int, heads: int, head_dim: int, slots: int,
              device: torch.device, dtype: torch.dtype = torch.float32, stays: torch.Tensor | None = None,
              width: float = 0.0) -> LatteCache:
        """A cache with every slot empty; with ``stays`` (A + 1,) bool and a bucket ``width`` in degrees, also
        a :class:`HeadingBank` (heading recall)."""
        shape = (batch, positions, heads, slots, head_dim)
        bank = None if stays is None else HeadingBank.empty(layers, shape, slots, stays, width, device, dtype)
        return cls([torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)],
                   [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)],
                   torch.zeros(batch, slots, dtype=torch.bool, device=device),
                   torch.zeros(batch, dtype=torch.long, device=device), bank=bank)

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

    def append(self, kv: list[tuple[torch.Tensor, torch.Tensor]], headings: torch.Tensor | None = None,
               actions: torch.Tensor | None = None) -> None:
        """Push one finished frame's (rotated k, v), each (b p H 1 e) per layer, its ``headings`` (b,) (None:
        unchanged) and the ``actions`` (b,) that led to it (read by a heading bank only); the oldest slot falls
        out (into the bank, when there is one)."""
        if self.bank is not None:
            self.bank.push(self, self.headings if headings is None else headings.to(self.headings), actions)
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
        if self.bank is not None:
            self.bank.reset(mask)
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
        if self.bank is not None:
            self.bank.splice(rows, other.bank)

    def clone(self) -> LatteCache:
        """An independent copy (e.g. to branch a rollout)."""
        return LatteCache([k.clone() for k in self.keys], [v.clone() for v in self.values], self.valid.clone(),
                          self.positions.clone(), self.headings.clone(),
                          None if self.bank is None else self.bank.clone())

    def nbytes(self) -> int:
        """Memory held by the cache, in bytes (constant over a rollout)."""
        bank = [] if self.bank is None else self.bank.tensors()
        return sum(t.numel() * t.element_size() for t in [*self.keys, *self.values, self.valid, self.positions,
                                                          self.headings, *bank])
