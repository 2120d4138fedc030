"""``MaskFlowDream-v0``: a true Gymnasium environment whose frames are imagined by a MaskFlow world model.

    env = gymnasium.make("MaskFlowDream-v0", checkpoint="default")     # after `import envs`
    obs, info = env.reset(seed=0)        # context from a real maze episode; obs = last context frame
    obs, reward, terminated, truncated, info = env.step(action)          # one imagined frame

Each step runs the cached frame-by-frame rollout (:class:`~worldmodel.sampling.rollout.CachedRollout`)
once: ``steps_per_frame`` unmasking passes plus one commit pass that also yields the reward and
termination logits of the new frame. :class:`~worldmodel.dream.core.DreamCore` holds everything both this
env and :class:`~worldmodel.dream.vector_env.MaskFlowDreamVectorEnv` share: the checkpoint, the sampler,
the batched rollout and the source of real context.

Axis letters: b batch (dreams), m context frames, h w token grid, y x pixels, c colour.
"""

from __future__ import annotations

import difflib
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import envs  # noqa: F401  (registers MaskFlowDream-v0 and the real envs that give context)
from envs.common.errors import ConfigError
from worldmodel.dream.core import DreamCore, DreamEnvError

RESET_OPTIONS = ("context_frames", "context_tokens", "context_actions")
DEFAULT_MAX_EPISODE_STEPS = 300         # (also registered in envs/__init__.py, which cannot import this module)


def _describe(value: Any) -> str:
    """An option's value, short enough for an error message: an array by its dtype and shape."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"<{value.dtype} array of shape {tuple(value.shape)}>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_reset_options(options: dict | None, allowed: tuple[str, ...] = RESET_OPTIONS) -> dict[str, Any]:
    """``reset(options=...)`` as a new dict; refused when a key is not in ``allowed`` (a typo would silently
    give the source's context instead) or when both context_frames and context_tokens are given."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise DreamEnvError(f"reset options must be a dict with keys among {', '.join(allowed)}; got "
                            f"{type(options).__name__}")
    for key, value in options.items():
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise DreamEnvError(f"unknown reset option {key!r}={_describe(value)}{hint}; allowed keys: "
                                f"{', '.join(allowed)}")
    frames, tokens, actions = (options.get(k) for k in RESET_OPTIONS)
    if frames is not None and tokens is not None:
        raise DreamEnvError(f"reset options give both context_frames={_describe(frames)} and context_tokens="
                            f"{_describe(tokens)}; give one of them (frames are encoded, tokens used as they are)")
    if actions is not None and frames is None and tokens is None:
        raise DreamEnvError(f"reset option context_actions={_describe(actions)} needs context_frames or "
                            "context_tokens (the frames those actions led to)")
    return dict(options)


