"""The common sampler interface: config, the denoiser contract, an NFE counter and the model adapter.

A *denoiser* is any callable ``denoise(tokens, t, actions) -> logits`` with

    tokens  (b f h w) long    codebook ids in [0, V); the mask token is id V
    t       (b f)     float   per-frame time, 0 = fully masked, 1 = clean (docs/algorithm.md#masking-schedule)
    actions (b f)     long    the action that led to each frame; -1 = none
    logits  (b f h w v) float v = V + 1 classes (the last one is the mask class, never sampled)

so samplers are testable with toy denoisers and run the real model through :class:`ModelDenoiser`.
One call of the denoiser is one NFE (function evaluation), whatever the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from envs.common.errors import SamplerSettingsError
from worldmodel.objective.schedules import SCHEDULERS
from worldmodel.sampling.unmask_schedule import COUNT_MODES

SAMPLER_NAMES = ("mgm", "mgm_tfree", "fm", "df", "rolling")

# Smallest time shown to the model: training draws t from [1e-3, 1] (docs/algorithm.md#frame-level-masking).
TIME_EPS = 1e-3

# Steps when SamplerConfig.steps is None: per chunk for MGM/FM/DF (the paper's T), per frame for rolling (S).
DEFAULT_STEPS = {"mgm": 20, "mgm_tfree": 20, "fm": 250, "df": 250, "rolling": 250}


@dataclass(frozen=True)
class SamplerConfig:
    """How to fill masked tokens. One config drives chunkwise generation and the cached rollout.

    Attributes:
        name: ``mgm`` (confidence sampling, t = κ⁻¹(unmasked fraction) per frame), ``mgm_tfree`` (the
            same with t = 1 everywhere: the paper's training-free trick), ``fm`` (discrete flow-matching
            Euler), ``df`` (Diffusion-Forcing pyramid), ``rolling`` (Rolling-Diffusion schedule).
        steps: model calls per chunk (MGM, FM, DF's T) or per frame of time (rolling's S); per frame in
            the frame-by-frame rollout. None picks the paper's value (``DEFAULT_STEPS``).
        temperature: softmax temperature of every categorical draw; 0 means greedy (argmax).
        gumbel: MGM confidence annealing strength (MaskGIT choice temperature; upstream 4.5); 0 = off.
        schedule: MGM unmask counts per step: ``arccos`` (upstream) | ``cosine`` (MaskGIT) | ``linear`` |
            ``square`` | ``root``, see ``unmask_schedule.py``.
        masking: the κ scheduler the model was trained with (``sigmoid`` | ``cosine`` | ``linear``).
        seed: seed of the generator that entry points build with :func:`make_generator`.
        action_guidance: classifier-free guidance on the new frame's action, frame-by-frame rollout only:
            log p + γ·(log p − log p(action = none)); 0 = off (one extra model pass per step when on).
            The model learned the action-free branch from its action dropout.
        history_guidance: the same against the new frame predicted with no history at all (the model
            saw that case as the first frame of every causal training clip); it pushes the frame towards
            what the remembered frames imply; 0 = off (one extra, cheap, pass per step when on).
        history_guidance_recent: frames that history guidance's second pass still sees, the most recent
            ones; 0 = none (plain history guidance). With n > 0 the guidance pushes towards what only the
            frames *older* than the last n imply: far-history guidance, for memory beyond a short window
            (e.g. 15 of a 32-frame window's 31).
    """

    name: str = "mgm"
    steps: int | None = None
    temperature: float = 1.0
    gumbel: float = 0.0
    schedule: str = "arccos"
    masking: str = "sigmoid"
    seed: int = 0
    action_guidance: float = 0.0
    history_guidance: float = 0.0
    history_guidance_recent: int = 0

    def __post_init__(self) -> None:
        if self.name not in SAMPLER_NAMES:
            raise SamplerSettingsError(f"unknown sampler {self.name!r}; choose one of {', '.join(SAMPLER_NAMES)}")
        if self.steps is not None and int(self.steps) < 1:
            raise SamplerSettingsError(f"sampler steps must be >= 1, got {self.steps}")
        if self.temperature < 0:
            raise SamplerSettingsError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.gumbel < 0:
            raise SamplerSettingsError(f"gumbel annealing strength must be >= 0, got {self.gumbel}")
        for name in ("action_guidance", "history_guidance"):
            value = getattr(self, name)
            if not value >= 0:                                   # also refuses NaN
                raise SamplerSettingsError(f"{name} must be >= 0 (0 = off), got {value}")
        recent = self.history_guidance_recent
        if isinstance(recent, bool) or not isinstance(recent, int) or recent < 0:
            raise SamplerSettingsError(f"history_guidance_recent must be an integer >= 0 (frames the history-free "
                                       f"pass still sees; 0 = none), got {recent!r}")
        if self.schedule not in COUNT_MODES:
            raise SamplerSettingsError(f"unknown unmask-count schedule {self.schedule!r}; choose one of "
                                       f"{', '.join(COUNT_MODES)}")
        if self.masking not in SCHEDULERS:
            raise SamplerSettingsError(f"unknown masking schedule {self.masking!r}; choose one of "
                                       f"{', '.join(SCHEDULERS)} (the one the model was trained with)")

    @property
    def num_steps(self) -> int:
        """``steps`` with the paper's default filled in."""
        return int(self.steps) if self.steps is not None else DEFAULT_STEPS[self.name]

    @property
    def passes(self) -> int:
        """Model passes per unmasking step: the conditional one plus one per guidance term that is on."""
        return 1 + (self.action_guidance > 0) + (self.history_guidance > 0)

    @property
    def guided(self) -> bool:
        """Whether any classifier-free guidance is on (only the frame-by-frame rollout applies it)."""
        return self.passes > 1


def guidance_label(settings: dict) -> str:
    """``", action guidance 1, history guidance 0.5"`` for the guidance weights in a settings or row dict
    (``""`` when none is on): the suffix of plot titles and report sampler labels."""
    return "".join(f", {name} guidance {settings[key]:g}"
                   for name, key in (("action", "action_guidance"), ("history", "history_guidance"))
                   if settings.get(key, 0) > 0)


def make_generator(cfg: SamplerConfig, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``cfg.seed`` (one per rollout/video)."""
    return torch.Generator(device=device).manual_seed(int(cfg.seed))


@runtime_checkable
class Denoiser(Protocol):
    """``denoise(tokens (b f h w), t (b f), actions (b f)) -> logits (b f h w v)``; see the module doc."""

    def __call__(self, tokens: torch.Tensor, t: torch.Tensor, actions: torch.Tensor) -> torch.Tensor: ...


class CountingDenoiser:
    """Wraps a denoiser and counts its calls: the exact NFE of whatever ran through it."""

    def __init__(self, denoise: Denoiser) -> None:
        self.denoise = denoise
        self.calls = 0

    def __call__(self, tokens: torch.Tensor, t: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.denoise(tokens, t, actions)


class ModelDenoiser:
    """Adapter from a MaskFlow model (``model(tokens, t, actions)`` returning an object with
    ``.logits`` (b f h w v)) to the denoiser contract; runs under ``torch.inference_mode``."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.mask_id = int(model.cfg.mask_id) if hasattr(model, "cfg") else None   # id V of [M]

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, t: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        out = self.model(tokens, t, actions)
        return out.logits if hasattr(out, "logits") else out


class ChunkSampler(Protocol):
    """A sampler that fills every masked token of one window (the chunkwise driver's unit of work)."""

    config: SamplerConfig

    def sample_chunk(self, denoise: Denoiser, window: torch.Tensor, actions: torch.Tensor, mask_id: int,
                     generator: torch.Generator) -> torch.Tensor:
        """Fill ``window`` (b f h w); frames with no mask token are context (t = 1). Returns (b f h w)."""
        ...

    def nfe_per_chunk(self, frames: int) -> int:
        """Exact number of denoiser calls :meth:`sample_chunk` makes on a window of ``frames`` frames."""
        ...
