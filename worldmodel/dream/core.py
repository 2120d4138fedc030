"""``DreamCore``: what the dream env and its vector env share — checkpoint, sampler, batched rollout, real context.

:class:`~worldmodel.dream.env.MaskFlowDreamEnv` holds one with a batch of 1,
:class:`~worldmodel.dream.vector_env.MaskFlowDreamVectorEnv` one with a batch of ``num_envs``. Each step runs
one batched step of the cached frame-by-frame rollout (:class:`~worldmodel.sampling.rollout.CachedRollout`):
``steps_per_frame`` unmasking passes plus one commit pass that also yields the reward and termination
logits of the new frame. Context comes from :mod:`worldmodel.dream.context` or from the caller.

Axis letters: b batch (dreams), r dreams reset, m context frames, h w token grid, y x pixels, c colour.
"""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from envs.common.config_check import PRECISIONS
from envs.common.errors import CheckpointError, ConfigError, MaskFlowError
from worldmodel.dream.context import Context, DatasetContext, LiveContext
from worldmodel.sampling import SamplerConfig
from worldmodel.sampling.rollout import DEFAULT_FRAME_GUMBEL, DEFAULT_FRAME_STEPS, CachedRollout, recall_stays
from worldmodel.tokenizer.codec import encode_frames

CONTEXT_SOURCES = ("auto", "dataset", "live", "given")
OBS_TYPES = ("rgb", "tokens")
REWARD_MODES = ("binary", "probability")


class DreamEnvError(MaskFlowError):
    """A call the dream env cannot serve: an action outside the action space, an unknown or conflicting
    reset option, context frames or actions of the wrong shape/dtype, or stepping before ``reset()`` /
    after ``close()``."""


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