class MaskFlowDreamEnv(gym.Env):
    """A Gymnasium env that dreams: every ``step`` imagines the next 64×64 frame with a MaskFlow world model.

    ## Arguments
    ``checkpoint``: a `maskflow train` output directory, or ``"default"`` / ``"memory"`` (the shipped models).
    ``context``: where each episode's real context comes from — ``"dataset"`` (random windows of
    ``data=DIR``'s ``split`` episodes), ``"live"`` (a fresh held-out maze of the real env recorded in the
    checkpoint, with its recorded ``env_kwargs`` updated by ``env_kwargs``, explored by ``policy``),
    ``"given"`` (only ``reset(options=...)``), or ``"auto"`` (dataset when ``data`` is set, else live).
    ``reward_starts`` (dataset context, default 0): the share of episodes whose context ends 1 …
    ``reward_lead`` (16) frames before a real reward in ``data``, so that RL with a short horizon meets
    rewards (DIAMOND and IRIS start dreams from real states; these are the rewarded ones).
    ``sight_starts`` (dataset context, default 0; at most 1 − ``reward_starts``): a further share whose context
    saw the goal and then lost it (from ``data``'s poses, goal and layout), so a dream that turns back meets a
    goal its window holds.
    Drift controls: ``sampler`` (mgm | mgm_tfree | fm | df), ``steps_per_frame`` (None = the default,
    ``DEFAULT_FRAME_STEPS``; see "Speed" below), ``temperature``, ``gumbel`` (None = ``DEFAULT_FRAME_GUMBEL``, 8),
    ``schedule``,
    ``context_length`` (frames of real context, default window − 1, the most the model can see),
    ``action_guidance`` / ``history_guidance`` (classifier-free guidance weights, 0 = off; each one on
    adds a model pass per unmasking step, see ``SamplerConfig``), ``history_guidance_recent`` (frames the
    history guidance pass still sees; 0 = none; n > 0 guides towards the frames older than the last n).
    ``heading_recall`` (models with heading rotary): keep the frames that leave the window by heading, and
    while the camera only turns in place, let a new frame facing a heading the window lacks attend to the
    kept view instead of the oldest frame (loops longer than the window; ``worldmodel.model.cache``).
    ``max_episode_steps`` (default 300, None = never truncate), ``device``, ``render_mode`` (None |
    "rgb_array"), ``timing_info`` (add the step's wall clock to ``info``), ``compile`` (torch.compile the
    rollout and the tokenizer's decoder; needs a C++ compiler on a CPU, where the rollout's did not pay),
    ``precision`` (see "Speed"), ``threads`` (torch CPU threads:
    0 = adapt to the cores other processes leave free, so a dream beside another job is not stalled;
    N = fixed; None = leave the process's setting alone).

    ## Speed
    A step costs ``steps_per_frame`` + 1 model passes (one more per guidance term and step), so frames/s
    scale with about 1 / (steps + 1): what a user trades by changing ``steps_per_frame`` is speed against
    how carefully each frame is filled in. Measured on the shipped model (2-core CPU, bf16; dream PSNR
    paired against release 1's 20 steps on the same 128 held-out windows; docs/results.md#fast-dreams):

    ====== ========== =================================== ===================================
    steps  passes     dream PSNR, frames 1-16 / 17-64       next-frame accuracy (teacher-forced, *)
    ====== ========== =================================== ===================================
    4      5          -0.04 / +0.31 dB                      0.571
    8      9          -0.23 / -0.18 dB (default)            0.589
    12     13         -0.20 / -0.24 dB                      0.592
    20     21         -0.12 / -0.17 dB (release 1: 0 / 0)   0.596
    ====== ========== =================================== ===================================

    (*) of the 28,000-step model before release 1's fine-tune, fp32 (``benchmarks/rollout.py``).
    The dream's PSNR against the real future cannot tell these apart (every margin is within the
    ±0.3 dB noise of that eval); the accuracy of a single predicted frame can. The default env runs 3.3×
    release 1's frames/s single and 7.7× batched (N = 16), ``benchmarks/dream_speed.py``.
    ``precision``: "auto" (default) computes in bf16 where the hardware does it natively (a CPU with
    AVX512-BF16 or AMX, a CUDA GPU with bf16) and in fp32 elsewhere; "fp32" / "bf16" force one. The
    frames are decoded at the same precision (bf16: within a quarter of a grey level of fp32 on average).

    ## Spaces
    Observation ``Box(0, 255, (64, 64, 3), uint8)``, or with ``obs_type="tokens"`` the token grid
    ``Box(0, V − 1, (h, w), int64)``. Action: ``Discrete(n)`` of the real env the model was trained on.

    ## Reward, termination, truncation
    The commit pass of each frame gives reward and termination logits. ``reward`` is 1.0 when
    sigmoid(reward logit) > ``reward_threshold`` else 0.0, or the probability itself with
    ``reward_mode="probability"``. ``reward_threshold=None`` (default) takes the checkpoint's calibrated
    threshold (``reward_calibration.json``, written by ``maskflow calibrate``), else 0.5. ``terminated``
    is sigmoid(done logit) > ``done_threshold`` (0.5), and with ``end_on_reward=True`` also a reward: in
    the respawn task a reach moves the real agent to a fresh start, which the dream cannot know, so for RL
    the reach ends the dream (else a policy may learn to stay at a dreamed goal that keeps paying).
    ``truncated`` is True when the episode reaches ``max_episode_steps`` steps (independently of
    ``terminated``). Made by ``gymnasium.make`` the env has no limit of its own: gymnasium's TimeLimit is
    the limit — the registered 300 steps, or ``gymnasium.make(..., max_episode_steps=N)`` — and
    ``env.spec.max_episode_steps`` reports it.

    ## Reset and seeding
    ``reset(seed=s)`` seeds every random draw: the context (episode and window, or live maze and policy)
    and the torch generator of every sampling step, so the same seed and actions give the same dream.
    ``options`` may carry ``context_frames`` (m, 64, 64, 3) uint8 or ``context_tokens`` (m, h, w) and
    ``context_actions`` (m,) (the action that led to each frame, -1 = none); the last
    ``context_length`` frames are used; with ``context="given"`` a reset without them restarts from the
    last given context (so autoreset works). Any other option key, or both frames and tokens, is a
    :class:`DreamEnvError`. The returned observation is the last context frame as the model sees it (its
    tokenizer reconstruction).

    ## Info
    ``step``: ``nfe`` (model calls for this frame), ``reward_prob``, ``done_prob``, and with
    ``timing_info=True`` ``step_time_s`` (wall clock; off by default, as gymnasium's env checker compares
    the infos of two seeded runs). ``reset``: ``nfe`` (commit passes over the context),
    ``context_frames``, ``context_source``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(self, checkpoint: str = "default", *, context: str = "auto", data: str | None = None,
                 split: str = "test", sampler: str = "mgm", steps_per_frame: int | None = None,
                 temperature: float = 1.0, gumbel: float | None = None, schedule: str = "arccos",
                 context_length: int | None = None, max_episode_steps: int | None = DEFAULT_MAX_EPISODE_STEPS,
                 obs_type: str = "rgb",
                 reward_mode: str = "binary", reward_threshold: float | None = None, done_threshold: float = 0.5,
                 end_on_reward: bool = False, reward_starts: float = 0.0, reward_lead: int = 16,
                 sight_starts: float = 0.0, policy: str = "random_walk", env_kwargs: dict | None = None,
                 device: str = "cpu", render_mode: str | None = None, timing_info: bool = False, compile: bool = False,
                 action_guidance: float = 0.0, history_guidance: float = 0.0, history_guidance_recent: int = 0,
                 threads: int | None = 0, precision: str = "auto", heading_recall: bool = False):
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ConfigError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps}")
        self.core = DreamCore(1, checkpoint, context=context, data=data, split=split, sampler=sampler,
                              steps_per_frame=steps_per_frame, temperature=temperature, gumbel=gumbel,
                              schedule=schedule, context_length=context_length, obs_type=obs_type,
                              reward_mode=reward_mode, reward_threshold=reward_threshold,
                              done_threshold=done_threshold, end_on_reward=end_on_reward,
                              reward_starts=reward_starts, reward_lead=reward_lead, sight_starts=sight_starts,
                              policy=policy,
                              env_kwargs=env_kwargs, device=device,
                              compile=compile, action_guidance=action_guidance, history_guidance=history_guidance,
                              history_guidance_recent=history_guidance_recent, threads=threads, precision=precision,
                              heading_recall=heading_recall)
        self.observation_space = self.core.observation_space()
        self.action_space = self.core.action_space()
        self.action_meanings = self.core.meanings
        self.render_mode = render_mode
        self.max_episode_steps = max_episode_steps
        self.timing_info = timing_info
        self._tokens: torch.Tensor | None = None        # (1 h w) current frame
        self._frame: np.ndarray | None = None           # its decoded RGB, when already computed
        self._generator: torch.Generator | None = None
        self._elapsed = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        options = check_reset_options(options)
        super().reset(seed=seed)
        if self.core.rollout is None:
            raise DreamEnvError("this env is closed; make a new one")
        # one draw from the env's seeded RNG seeds every sampling step of this episode
        self._generator = torch.Generator(device=self.core.device).manual_seed(int(self.np_random.integers(2**63 - 1)))
        ctx = self.core.context(self.np_random, options)
        self._tokens = self.core.reset_rows(np.ones(1, bool), [ctx])
        self._elapsed = 0
        obs = self._observe()
        return obs, {"nfe": len(ctx.tokens), "context_frames": len(ctx.tokens), "context_source": ctx.source}

    def step(self, action):
        if self._generator is None or self.core.rollout is None:
            raise DreamEnvError("call reset() before step()" if self.core.rollout is not None else "this env is closed")
        if isinstance(action, (bool, np.bool_)) or not self.action_space.contains(action):
            raise DreamEnvError(f"action {action!r} is not in {self.action_space} "
                                f"(meanings: {', '.join(self.action_meanings)})")
        t0 = time.perf_counter()
        self._tokens, p_reward, p_done, nfe = self.core.step(np.asarray([int(action)]), self._generator)
        obs = self._observe()
        self._elapsed += 1
        terminated = bool(self.core.terminations(p_reward, p_done)[0])
        truncated = self.max_episode_steps is not None and self._elapsed >= self.max_episode_steps
        info: dict[str, Any] = {"nfe": int(nfe), "reward_prob": float(p_reward[0]), "done_prob": float(p_done[0])}
        if self.timing_info:
            info["step_time_s"] = time.perf_counter() - t0
        return obs, float(self.core.rewards(p_reward)[0]), terminated, bool(truncated), info

    def _observe(self) -> np.ndarray:
        self._frame = None
        if self.core.obs_type == "tokens":
            return self.core.observe(self._tokens)[0]
        self._frame = self.core.frames(self._tokens)[0]
        return self._frame.copy()

    def render(self) -> np.ndarray | None:
        """The current frame (y x c) uint8 in ``rgb_array`` mode (decoded even when observing tokens)."""
        if self.render_mode != "rgb_array" or self._tokens is None or self.core.rollout is None:
            return None
        if self._frame is None:
            self._frame = self.core.frames(self._tokens)[0]
        return self._frame.copy()

    def memory_bytes(self) -> int:
        """Bytes held by the KV cache of the dream (constant over an episode of any length)."""
        return self.core.memory_bytes()

    def close(self) -> None:
        """Free the model, cache and context source; safe to call twice."""
        if getattr(self, "core", None) is not None and self.core.rollout is not None:
            self.core.close()
        self._tokens = self._frame = self._generator = None
        super().close()


def make_dream_env(**kwargs: Any) -> MaskFlowDreamEnv:
    """Entry point of ``gymnasium.make("MaskFlowDream-v0", ...)``: the env without a limit of its own, so that
    gymnasium's TimeLimit (the registered 300 steps, or ``make(..., max_episode_steps=N)``, a keyword
    ``make`` keeps for itself) is the one limit and ``env.spec.max_episode_steps`` tells it."""
    return MaskFlowDreamEnv(**{**kwargs, "max_episode_steps": None})
