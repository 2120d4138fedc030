"""``imagine``: the one driver that dreams N frames from real context, for ``maskflow dream`` and ``maskflow eval``.

    out = imagine(model, SamplerConfig("mgm", steps=20), context, context_actions, actions, frames=48,
                  generator=make_generator(cfg))
    out.tokens, out.nfe, out.cached                 # (b f h w) imagined frames, NFE per video, which driver

It picks the driver once: a causal model at stride 1 runs the KV-cached frame-by-frame rollout
(docs/algorithm.md#frame-by-frame-rollout), anything else the chunkwise driver with windows of the
model's k frames (docs/algorithm.md#chunkwise-driver). The model calls are counted as they happen and
checked against the formula of :func:`planned_nfe` (docs/algorithm.md#nfe) once, here.

Axis letters: b batch (videos), m context frames, f imagined frames, h w token grid.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from worldmodel.common.device import inference_dtype
from worldmodel.sampling import make_sampler
from worldmodel.sampling.base import Denoiser, ModelDenoiser, SamplerConfig
from worldmodel.sampling.chunkwise import ChunkConfig, expected_nfe, generate
from worldmodel.sampling.rollout import CachedRollout, frame_nfe


@dataclass
class Imagined:
    """What :func:`imagine` returns.

    ``tokens`` (b f h w) the imagined frames (the context not included); ``nfe`` model calls per video
    (the context's commit passes not included); ``cached``: the frame-by-frame rollout ran; ``stamps``
    seconds since the call began after each frame (cached) or each model call (chunkwise); ``ready_s``
    seconds before the first frame began (the cache filled with the context); ``reward_logits`` /
    ``done_logits`` (b f) of each imagined frame, from the commit passes (cached rollout only)."""

    tokens: torch.Tensor
    nfe: int
    cached: bool
    stamps: np.ndarray
    ready_s: float
    reward_logits: torch.Tensor | None = None
    done_logits: torch.Tensor | None = None


def runs_cached(model: torch.nn.Module, stride: int, cache: bool = True) -> bool:
    """Whether :func:`imagine` runs the KV-cached rollout: a causal model at stride 1 (unless ``cache=False``)."""
    return cache and stride == 1 and model.cfg.temporal == "causal"


def planned_nfe(model: torch.nn.Module, sampler: SamplerConfig, context: int, frames: int, stride: int = 1,
                cache: bool = True) -> int:
    """NFE per video of imagining ``frames`` frames after ``context``: (T·P + 1) per frame for the cached
    rollout (:func:`frame_nfe`), :func:`expected_nfe` of the chunk plan otherwise."""
    if runs_cached(model, stride, cache):
        return frames * frame_nfe(sampler)
    return expected_nfe(sampler, ChunkConfig(int(model.cfg.max_frames), context, context + frames, stride))


class _Timed:
    """A denoiser that records the seconds elapsed after each call and reports each call to ``tick``."""

    def __init__(self, denoise: Denoiser, t0: float, tick: Callable[[int], object] | None) -> None:
        self.denoise, self.t0, self.tick = denoise, t0, tick
        self.stamps: list[float] = []

    def __call__(self, tokens: torch.Tensor, t: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        out = self.denoise(tokens, t, actions)
        self.stamps.append(time.perf_counter() - self.t0)
        if self.tick is not None:
            self.tick(1)
        return out


def imagine(model: torch.nn.Module, sampler: SamplerConfig, context: torch.Tensor, context_actions: torch.Tensor,
            actions: torch.Tensor, frames: int, generator: torch.Generator, *, stride: int = 1, cache: bool = True,
            compile: bool = False, precision: str = "fp32", tick: Callable[[int], object] | None = None,
            stays: Sequence[bool] | None = None) -> Imagined:
    """Imagine ``frames`` frames after ``context`` (b m h w) long, which ``context_actions`` (b m) led to,
    driven by ``actions`` (b ≥ frames): ``actions[:, j]`` leads to imagined frame j.

    ``stride`` new frames per later window (chunkwise); ``cache=False`` runs the chunkwise driver even where
    the cached rollout could (eval's full-sequence rows); ``compile`` torch.compiles the cached rollout's
    passes; ``precision`` "auto" | "fp32" | "bf16" the dtype the model computes in
    (:func:`~worldmodel.common.device.inference_dtype`); ``tick(n)`` is called after each frame (cached) or
    model call (chunkwise), e.g. a bar's update; ``stays`` (per action: does it keep the camera in place?)
    turns on heading recall in the cached rollout (:class:`~worldmodel.model.cache.HeadingBank`)."""
    m, t0 = context.shape[1], time.perf_counter()
    future = actions[:, :frames]
    if runs_cached(model, stride, cache):
        ro = CachedRollout(model, sampler, batch_size=len(context), compile=compile, precision=precision, stays=stays)
        ro.reset(context, context_actions)
        ready_s, stamps, outs = time.perf_counter() - t0, [], []
        for j in range(frames):
            outs.append(ro.step(future[:, j], generator))
            stamps.append(time.perf_counter() - t0)
            if tick is not None:
                tick(1)
        out = Imagined(torch.stack([o.tokens for o in outs], 1), ro.nfe, True, np.asarray(stamps), ready_s,
                       torch.stack([o.reward_logits for o in outs], 1), torch.stack([o.done_logits for o in outs], 1))
    else:
        # "auto" stays fp32 here: bf16 was measured on the frame-by-frame rollout only (benchmarks/dream_speed.py)
        dtype = inference_dtype("fp32" if precision == "auto" else precision, context.device)
        den = _Timed(ModelDenoiser(model.cast(dtype)), t0, tick)
        g = generate(den, make_sampler(sampler), context, ChunkConfig(int(model.cfg.max_frames), m, m + frames, stride),
                     int(model.cfg.mask_id), generator, torch.cat([context_actions, future], 1))
        out = Imagined(g.tokens[:, m:], g.nfe, False, np.asarray(den.stamps), 0.0)
    expected = planned_nfe(model, sampler, m, frames, stride, cache)
    assert out.nfe == expected, f"NFE bookkeeping error: counted {out.nfe}, formula {expected}"
    return out
