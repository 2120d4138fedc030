"""Frame-by-frame rollout of a causal MaskFlow model: a sliding KV cache, and a reference that recomputes.

A dream advances one frame at a time (stride 1, context k − 1). :class:`CachedRollout` keeps, in every
temporal layer, the keys/values of the last k − 1 finished frames (``Latte.new_cache``); each unmasking
step runs only the new frame's positions against them (``forward_new_frame``), and one extra pass over
the finished frame at t = 1 appends its entry (``commit_frame``), which also yields the frame's reward
and termination logits. :class:`WindowRollout` is the uncached reference: it recomputes the whole
window (finished frames at t = 1 plus the new frame) on every call. Both expose the same API and give
the same logits (to float precision) and, from the same generator, the same frames.

Any chunk sampler fills the new frame, with T = ``steps`` calls per frame (+1 commit pass):
``mgm`` shows the new frame at t = κ⁻¹(its unmasked fraction), i.e. the time whose masking level it
is actually at (the model was trained on exactly that); ``mgm_tfree`` shows t = 1 throughout (the
paper's training-free trick, best when the model is time-independent); ``fm`` and ``df`` follow their
own time grids. Rolling diffusion needs several partially masked frames and cannot run here.

Classifier-free guidance (``SamplerConfig.action_guidance`` / ``history_guidance``, frame by frame only)
mixes the new frame's log-probabilities with those of one or two extra passes: the same frame with its
action replaced by "none", and the same frame with no history (an empty cache / a one-frame window):
log p + γ_a·(log p − log p_no-action) + γ_h·(log p − log p_no-history). Each extra pass is one more NFE
per step; the cached rollout runs the no-history pass against a cache without slots. With
``history_guidance_recent`` = n > 0 the second pass keeps the last n frames (the cache with its older slots
marked invalid), so the guidance amplifies what only the far past says: where the model's memory beyond n
frames is weak but right (a view seen before it turned away), it is pushed to act on it.
Vanilla history guidance is the idea of Song et al. 2025 ("History-Guided Video Diffusion"); here the
history-free prediction is the one every causal training clip teaches on its first frame.

Both rollouts hold ``batch_size`` independent rollouts and reset any subset of them (``rows``), so a
vector env can restart one episode without disturbing the others.

Axis letters: b batch (rollouts), m context frames, n history frames, h w token grid, v vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from envs.common.errors import ConfigError, SamplerSettingsError
from envs.loops import action_stays
from worldmodel.common import threads
from worldmodel.common.device import inference_dtype, require_compiler
from worldmodel.sampling import Sampler, SamplerConfig, make_sampler
from worldmodel.sampling.rolling import RollingSampler

# Unmasking steps per frame of the default dream, chosen by paired evals of the shipped model against release 1's 20
# steps (same 128 held-out windows and seeds; maskflow eval pair_with=..., docs/results.md#fast-dreams): 8 steps
# (bf16) PSNR margins -0.23 dB [-0.52, +0.04] on frames 1-16 and -0.18 [-0.53, +0.15] on 17-64, 12 steps -0.20 / -0.24,
# 8 steps fp32 -0.15 / +0.29: all within the noise of one eval, at 2.6x fewer model passes (9 instead of 21).
DEFAULT_FRAME_STEPS = 8
# MaskGIT choice-temperature (Gumbel) annealing of the MGM confidence ranking in the default dream. Without it the
# ranking always unmasks the most confident tokens first, which favours flat wall texture. Held-out random-walk
# episodes (benchmarks/action_check.py --gumbel): the dream followed 54.5 / 80.4 / 83.9 / 97.9 / 90.2 % of turns at
# 0 / 2 / 4.5 / 8 / 12 (live turn probes 93.8 / 88.5 / 90.6 % at 0 / 4.5 / 8); maskflow eval gumbel_frame=...:
# 8 kept 1x FVD / PSNR level with 4.5 and gave the best 10x FVD and PSNR (1939 / 14.5 dB vs 1976 / 13.7 at 4.5,
# 2212 / 13.6 at 12; benchmarks/results/eval_gumbel_sweep.jsonl). Chunkwise it made FVD worse, so chunkwise dreams
# and eval rows keep 0.
DEFAULT_FRAME_GUMBEL = 8.0


def frame_nfe(config: SamplerConfig) -> int:
    """Denoiser calls per imagined frame: T steps × ``config.passes`` (1 + one per guidance term) + 1 commit."""
    return frame_sampler(config).nfe_per_chunk(1) * config.passes + 1


def recall_stays(model: torch.nn.Module, meanings: Sequence[str], heading_recall: object, source: str
                 ) -> list[bool] | None:
    """The ``stays`` table that turns heading recall on in :class:`CachedRollout` (per action: does it keep
    the camera in place, :func:`envs.loops.action_stays`), None when ``heading_recall`` is off; a
    :class:`ConfigError` naming ``source`` (the checkpoint) when the value is not a bool or the model has no
    heading rotary. The one check behind ``heading_recall`` in the dream env, ``maskflow dream`` and ``eval``."""
    if not isinstance(heading_recall, (bool, np.bool_)):
        raise ConfigError(f"heading_recall must be True or False, got {heading_recall!r}")
    if not heading_recall:
        return None
    if not model.cfg.heading_pairs:
        raise ConfigError(f"heading_recall=true needs a model with heading rotary (train with heading_pairs > 0); "
                          f"{source} has none")
    return action_stays(meanings)


@dataclass
class FrameOutput:
    """One imagined frame per rollout: tokens (b h w), reward and termination logits (b,) of the
    finished frame, and the denoiser calls this frame cost (``steps`` sampling + 1 commit pass)."""

    tokens: torch.Tensor
    reward_logits: torch.Tensor
    done_logits: torch.Tensor
    nfe: int


def frame_sampler(sampler: SamplerConfig | Sampler) -> Sampler:
    """The sampler of a frame-by-frame rollout; rolling diffusion is refused with a clear error.

    ``steps=None`` means :data:`DEFAULT_FRAME_STEPS` per frame here (not the paper's per-chunk T);
    FM and DF usually need more steps than MGM, so give them ``steps`` explicitly."""
    if isinstance(sampler, SamplerConfig) and sampler.steps is None:
        sampler = replace(sampler, steps=DEFAULT_FRAME_STEPS)
    s = make_sampler(sampler) if isinstance(sampler, SamplerConfig) else sampler
    if isinstance(s, RollingSampler):
        raise SamplerSettingsError("rolling diffusion keeps several partially masked frames and cannot run "
                                   "frame by frame; use mgm, mgm_tfree, fm or df")
    return s


class _RolloutBase:
    """Shared bookkeeping: argument checks, the per-frame sampler call and the NFE counter."""

    def __init__(self, model: torch.nn.Module, sampler: SamplerConfig | Sampler, batch_size: int,
                 device: torch.device | str | None = None) -> None:
        if getattr(model.cfg, "temporal", None) != "causal":
            raise SamplerSettingsError("frame-by-frame rollout needs a causal model (temporal='causal'); "
                                       "use the chunkwise driver (worldmodel.sampling.generate) otherwise")
        if batch_size < 1:
            raise SamplerSettingsError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.sampler = frame_sampler(sampler)
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.mask_id = int(model.cfg.mask_id)
        self.grid = tuple(model.cfg.token_grid)
        self.history_len = int(model.cfg.max_frames) - 1          # k − 1 finished frames are remembered
        self.nfe = 0                                               # denoiser calls so far, all frames
        cfg = self.sampler.config
        self.action_guidance, self.history_guidance = float(cfg.action_guidance), float(cfg.history_guidance)
        self.history_recent = int(cfg.history_guidance_recent)
        if self.history_guidance > 0 and self.history_recent >= self.history_len:
            raise SamplerSettingsError(f"history_guidance_recent={self.history_recent} must be below the "
                                       f"{self.history_len} frames the model remembers (its window minus one)")
        if self.action_guidance > 0 and int(getattr(model.cfg, "num_actions", 0)) == 0:
            raise SamplerSettingsError("action_guidance needs an action-conditioned model; this one has no actions")
        self.passes = cfg.passes

    def _branches(self, actions: torch.Tensor) -> list[tuple[torch.Tensor, bool]]:
        """(actions, with history) of each pass a step makes: conditional, then action-free, then no-history."""
        out = [(actions, True)]
        if self.action_guidance > 0:
            out.append((torch.full_like(actions, -1), True))
        if self.history_guidance > 0:
            out.append((actions, False))
        return out

    def _guide(self, logits: list[torch.Tensor]) -> torch.Tensor:
        """Mix the passes' logits (each b h w v, in :meth:`_branches` order) into the guided logits.

        Guidance works in log-probability space over the real classes; the mask class (last) gets −inf."""
        if len(logits) == 1:
            return logits[0]
        logp = [torch.log_softmax(x[..., :self.mask_id].float(), dim=-1) for x in logits]
        cond, rest = logp[0], iter(logp[1:])
        out = cond.clone()
        if self.action_guidance > 0:
            out += self.action_guidance * (cond - next(rest))
        if self.history_guidance > 0:
            out += self.history_guidance * (cond - next(rest))
        return torch.cat([out, out.new_full((*out.shape[:-1], 1), float("-inf"))], dim=-1)

    def _rows(self, rows: torch.Tensor | None) -> torch.Tensor:
        if rows is None:
            return torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        rows = torch.as_tensor(rows, device=self.device)
        if rows.dtype != torch.bool or tuple(rows.shape) != (self.batch_size,):
            raise SamplerSettingsError(f"rows must be a bool mask of shape ({self.batch_size},), got "
                                       f"{rows.dtype} {tuple(rows.shape)}")
        return rows

    def _check_context(self, context: torch.Tensor, actions: torch.Tensor | None, count: int):
        if context.dim() != 4 or context.shape[0] != count or tuple(context.shape[2:]) != self.grid:
            raise SamplerSettingsError(f"context must be (rows reset = {count}, frames, {self.grid[0]}, "
                                       f"{self.grid[1]}) tokens, got {tuple(context.shape)}")
        if bool((context == self.mask_id).any()):
            raise SamplerSettingsError("context frames must be finished frames without mask tokens")
        if actions is None:
            actions = torch.full(context.shape[:2], -1, dtype=torch.long, device=context.device)
        if tuple(actions.shape) != tuple(context.shape[:2]):
            raise SamplerSettingsError(f"context actions must be (rows, frames) = {tuple(context.shape[:2])}, "
                                       f"got {tuple(actions.shape)}")
        # only the last k − 1 frames can influence the future
        keep = slice(context.shape[1] - min(context.shape[1], self.history_len), None)
        return context[:, keep].to(self.device).long(), actions[:, keep].to(self.device).long()

    def _check_actions(self, actions: torch.Tensor) -> torch.Tensor:
        actions = torch.as_tensor(actions, device=self.device).long().reshape(-1)
        if actions.shape[0] != self.batch_size:
            raise SamplerSettingsError(f"step needs one action per rollout ({self.batch_size}), got "
                                       f"{actions.shape[0]}")
        return actions

    def _sample_frame(self, denoise, actions: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """Run the sampler on one all-mask frame: (b h w) long and the denoiser calls it made."""
        threads.tick()                  # follow the load of other processes (worldmodel.common.threads)
        calls = [0]

        def counted(tokens, t, a):
            calls[0] += self.passes
            return denoise(tokens, t, a)

        start = torch.full((self.batch_size, 1, *self.grid), self.mask_id, dtype=torch.long, device=self.device)
        out = self.sampler.sample_chunk(counted, start, actions[:, None], self.mask_id, generator)
        self.nfe += calls[0]
        return out[:, 0], calls[0]


class CachedRollout(_RolloutBase):
    """Frame-by-frame rollout with a sliding KV cache (constant memory, one frame of compute per call).

    Usage::

        ro = CachedRollout(model, SamplerConfig("mgm", steps=8), batch_size=4)
        ro.reset(context_tokens, context_actions)          # (b m h w), (b m)
        out = ro.step(actions, generator)                   # actions (b,) -> FrameOutput
    """

    def __init__(self, model: torch.nn.Module, sampler: SamplerConfig | Sampler, batch_size: int,
                 device: torch.device | str | None = None, compile: bool = False, precision: str = "fp32",
                 stays: Sequence[bool] | None = None) -> None:
        super().__init__(model, sampler, batch_size, device)
        # heading recall (``stays``: per action, does it keep the camera in place; envs.loops.action_stays)
        self.stays = None if stays is None else list(stays)
        # precision: "auto" computes in bf16 where the hardware has it natively (a copy of the model; the
        # caller's stays as it is), "fp32" / "bf16" force one (benchmarks/dream_speed.py: gain and cost)
        self.dtype, self.compile, self._stamp = inference_dtype(precision, self.device), compile, None
        if compile:
            require_compiler(self.device)
        self._sync()
        with torch.inference_mode():
            self.cache = self.net.new_cache(batch_size, self.device, stays=self.stays)
        # the no-history pass of history guidance: a cache without slots (the frame attends to itself only);
        # with history_guidance_recent > 0 a view of the rollout cache instead (see _short_history)
        self._no_history = (self.net.new_cache(batch_size, self.device, slots=0)
                            if self.history_guidance > 0 and self.history_recent == 0 else None)
        slots = self.cache.slots                                  # fixed for the rollout's life: mask made once
        self._recent_slots = torch.arange(slots, device=self.device) >= slots - self.history_recent

    def _sync(self) -> None:
        """(Re)make the model copy that computes in ``self.dtype`` when the caller's weights changed since
        (fine-tuning between dreams, load_state_dict): in-place updates bump each tensor's version."""
        stamp = tuple((id(p), p._version) for p in self.model.parameters())
        if stamp == self._stamp:
            return
        net, self._stamp = self.model.cast(self.dtype), stamp
        if net is getattr(self, "net", None):          # the caller's model itself (already in self.dtype)
            return
        self.net = net
        # torch.compile fuses the many small elementwise ops of a one-frame pass; the first call of each
        # pass kind then takes tens of seconds to compile (it did not pay on the CPU: benchmarks/dream_speed.py)
        self._new_frame = torch.compile(self.net.forward_new_frame) if self.compile else self.net.forward_new_frame
        self._commit = torch.compile(self.net.commit_frame) if self.compile else self.net.commit_frame

    def _short_history(self):
        """The history guidance pass's cache: no slots, or the rollout cache with only its newest
        ``history_recent`` slots valid (the same tensors, no copy; slots are right-aligned in time)."""
        if self._no_history is not None:
            return self._no_history
        return replace(self.cache, valid=self.cache.valid & self._recent_slots, bank=None)   # no far recall

    def _guided_frame_logits(self, tokens: torch.Tensor, t: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Guided logits (b h w v) of the new frame (b h w) at times t (b,) given actions (b,): one model
        call per pass (batching the passes measured slower on the CPU, benchmarks/rollout.py)."""
        return self._guide([self._new_frame(tokens, t, a, self.cache if history else self._short_history()).logits[:, 0]
                            for a, history in self._branches(actions)])

    @torch.inference_mode()
    def reset(self, context: torch.Tensor, actions: torch.Tensor | None = None,
              rows: torch.Tensor | None = None) -> None:
        """(Re)start the rollouts flagged in ``rows`` (b,) bool (all when None) from ``context``
        (r m h w) tokens and the ``actions`` (r m) that led to them (-1 = none), r = rows set.

        Costs one commit pass per context frame (at most k − 1) for the reset rows only."""
        rows = self._rows(rows)
        context, actions = self._check_context(context, actions, int(rows.sum()))
        self._sync()
        sub = self.net.new_cache(int(rows.sum()), self.device, stays=self.stays)
        for j in range(context.shape[1]):
            self._commit(context[:, j], actions[:, j], sub, logits=False)
        self.cache.splice(rows, sub)            # both right-aligned in time, each row at its own positions

    @torch.inference_mode()
    def step(self, actions: torch.Tensor, generator: torch.Generator) -> FrameOutput:
        """Imagine the next frame of every rollout given its action (b,) long; returns :class:`FrameOutput`."""
        actions = self._check_actions(actions)
        self._sync()

        def denoise(tokens, t, a):                                 # (b 1 h w), (b 1), (b 1) -> (b 1 h w v)
            return self._guided_frame_logits(tokens[:, 0], t[:, 0], a[:, 0])[:, None]

        tokens, calls = self._sample_frame(denoise, actions, generator)
        out = self._commit(tokens, actions, self.cache, logits=False)
        self.nfe += 1
        return FrameOutput(tokens, out.reward_logits[:, 0].float(), out.done_logits[:, 0].float(), calls + 1)

    def frame_logits(self, tokens: torch.Tensor, t: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Logits (b h w v) of a candidate new frame (b h w) at times t (b,) given actions (b,), guided as the
        rollout samples (log-probabilities when guidance is on); no state change."""
        self._sync()
        with torch.inference_mode():
            return self._guided_frame_logits(tokens, t, actions)

    def memory_bytes(self) -> int:
        """Bytes held by the KV cache (constant over any rollout length)."""
        return self.cache.nbytes()


class WindowRollout(_RolloutBase):
    """Uncached reference: every call recomputes the window of the last k − 1 finished frames (t = 1)
    plus the new frame. Same API and results as :class:`CachedRollout`, k times the compute."""

    def __init__(self, model: torch.nn.Module, sampler: SamplerConfig | Sampler, batch_size: int,
                 device: torch.device | str | None = None) -> None:
        super().__init__(model, sampler, batch_size, device)
        n, (h, w) = self.history_len, self.grid
        self.history = torch.zeros(batch_size, n, h, w, dtype=torch.long, device=self.device)      # (b n h w)
        self.history_actions = torch.full((batch_size, n), -1, dtype=torch.long, device=self.device)
        self.valid = torch.zeros(batch_size, n, dtype=torch.bool, device=self.device)               # right-aligned

    @torch.inference_mode()
    def reset(self, context: torch.Tensor, actions: torch.Tensor | None = None,
              rows: torch.Tensor | None = None) -> None:
        """Same contract as :meth:`CachedRollout.reset` (no model call needed)."""
        rows = self._rows(rows)
        context, actions = self._check_context(context, actions, int(rows.sum()))
        m, n = context.shape[1], self.history_len
        idx = rows.nonzero()[:, 0]
        self.valid[idx] = False
        self.history_actions[idx] = -1
        if m:
            self.history[idx, n - m:] = context
            self.history_actions[idx, n - m:] = actions
            self.valid[idx, n - m:] = True

    def _window_logits(self, tokens: torch.Tensor, t: torch.Tensor, actions: torch.Tensor,
                       history: bool = True) -> torch.Tensor:
        """Recompute the window for a new frame: tokens (b h w), t (b,), actions (b,) -> logits (b h w v).

        Rollouts with different history lengths (after a partial reset) are run in groups; ``history=False``
        runs the new frame alone, or with its last ``history_recent`` frames."""
        counts = self.valid.sum(1) if history else self.valid.sum(1).clamp(max=self.history_recent)
        logits = None
        for c in counts.unique().tolist():
            idx = (counts == c).nonzero()[:, 0]
            n = self.history_len
            win = torch.cat([self.history[idx, n - c:], tokens[idx, None]], dim=1)                  # (g f h w)
            tw = torch.cat([torch.ones(len(idx), c, device=self.device), t[idx, None].float()], dim=1)
            aw = torch.cat([self.history_actions[idx, n - c:], actions[idx, None]], dim=1)
            out = self.model(win, tw, aw).logits[:, -1]
            if logits is None:
                logits = out.new_empty(self.batch_size, *out.shape[1:])
            logits[idx] = out
        return logits

    def _guided_window_logits(self, tokens: torch.Tensor, t: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Guided logits (b h w v): each pass recomputes its window (the reference for the cached rollout)."""
        return self._guide([self._window_logits(tokens, t, a, h) for a, h in self._branches(actions)])

    @torch.inference_mode()
    def step(self, actions: torch.Tensor, generator: torch.Generator) -> FrameOutput:
        """Same contract as :meth:`CachedRollout.step`."""
        actions = self._check_actions(actions)

        def denoise(tokens, t, a):
            return self._guided_window_logits(tokens[:, 0], t[:, 0], a[:, 0])[:, None]

        tokens, calls = self._sample_frame(denoise, actions, generator)
        heads = self._window_heads(tokens, actions)
        self.nfe += 1
        self.history = torch.cat([self.history[:, 1:], tokens[:, None]], dim=1)
        self.history_actions = torch.cat([self.history_actions[:, 1:], actions[:, None]], dim=1)
        self.valid = torch.cat([self.valid[:, 1:], self.valid.new_ones(self.batch_size, 1)], dim=1)
        return FrameOutput(tokens, heads[0], heads[1], calls + 1)

    def _window_heads(self, tokens: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reward/termination logits (b,) of the finished frame, from one more window pass at t = 1."""
        counts = self.valid.sum(1)
        reward = torch.empty(self.batch_size, device=self.device)
        done = torch.empty(self.batch_size, device=self.device)
        n = self.history_len
        for c in counts.unique().tolist():
            idx = (counts == c).nonzero()[:, 0]
            win = torch.cat([self.history[idx, n - c:], tokens[idx, None]], dim=1)
            aw = torch.cat([self.history_actions[idx, n - c:], actions[idx, None]], dim=1)
            out = self.model(win, torch.ones(len(idx), c + 1, device=self.device), aw)
            reward[idx], done[idx] = out.reward_logits[:, -1].float(), out.done_logits[:, -1].float()
        return reward, done

    def frame_logits(self, tokens: torch.Tensor, t: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Logits (b h w v) of a candidate new frame, recomputing the window and guided as in
        :meth:`CachedRollout.frame_logits`; no state change."""
        with torch.inference_mode():
            return self._guided_window_logits(tokens, t, actions)

    def memory_bytes(self) -> int:
        """Bytes of the token history (constant; the model's activations are recomputed each call)."""
        return sum(x.numel() * x.element_size() for x in (self.history, self.history_actions, self.valid))
