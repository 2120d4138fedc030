"""The chunkwise driver: generate N frames from m context frames with a k-frame window and stride s.

Windows are always exactly k frames (the model's training length; pitfall 13). The first window holds
the m given frames and generates the next k − m. Every later window slides so that it ends s frames
further on: it keeps its first k − s frames as context and generates s. The last window grows its
context instead of generating past N. s = k − m is full-sequence mode (the paper's "MaskFlow"
setting), s = 1 is frame by frame (its "AR" setting). Per-frame actions are sliced along with each
window. NFE is counted exactly by wrapping the denoiser, and :func:`nfe_formula` predicts it:

    chunks C = 1 + ⌈max(N − k, 0)/s⌉;  MGM/FM: C·T;  DF: C·(T + k);  Rolling: 2S + (N − k)·⌈S/(k − m)⌉

With N < k there is a single, shorter window of N frames (the denoiser must accept fewer frames).

Axis letters: b batch, f frames, h w token grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from envs.common.errors import SamplerSettingsError
from worldmodel.common import threads
from worldmodel.sampling.base import ChunkSampler, CountingDenoiser, Denoiser, SamplerConfig
from worldmodel.sampling.rolling import RollingSampler, rolling_nfe


@dataclass(frozen=True)
class ChunkConfig:
    """Where the windows go.

    Attributes:
        window: k, frames per model call (the training window).
        context: m, given frames at the start (ground truth or the real env's frames).
        total: N, frames in the output, context included.
        stride: s, new frames per later window; None = k − m (full-sequence mode).
    """

    window: int
    context: int
    total: int
    stride: int | None = None

    @property
    def step(self) -> int:
        """The stride with its default filled in."""
        return self.window - self.context if self.stride is None else int(self.stride)


@dataclass(frozen=True)
class Chunk:
    """One window: frames ``start .. start + context + new - 1``; the first ``context`` are known."""

    start: int
    context: int
    new: int


@dataclass
class Generation:
    """What :func:`generate` returns: ``tokens`` (b N h w), the exact ``nfe`` and the windows used."""

    tokens: torch.Tensor
    nfe: int
    chunks: list[Chunk]


def validate_chunking(chunking: ChunkConfig) -> None:
    """Raise :class:`SamplerSettingsError` for settings that cannot work, saying how to fix them."""
    k, m, n, s = chunking.window, chunking.context, chunking.total, chunking.step
    if k < 1:
        raise SamplerSettingsError(f"window k must be >= 1 frame, got {k}")
    if m < 0 or m >= k:
        raise SamplerSettingsError(f"context m must satisfy 0 <= m < window k (a window needs at least one "
                                   f"frame to generate); got m={m}, k={k}")
    if n <= m:
        raise SamplerSettingsError(f"total frames N={n} must exceed the context m={m}: nothing to generate")
    if s < 1:
        raise SamplerSettingsError(f"stride s must be >= 1, got {s}")
    if s > k - m:
        raise SamplerSettingsError(f"stride s={s} > k - m = {k - m} would leave frames that are neither "
                                   f"context nor generated; use s <= k - m (s = k - m is full-sequence mode)")
    if n > k and s >= k:
        raise SamplerSettingsError(f"with context m=0 and stride s={s} >= k={k}, later windows would have no "
                                   "context; use a stride below the window or give context frames")


def plan_chunks(chunking: ChunkConfig) -> list[Chunk]:
    """The windows the driver runs, in order (validated first)."""
    validate_chunking(chunking)
    k, m, n, s = chunking.window, chunking.context, chunking.total, chunking.step
    end = min(k, n)
    chunks = [Chunk(0, m, end - m)]
    while end < n:
        new = min(s, n - end)                   # the last window grows its context instead of passing N
        chunks.append(Chunk(end + new - k, k - new, new))
        end += new
    return chunks


def num_chunks(window: int, context: int, total: int, stride: int | None = None) -> int:
    """C = 1 + ⌈max(N − k, 0)/s⌉ (validated)."""
    chunking = ChunkConfig(window, context, total, stride)
    validate_chunking(chunking)
    return 1 + math.ceil(max(total - window, 0) / chunking.step)


def nfe_formula(name: str, steps: int, window: int, context: int, total: int, stride: int | None = None) -> int:
    """The exact NFE that :func:`generate` will count for sampler ``name`` with ``steps`` (T or S)."""
    c = num_chunks(window, context, total, stride)
    if name in ("mgm", "mgm_tfree", "fm"):
        return c * steps
    if name == "df":
        return c * (steps + min(window, total))
    if name == "rolling":
        if total < window:
            raise SamplerSettingsError(f"rolling diffusion needs total frames N >= window k; got N={total}, "
                                       f"k={window}")
        return rolling_nfe(total, window, context, steps)
    raise SamplerSettingsError(f"unknown sampler {name!r}")


def generate(denoise: Denoiser, sampler: ChunkSampler | RollingSampler, context: torch.Tensor,
             chunking: ChunkConfig, mask_id: int, generator: torch.Generator,
             actions: torch.Tensor | None = None) -> Generation:
    """Generate ``chunking.total`` frames that start with ``context`` (b m h w long).

    ``sampler`` comes from :func:`worldmodel.sampling.make_sampler`; ``actions`` (b N) long holds the
    action that led to each frame (-1 = none; default all -1). Returns a :class:`Generation` whose
    ``tokens`` (b N h w) begin with the context frames unchanged.
    """
    if sampler.config.guided:
        raise SamplerSettingsError("action_guidance / history_guidance are applied by the frame-by-frame rollout "
                                   "only (stride 1 with a causal model); set them to 0 for chunkwise sampling")
    chunks = plan_chunks(chunking)
    b, m, h, w = context.shape
    n = chunking.total
    if m != chunking.context:
        raise SamplerSettingsError(f"context tensor has {m} frames but chunking.context is {chunking.context}")
    if actions is None:
        actions = torch.full((b, n), -1, dtype=torch.long, device=context.device)
    if tuple(actions.shape) != (b, n):
        raise SamplerSettingsError(f"actions must have shape (batch, N) = {(b, n)}, got {tuple(actions.shape)}")
    counter = CountingDenoiser(denoise)
    video = torch.full((b, n, h, w), mask_id, dtype=torch.long, device=context.device)
    video[:, :m] = context
    if isinstance(sampler, RollingSampler):
        video = sampler.generate_sequence(counter, video, actions, chunking.window, m, mask_id, generator)
        return Generation(video, counter.calls, chunks)
    for chunk in chunks:
        threads.tick()                  # follow the load of other processes (worldmodel.common.threads)
        sl = slice(chunk.start, chunk.start + chunk.context + chunk.new)
        video[:, sl] = sampler.sample_chunk(counter, video[:, sl], actions[:, sl], mask_id, generator)
    return Generation(video, counter.calls, chunks)


def expected_nfe(sampler_config: SamplerConfig, chunking: ChunkConfig) -> int:
    """:func:`nfe_formula` for a sampler config."""
    return nfe_formula(sampler_config.name, sampler_config.num_steps, chunking.window, chunking.context,
                       chunking.total, chunking.stride)
