"""``MaskFlowDreamVectorEnv``: N dreams batched in one forward pass, a true ``gymnasium.vector.VectorEnv``.

    venv = gymnasium.make_vec("MaskFlowDream-v0", num_envs=16, checkpoint="default")   # after `import envs`
    obs, info = venv.reset(seed=0)                  # env i is seeded with 0 + i
    obs, rewards, terminated, truncated, info = venv.step(actions)                    # actions (N,)

Every step runs one batched :class:`~worldmodel.sampling.rollout.CachedRollout` step for all N dreams
and one batched decode. Autoreset follows Gymnasium 1.x: ``NEXT_STEP`` by default (the step after an
episode ends resets that env, returning its first observation with reward 0 and no flags; its
action is ignored), or ``SAME_STEP`` (the ended env is reset in the same step; its last observation
and info go to ``info["final_obs"]`` / ``info["final_info"]``). Infos are batched dicts of arrays
with ``_key`` masks, as in :class:`gymnasium.vector.SyncVectorEnv`.

Seeding: ``reset(seed=s)`` gives env i the seed s + i (or ``seed=[s0, s1, …]``); env i's seed draws
its contexts. The N dreams share one torch generator (one batched sampling call per step), seeded
from all N seeds at a full reset, so the vector env as a whole is reproducible from its seeds.

Axis letters: b batch (dreams, = num_envs), h w token grid, y x pixels, c colour.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.common.errors import ConfigError
from worldmodel.dream.core import DreamCore, DreamEnvError
from worldmodel.dream.env import DEFAULT_MAX_EPISODE_STEPS, RESET_OPTIONS, check_reset_options


def _with_mask(infos: dict[str, Any], key: str, values: np.ndarray, mask: np.ndarray) -> None:
    """Add a batched info entry and its ``_key`` mask (the SyncVectorEnv convention)."""
    infos[key] = values
    infos[f"_{key}"] = mask.copy()


class MaskFlowDreamVectorEnv(VectorEnv):
    """``num_envs`` dreams of one checkpoint, stepped in one batched forward pass on one device.

    Keyword arguments are those of :class:`~worldmodel.dream.env.MaskFlowDreamEnv` (checkpoint, context
    source, drift controls, ``max_episode_steps``, ``obs_type``, reward settings, device, render_mode,
    ``timing_info``), plus ``autoreset_mode`` (``AutoresetMode.NEXT_STEP`` default, or ``SAME_STEP``).
    Through ``gymnasium.make_vec`` the limit is ``max_episode_steps=N`` (default: the registered 300), and
    ``spec.max_episode_steps`` reports this env's limit.
    ``reset(options=...)`` accepts ``reset_mask`` (N,) bool (reset only those envs) and batched
    ``context_frames`` (r, m, 64, 64, 3) uint8 / ``context_tokens`` (r, m, h, w) with ``context_actions``
    (r, m), r = envs reset (with ``context="given"``, autoresets reuse each env's last given context);
    any other key, or both frames and tokens, is a ``DreamEnvError``.
    ``info`` holds ``nfe``, ``reward_prob``, ``done_prob`` and, with ``timing_info=True`` (off by default),
    ``step_time_s`` (the batched step's wall clock) per env; ``render()`` returns a tuple of N frames.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15, "autoreset_mode": AutoresetMode.NEXT_STEP}
    _spec: EnvSpec | None = None

    def __init__(self, num_envs: int = 16, checkpoint: str = "default", *,
                 autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
                 max_episode_steps: int | None = DEFAULT_MAX_EPISODE_STEPS, render_mode: str | None = None,
                 timing_info: bool = False, **kwargs: Any):
        if num_envs < 1:
            raise ConfigError(f"num_envs must be >= 1, got {num_envs}")
        mode = AutoresetMode(autoreset_mode)
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ConfigError(f"autoreset_mode must be NEXT_STEP or SAME_STEP, got {mode}")
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ConfigError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps}")
        self.core = DreamCore(num_envs, checkpoint, **kwargs)
        self.num_envs = num_envs
        self.metadata = {**type(self).metadata, "autoreset_mode": mode}
        self.autoreset_mode = mode
        self.render_mode = render_mode
        self.max_episode_steps = max_episode_steps
        self.timing_info = timing_info
        self.single_observation_space = self.core.observation_space()
        self.single_action_space = self.core.action_space()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.action_meanings = self.core.meanings
        self._rngs: list[np.random.Generator | None] = [None] * num_envs
        self._generator: torch.Generator | None = None
        self._tokens: torch.Tensor | None = None                     # (b h w) current frames
        self._elapsed = np.zeros(num_envs, np.int64)
        self._autoreset = np.zeros(num_envs, bool)

    @property
    def spec(self) -> EnvSpec | None:
        """The spec ``gymnasium.make_vec`` sets, its ``max_episode_steps`` this env's own limit."""
        return self._spec

    @spec.setter
    def spec(self, spec: EnvSpec | None) -> None:
        # make_vec copies the registered limit (300) into the spec even when its kwargs set another one
        self._spec = None if spec is None else dataclasses.replace(spec, max_episode_steps=self.max_episode_steps)

    # -- reset ------------------------------------------------------------------------------------
    def _seed_rows(self, seed: int | list[int | None] | None, rows: np.ndarray) -> None:
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ConfigError(f"reset(seed=[...]) needs {self.num_envs} seeds (one per env), got {len(seeds)}")
        for i in np.flatnonzero(rows):
            if seeds[i] is not None or self._rngs[i] is None:
                self._rngs[i] = np.random.default_rng(seeds[i])
        if seed is not None or self._generator is None:
            # the shared sampling generator follows every env's seed
            state = [int(self._rngs[i].integers(2**32)) for i in range(self.num_envs) if self._rngs[i] is not None]
            g_seed = int(np.random.SeedSequence(state).generate_state(1, np.uint64)[0])
            self._generator = torch.Generator(device=self.core.device).manual_seed(g_seed)

    def _contexts(self, rows: np.ndarray, options: dict | None):
        """One context per reset row: batched ones from ``options``, else each env's source draw."""
        options = dict(options or {})
        r = int(rows.sum())
        given = {k: options.get(k) for k in ("context_frames", "context_tokens", "context_actions")}
        if given["context_frames"] is None and given["context_tokens"] is None:
            return [self.core.context(self._rngs[i], None, row=i) for i in np.flatnonzero(rows)]
        for k, v in given.items():
            if v is not None and len(v) != r:
                raise DreamEnvError(f"{k} must be batched over the {r} envs being reset, got length {len(v)}")
        return [self.core.context(self._rngs[i], {k: v[j] for k, v in given.items() if v is not None}, row=i)
                for j, i in enumerate(np.flatnonzero(rows))]

    def _reset_rows(self, rows: np.ndarray, options: dict | None) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset ``rows``; returns their observations (r, ...) and the batched reset info entries."""
        contexts = self._contexts(rows, options)
        last = self.core.reset_rows(rows, contexts)
        if self._tokens is None:
            self._tokens = last.new_zeros(self.num_envs, *last.shape[1:])
        self._tokens[torch.as_tensor(rows, device=self._tokens.device)] = last
        self._elapsed[rows] = 0
        self._autoreset[rows] = False
        infos: dict[str, Any] = {}
        nfe = np.zeros(self.num_envs, np.int64)
        frames = np.zeros(self.num_envs, np.int64)
        src = np.full(self.num_envs, None, dtype=object)
        for i, c in zip(np.flatnonzero(rows), contexts, strict=True):
            nfe[i], frames[i], src[i] = len(c.tokens), len(c.tokens), c.source
        _with_mask(infos, "nfe", nfe, rows)
        _with_mask(infos, "context_frames", frames, rows)
        _with_mask(infos, "context_source", src, rows)
        return self.core.observe(last), infos

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        """Reset every env (or those in ``options['reset_mask']``); returns batched (obs, info)."""
        if self.core.rollout is None:
            raise DreamEnvError("this vector env is closed; make a new one")
        options = check_reset_options(options, ("reset_mask", *RESET_OPTIONS))
        rows = options.pop("reset_mask", None)
        if rows is None:
            rows = np.ones(self.num_envs, bool)
        else:
            rows = np.asarray(rows)
            if rows.dtype != np.bool_ or rows.shape != (self.num_envs,) or not rows.any():
                raise DreamEnvError(f"options['reset_mask'] must be a bool array of shape ({self.num_envs},) with "
                                    f"at least one True; got {rows.dtype} {rows.shape}")
            if self._tokens is None and not rows.all():
                raise DreamEnvError("the first reset must reset every env (no reset_mask)")
        self._seed_rows(seed, rows)
        obs_rows, infos = self._reset_rows(rows, options)
        return self._batch_obs(rows, obs_rows), infos

    # -- step -------------------------------------------------------------------------------------
    def step(self, actions):
        """Imagine one frame in every env; autoreset as declared in ``metadata['autoreset_mode']``."""
        if self._tokens is None or self.core.rollout is None:
            raise DreamEnvError("call reset() before step()" if self.core.rollout is not None else
                                "this vector env is closed")
        a = np.asarray(actions)
        if a.shape != (self.num_envs,) or not np.issubdtype(a.dtype, np.integer) or not self.action_space.contains(
                a.astype(self.action_space.dtype)):
            raise DreamEnvError(f"actions must be {self.num_envs} integers in [0, {self.core.num_actions}) "
                                f"({', '.join(self.action_meanings)}); got {a.dtype} {a.shape}: {a!r}")
        t0 = time.perf_counter()
        n = self.num_envs
        resetting = self._autoreset.copy() if self.autoreset_mode == AutoresetMode.NEXT_STEP else np.zeros(n, bool)
        stepping = ~resetting
        rewards, terminated, truncated = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
        p_reward, p_done, nfe = np.zeros(n, np.float32), np.zeros(n, np.float32), 0
        if stepping.any():
            # all rows run in the one batched pass; rows about to reset are overwritten right after
            tokens, p_reward, p_done, nfe = self.core.step(np.where(stepping, a, 0), self._generator)
            self._tokens = torch.where(torch.as_tensor(stepping, device=tokens.device)[:, None, None],
                                       tokens, self._tokens)
            self._elapsed[stepping] += 1
            rewards = np.where(stepping, self.core.rewards(p_reward), 0.0)
            terminated = stepping & self.core.terminations(p_reward, p_done)
            limit = self.max_episode_steps if self.max_episode_steps is not None else np.iinfo(np.int64).max
            truncated = stepping & (self._elapsed >= limit)
        obs = self.core.observe(self._tokens)
        infos: dict[str, Any] = {}
        _with_mask(infos, "nfe", np.where(stepping, nfe, 0).astype(np.int64), stepping)
        _with_mask(infos, "reward_prob", np.where(stepping, p_reward, 0).astype(np.float32), stepping)
        _with_mask(infos, "done_prob", np.where(stepping, p_done, 0).astype(np.float32), stepping)
        ended = terminated | truncated
        if self.autoreset_mode == AutoresetMode.SAME_STEP and ended.any():
            final_obs = np.full(n, None, dtype=object)
            for i in np.flatnonzero(ended):
                final_obs[i] = obs[i].copy()                 # obs[i] itself is overwritten by the reset below
            final_info = dict(infos)
            _with_mask(infos, "final_obs", final_obs, ended)
            infos["final_info"] = final_info
            resetting = ended
        if resetting.any():
            obs_rows, reset_info = self._reset_rows(resetting, None)
            obs[resetting] = obs_rows
            for k in ("context_frames", "context_source"):
                infos[k], infos[f"_{k}"] = reset_info[k], reset_info[f"_{k}"]
            if self.autoreset_mode == AutoresetMode.NEXT_STEP:   # the reset's commit passes are this step's NFE
                infos["nfe"] = np.where(resetting, reset_info["nfe"], infos["nfe"])
                infos["_nfe"] = np.ones(n, bool)
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._autoreset = ended
        if self.timing_info:
            _with_mask(infos, "step_time_s", np.full(n, time.perf_counter() - t0), np.ones(n, bool))
        return obs, rewards, terminated, truncated, infos

    def _batch_obs(self, rows: np.ndarray, obs_rows: np.ndarray) -> np.ndarray:
        obs = self.core.observe(self._tokens) if not rows.all() else obs_rows
        if not rows.all():
            obs[rows] = obs_rows
        return obs

    # -- the rest ---------------------------------------------------------------------------------
    def render(self) -> tuple[np.ndarray, ...] | None:
        """The current frame of every env, (y x c) uint8 each, in ``rgb_array`` mode."""
        if self.render_mode != "rgb_array" or self._tokens is None or self.core.rollout is None:
            return None
        return tuple(self.core.frames(self._tokens))

    def memory_bytes(self) -> int:
        """Bytes held by the batched KV cache (constant over any number of steps)."""
        return self.core.memory_bytes()

    def close_extras(self, **kwargs: Any) -> None:
        """Free the model, cache and context source."""
        if self.core.rollout is not None:
            self.core.close()
        self._tokens = self._generator = None
