"""Samplers that turn mask tokens into frames, behind one interface (docs/algorithm.md#samplers).

    cfg = SamplerConfig(name="mgm", steps=20)
    sampler = make_sampler(cfg)
    out = generate(ModelDenoiser(model), sampler, context, ChunkConfig(window=16, context=2, total=80),
                   mask_id=V, generator=make_generator(cfg), actions=actions)
    out.tokens, out.nfe

Samplers: ``mgm`` (default), ``mgm_tfree``, ``fm``, ``df`` (Diffusion-Forcing pyramid), ``rolling``
(Rolling Diffusion). Chunk samplers expose ``sample_chunk`` and ``nfe_per_chunk``; rolling has its
own ``generate_sequence``. For causal models, :mod:`worldmodel.sampling.rollout` runs the cached
frame-by-frame rollout with the same samplers. :func:`worldmodel.sampling.imagine.imagine` picks one of
the two drivers for a dream from real context and checks its NFE.
"""

from __future__ import annotations

from worldmodel.objective.schedules import Scheduler
from worldmodel.sampling.base import (
    DEFAULT_STEPS,
    SAMPLER_NAMES,
    ChunkSampler,
    CountingDenoiser,
    Denoiser,
    ModelDenoiser,
    SamplerConfig,
    make_generator,
)
from worldmodel.sampling.chunkwise import (
    Chunk,
    ChunkConfig,
    Generation,
    expected_nfe,
    generate,
    nfe_formula,
    num_chunks,
    plan_chunks,
    validate_chunking,
)
from worldmodel.sampling.diffusion_forcing import DiffusionForcingSampler
from worldmodel.sampling.fm import FMSampler
from worldmodel.sampling.mgm import MGMSampler
from worldmodel.sampling.rolling import RollingSampler

Sampler = MGMSampler | FMSampler | DiffusionForcingSampler | RollingSampler

_CLASSES: dict[str, type] = {"mgm": MGMSampler, "mgm_tfree": MGMSampler, "fm": FMSampler,
                             "df": DiffusionForcingSampler, "rolling": RollingSampler}


def make_sampler(config: SamplerConfig, scheduler: Scheduler | None = None) -> Sampler:
    """Build the sampler named by ``config.name``; ``scheduler`` overrides ``config.masking``'s κ."""
    return _CLASSES[config.name](config, scheduler)


__all__ = [
    "DEFAULT_STEPS", "SAMPLER_NAMES", "Chunk", "ChunkConfig", "ChunkSampler", "CountingDenoiser", "Denoiser",
    "DiffusionForcingSampler", "FMSampler", "Generation", "MGMSampler", "ModelDenoiser", "RollingSampler",
    "Sampler", "SamplerConfig", "expected_nfe", "generate", "make_generator", "make_sampler", "nfe_formula",
    "num_chunks", "plan_chunks", "validate_chunking",
]