class DreamCore:
    """Checkpoint, sampler, a batch of ``batch_size`` cached rollouts and the context source.

    Arguments are those of :class:`~worldmodel.dream.env.MaskFlowDreamEnv` (which documents them); the
    vector env passes the same keywords and its ``num_envs`` as ``batch_size``.
    """

    def __init__(self, batch_size: int, checkpoint: str = "default", *, context: str = "auto",
                 data: str | None = None, split: str = "test", sampler: str = "mgm",
                 steps_per_frame: int | None = None, temperature: float = 1.0, gumbel: float | None = None,
                 schedule: str = "arccos", context_length: int | None = None, obs_type: str = "rgb",
                 reward_mode: str = "binary", reward_threshold: float | None = None, done_threshold: float = 0.5,
                 end_on_reward: bool = False, reward_starts: float = 0.0, reward_lead: int = 16,
                 sight_starts: float = 0.0, policy: str = "random_walk", env_kwargs: dict | None = None,
                 device: str = "cpu",
                 compile: bool = False, action_guidance: float = 0.0, history_guidance: float = 0.0,
                 history_guidance_recent: int = 0, threads: int | None = 0, precision: str = "auto",
                 heading_recall: bool = False):
        from worldmodel.common.device import resolve_device
        from worldmodel.common.threads import governor
        from worldmodel.model.checkpoint import calibrated_threshold, load_world_model

        if threads is not None and not (_is_int(threads) and threads >= 0):
            raise ConfigError(f"threads={threads!r} must be 0 (adapt to the cores other processes leave free), "
                              "N >= 1 (fixed), or None (leave torch's setting alone)")
        if threads is not None:
            governor(threads)

        for name, value, valid in (("context", context, CONTEXT_SOURCES), ("obs_type", obs_type, OBS_TYPES),
                                   ("reward_mode", reward_mode, REWARD_MODES), ("precision", precision, PRECISIONS)):
            if value not in valid:
                raise ConfigError(f"{name}={value!r} is not one of {', '.join(valid)}")
        if steps_per_frame is not None and not (_is_int(steps_per_frame) and steps_per_frame >= 1):
            raise ConfigError(f"steps_per_frame must be an integer >= 1 (unmasking passes per frame) or None (the "
                              f"default, {DEFAULT_FRAME_STEPS}); got {steps_per_frame!r}")
        self.device = resolve_device(device)
        self.model, self.tokenizer, self.meta = load_world_model(checkpoint, device=self.device)
        if self.tokenizer is None:
            raise CheckpointError(f"checkpoint {self.meta['path']} carries no tokenizer, so it cannot show frames")
        k = int(self.model.cfg.max_frames)
        if context_length is not None and not (_is_int(context_length) and 1 <= context_length <= k - 1):
            raise ConfigError(f"context_length must be an integer in [1, {k - 1}] (the model's window is {k} frames) "
                              f"or None (= {k - 1}); got {context_length!r}")
        self.context_length = k - 1 if context_length is None else int(context_length)
        self.grid = tuple(int(g) for g in self.model.cfg.token_grid)
        self.vocab_size = int(self.model.cfg.vocab_size)
        self.resolution = int(self.tokenizer.cfg.resolution)
        self.meanings = tuple(self.meta["action_space"]["meanings"])
        self.num_actions = int(self.meta["action_space"]["n"])
        self.obs_type, self.reward_mode = obs_type, reward_mode
        if reward_threshold is None:            # the checkpoint's calibrated threshold (maskflow calibrate), else 0.5
            reward_threshold = calibrated_threshold(self.meta.get("reward_calibration"))
        for name, value in (("reward_threshold", reward_threshold), ("done_threshold", done_threshold)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"{name}={value!r} must be a probability in [0, 1]")
        self.reward_threshold, self.done_threshold = float(reward_threshold), float(done_threshold)
        if not isinstance(end_on_reward, (bool, np.bool_)):
            raise ConfigError(f"end_on_reward must be True or False, got {end_on_reward!r}")
        self.end_on_reward = bool(end_on_reward)
        masking = str(self.meta.get("train_config", {}).get("scheduler", "sigmoid"))
        steps = DEFAULT_FRAME_STEPS if steps_per_frame is None else int(steps_per_frame)
        self.sampler = SamplerConfig(sampler, steps=steps, temperature=temperature,
                                     gumbel=DEFAULT_FRAME_GUMBEL if gumbel is None else gumbel, schedule=schedule,
                                     masking=masking, action_guidance=action_guidance,
                                     history_guidance=history_guidance,
                                     history_guidance_recent=history_guidance_recent)
        stays = recall_stays(self.model, self.meanings, heading_recall, str(self.meta["path"]))
        self.rollout = CachedRollout(self.model, self.sampler, batch_size, device=self.device, compile=compile,
                                     precision=precision, stays=stays)
        if compile:     # every step decodes its frames; the encoder runs only on a reset's context
            self.tokenizer.compile_nets(encoder=False)
        self.batch_size = batch_size
        self.source_name = ("dataset" if data else "live") if context == "auto" else context
        self.source: DatasetContext | LiveContext | None = None
        self.given: dict[int, Context] = {}             # last caller-given context per dream
        if self.source_name == "dataset":
            if not data:
                raise ConfigError("context='dataset' needs data=DIR (a frames or token dataset of the real env)")
            self.source = DatasetContext(data, split, self.context_length, self.meanings, self.tokenizer, self.grid,
                                         reward_starts, reward_lead, sight_starts)
        elif reward_starts or sight_starts:
            raise ConfigError(f"reward_starts={reward_starts} and sight_starts={sight_starts} need dataset context "
                              f"(data=DIR), not context={self.source_name!r}")
        if self.source_name == "live":
            env_id = self.meta.get("env_id") or "DMLabMaze-v0"
            kwargs = {**dict(self.meta.get("env_kwargs") or {}), **dict(env_kwargs or {})}
            self.source = LiveContext(env_id, kwargs, self.context_length, self.meanings, policy, self.tokenizer)

    def probe_env(self, env_id: str = "", env_kwargs: dict | None = None) -> tuple[str, dict]:
        """The live mazes an evaluation plays: (env id, ``gym.make`` kwargs). Those given replace the checkpoint's
        (not merged: a dataset's {} means the env's defaults); where none are given, those the checkpoint was
        trained in. A model trained on datasets that disagree records none, so compare it with another by
        passing them."""
        if env_kwargs is None:
            env_kwargs = {} if env_id else self.meta.get("env_kwargs")
        return env_id or self.meta.get("env_id") or "DMLabMaze-v0", dict(env_kwargs or {})

    # -- spaces -----------------------------------------------------------------------------------
    def observation_space(self) -> spaces.Box:
        """Observation space of one dream: RGB frames or token grids."""
        if self.obs_type == "tokens":
            return spaces.Box(0, self.vocab_size - 1, self.grid, np.int64)
        return spaces.Box(0, 255, (self.resolution, self.resolution, 3), np.uint8)

    def action_space(self) -> spaces.Discrete:
        """The action space of the real env the model was trained on."""
        return spaces.Discrete(self.num_actions)

    # -- context ----------------------------------------------------------------------------------
    def context(self, rng: np.random.Generator, options: dict | None, row: int = 0) -> Context:
        """Context of dream ``row``: ``options['context_frames'|'context_tokens']`` when given (remembered),
        else the source; with ``context='given'`` a reset without options reuses the row's last given one.
        ``options`` are checked by :func:`check_reset_options` first."""
        options = options or {}
        if options.get("context_frames") is not None or options.get("context_tokens") is not None:
            self.given[row] = self.given_context(options.get("context_frames"), options.get("context_tokens"),
                                                 options.get("context_actions"))
            return self.given[row]
        if self.source is None:
            if row in self.given:
                return self.given[row]
            raise DreamEnvError("context='given' needs reset(options={'context_frames': (m, y, x, 3) uint8, "
                                "'context_actions': (m,) int}) (or 'context_tokens': (m, h, w) int)")
        return self.source.draw(rng)

    def given_context(self, frames: Any, tokens: Any, actions: Any) -> Context:
        """Check and encode caller-given context; only the last ``context_length`` frames are kept."""
        r = self.resolution
        if frames is not None:
            f = np.asarray(frames)
            if f.dtype != np.uint8 or f.ndim != 4 or f.shape[1:] != (r, r, 3) or len(f) < 1:
                raise DreamEnvError(f"context_frames must be uint8 of shape (m >= 1, {r}, {r}, 3); got {f.dtype} "
                                    f"{f.shape}")
            f = f[-self.context_length:]
            tok = encode_frames(self.tokenizer, f)
        else:
            t = np.asarray(tokens)
            if not np.issubdtype(t.dtype, np.integer) or t.ndim != 3 or t.shape[1:] != self.grid or len(t) < 1:
                raise DreamEnvError(f"context_tokens must be integer ids of shape (m >= 1, {self.grid[0]}, "
                                    f"{self.grid[1]}); got {t.dtype} {t.shape}")
            if t.min() < 0 or t.max() >= self.vocab_size:
                raise DreamEnvError(f"context_tokens must lie in [0, {self.vocab_size}); got [{t.min()}, {t.max()}]")
            t = t[-self.context_length:]
            tok = torch.as_tensor(t.astype(np.int64), device=self.device)
        m = len(tok)
        if actions is None:
            a = np.full(m, -1, np.int64)
        else:
            a = np.asarray(actions)
            if not np.issubdtype(a.dtype, np.integer) or a.ndim != 1 or len(a) < m:
                raise DreamEnvError(f"context_actions must be a 1-D integer array with one action per context frame "
                                    f"(-1 = none); got {a.dtype} {a.shape} for {m} frames")
            a = a[-m:].astype(np.int64)
            if a.min() < -1 or a.max() >= self.num_actions:
                raise DreamEnvError(f"context_actions must lie in [-1, {self.num_actions}); got [{a.min()}, {a.max()}]")
        return Context(tok, torch.as_tensor(a), "given")

    def reset_rows(self, rows: np.ndarray, contexts: list[Context]) -> torch.Tensor:
        """Restart the dreams flagged in ``rows`` (b,) bool from ``contexts`` (one per set row, in order);
        returns the last context frame of each, (r h w). Rows with equal context lengths reset together."""
        idx = np.flatnonzero(rows)
        lengths = np.array([len(c.tokens) for c in contexts])
        for m in np.unique(lengths):
            sel = np.flatnonzero(lengths == m)
            mask = np.zeros(self.batch_size, bool)
            mask[idx[sel]] = True
            tok = torch.stack([contexts[j].tokens for j in sel]).to(self.device)
            act = torch.stack([contexts[j].actions for j in sel]).to(self.device)
            self.rollout.reset(tok, act, rows=torch.as_tensor(mask, device=self.device))
        return torch.stack([c.tokens[-1].to(self.device) for c in contexts])

    # -- dreaming ---------------------------------------------------------------------------------
    def step(self, actions: np.ndarray, generator: torch.Generator):
        """Imagine one frame per dream: tokens (b h w), reward probability (b,), done probability (b,), NFE."""
        out = self.rollout.step(torch.as_tensor(actions, dtype=torch.long, device=self.device), generator)
        p_reward = torch.sigmoid(out.reward_logits.float()).cpu().numpy()
        p_done = torch.sigmoid(out.done_logits.float()).cpu().numpy()
        return out.tokens, p_reward, p_done, out.nfe

    def terminations(self, p_reward: np.ndarray, p_done: np.ndarray) -> np.ndarray:
        """Which dreams end (b,) bool: the termination head past ``done_threshold``, and with ``end_on_reward``
        also a reward (a respawn-mode reach moves the real agent to a fresh start, which a dream cannot
        know: without it a dream may stay at the goal and collect its reward frame after frame)."""
        ended = p_done > self.done_threshold
        if self.end_on_reward:
            ended = ended | (p_reward > self.reward_threshold)
        return ended

    def rewards(self, p_reward: np.ndarray) -> np.ndarray:
        """Reward from the reward head: 1/0 by threshold (``binary``) or the probability itself."""
        if self.reward_mode == "probability":
            return p_reward.astype(np.float64)
        return (p_reward > self.reward_threshold).astype(np.float64)

    def frames(self, tokens: torch.Tensor) -> np.ndarray:
        """(b h w) tokens -> (b y x c) uint8 frames on the host, decoded at the rollout's precision (bf16 decodes
        1.6–2.2× faster on a CPU with AVX512-BF16; an RL agent sees every frame)."""
        with torch.inference_mode():
            return self.tokenizer.decode(tokens, dtype=self.rollout.dtype).cpu().numpy()

    def observe(self, tokens: torch.Tensor) -> np.ndarray:
        """Observations of a batch: decoded frames (b y x c) uint8, or the tokens (b h w) int64."""
        return tokens.cpu().numpy().astype(np.int64) if self.obs_type == "tokens" else self.frames(tokens)

    def memory_bytes(self) -> int:
        """Bytes held by the rollouts' KV cache (constant over any number of steps)."""
        return self.rollout.memory_bytes()

    def close(self) -> None:
        """Close the context source and drop the model, tokenizer and cache."""
        if self.source is not None:
            self.source.close()
        self.source = self.rollout = self.model = self.tokenizer = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
