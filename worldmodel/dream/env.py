"""``MaskFlowDream-v0``: a true Gymnasium environment whose frames are imagined by a MaskFlow world model.

    env = gymnasium.make("MaskFlowDream-v0", checkpoint="default")     # after `import envs`
    obs, info = env.reset(seed=0)        # context from a real maze episode; obs = last context frame
    obs, reward, terminated, truncated, info = env.step(action)          # one imagined frame

Each step runs the cached frame-by-frame rollout (:class:`~worldmodel.sampling.rollout.CachedRollout`)
once: ``steps_per_frame`` unmasking passes plus one commit pass that also yields the reward and
termination logits of the new frame. :class:`DreamCore` holds everything both the single env and
:class:`~worldmodel.dream.vector_env.MaskFlowDreamVectorEnv` share: the checkpoint, the sampler, the
batched rollout and the source of real context.

Axis letters: b batch (dreams), m context frames, h w token grid, y x pixels, c colour.
"""

from __future__ import annotations

import difflib
import gc
import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

import envs  # noqa: F401  (registers MaskFlowDream-v0 and the real envs that give context)
from envs.common.errors import CheckpointError, ConfigError, MaskFlowError
from worldmodel.dream.verb import encode_frames, info_keys
from worldmodel.sampling import SamplerConfig
from worldmodel.sampling.rollout import DEFAULT_FRAME_GUMBEL, DEFAULT_FRAME_STEPS, CachedRollout

CONTEXT_SOURCES = ("auto", "dataset", "live", "given")
OBS_TYPES = ("rgb", "tokens")
REWARD_MODES = ("binary", "probability")
RESET_OPTIONS = ("context_frames", "context_tokens", "context_actions")
DEFAULT_MAX_EPISODE_STEPS = 300         # (also registered in envs/__init__.py, which cannot import this module)


class DreamEnvError(MaskFlowError):
    """A call the dream env cannot serve: an action outside the action space, an unknown or conflicting
    reset option, context frames or actions of the wrong shape/dtype, or stepping before ``reset()`` /
    after ``close()``."""


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


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


@dataclass
class Context:
    """Real context of one dream: tokens (m h w) long, the actions that led to them (m,) long (-1 = none)."""

    tokens: torch.Tensor
    actions: torch.Tensor
    source: str


class DatasetContext:
    """Context windows cut at random from the episodes of a frames or token dataset."""

    def __init__(self, root: str, split: str, length: int, meanings: tuple[str, ...], tokenizer,
                 grid: tuple[int, int]):
        from envs.dataset import EpisodeDataset

        self.ds = EpisodeDataset(root, split=split)
        if self.ds.action_meanings != tuple(meanings):
            self.ds.close()
            raise CheckpointError(f"the checkpoint was trained on actions {list(meanings)} but dataset {root} "
                                  f"uses {list(self.ds.action_meanings)}; dream from a dataset of the same env")
        self.root, self.split, self.length, self.tokenizer, self.grid = root, split, length, tokenizer, grid

    def draw(self, rng: np.random.Generator) -> Context:
        i = int(rng.integers(len(self.ds)))
        ep = self.ds.episode(i)
        obs = ep[self.ds.kind]
        m = min(self.length, len(obs))
        s = int(rng.integers(len(obs) - m + 1))
        if self.ds.kind == "frames":
            tokens = encode_frames(self.tokenizer, np.asarray(obs[s:s + m]))
        else:
            tokens = torch.as_tensor(np.asarray(obs[s:s + m], np.int64))
            if tuple(tokens.shape[1:]) != self.grid:
                raise CheckpointError(f"token dataset {self.root} has {tuple(tokens.shape[1:])} grids but the model "
                                      f"dreams {self.grid}; it was tokenized with another tokenizer")
        actions = torch.as_tensor(np.asarray(ep["actions"][s:s + m], np.int64))
        return Context(tokens, actions, f"{self.root} {self.split} episode {i} frames {s}..{s + m - 1}")

    def close(self) -> None:
        self.ds.close()


class LiveContext:
    """Context played live in the real env (one instance kept open): a held-out maze (odd maze seed,
    as in :func:`worldmodel.dream.verb.live_episode`) explored by a collection policy for m frames."""

    def __init__(self, env_id: str, env_kwargs: dict, length: int, meanings: tuple[str, ...], policy: str,
                 tokenizer):
        from envs.policies import make_policy

        if env_id.startswith("DMLabMaze"):          # one unbroken episode must fit the context
            limit = max(length + 1, int(env_kwargs.get("max_episode_steps", 0)))
            env_kwargs = {**env_kwargs, "max_episode_steps": limit}
        try:
            self.env = gym.make(env_id, **env_kwargs)
        except gym.error.Error as e:
            raise ConfigError(f"cannot open the live context env {env_id!r} with {env_kwargs}: {e}") from e
        n = getattr(self.env.action_space, "n", None)
        real = tuple(getattr(self.env.unwrapped, "action_meanings", ())) or tuple(str(i) for i in range(int(n or 0)))
        if n != len(meanings) or real != tuple(meanings):
            self.env.close()
            raise CheckpointError(f"the checkpoint was trained on actions {list(meanings)} but the live env {env_id} "
                                  f"has {self.env.action_space} {list(real)}; use a checkpoint of that env")
        self.env_id, self.length, self.tokenizer, self.meanings = env_id, length, tokenizer, real
        self.policy, self._make_policy = policy, make_policy
        make_policy(policy, real)                   # fail now on an unknown policy name

    def draw(self, rng: np.random.Generator) -> Context:
        seed = int(rng.integers(2**30))
        pol = self._make_policy(self.policy, self.meanings, seed=seed + 1)
        maze_seed = 2 * seed + 1                     # odd maze seeds are never in a training split
        options = {"maze_seed": maze_seed} if "maze_seed" in info_keys(self.env) else None
        obs, info = self.env.reset(seed=seed, options=options)
        frames, actions = [obs], [-1]
        for _ in range(self.length - 1):
            a = pol.act(obs, info)
            obs, _, term, trunc, info = self.env.step(a)
            frames.append(obs)
            actions.append(a)
            if term or trunc:                        # never splice two episodes into one context
                break
        return Context(encode_frames(self.tokenizer, np.stack(frames)), torch.as_tensor(actions, dtype=torch.long),
                       f"live {self.env_id} maze_seed={maze_seed} seed={seed}")

    def close(self) -> None:
        self.env.close()


class DreamCore:
    """Checkpoint, sampler, a batch of ``batch_size`` cached rollouts and the context source.

    Arguments are those of :class:`MaskFlowDreamEnv` (which documents them); the vector env passes the
    same keywords and its ``num_envs`` as ``batch_size``.
    """

    def __init__(self, batch_size: int, checkpoint: str = "default", *, context: str = "auto",
                 data: str | None = None, split: str = "test", sampler: str = "mgm",
                 steps_per_frame: int | None = None, temperature: float = 1.0, gumbel: float | None = None,
                 schedule: str = "arccos", context_length: int | None = None, obs_type: str = "rgb",
                 reward_mode: str = "binary", reward_threshold: float = 0.5, done_threshold: float = 0.5,
                 policy: str = "random_walk", env_kwargs: dict | None = None, device: str = "cpu",
                 compile: bool = False, action_guidance: float = 0.0, history_guidance: float = 0.0,
                 threads: int | None = 0):
        from worldmodel.common.threads import governor
        from worldmodel.model.checkpoint import load_world_model
        from worldmodel.tokenizer.model import resolve_device

        if threads is not None and not (_is_int(threads) and threads >= 0):
            raise ConfigError(f"threads={threads!r} must be 0 (adapt to the cores other processes leave free), "
                              "N >= 1 (fixed), or None (leave torch's setting alone)")
        if threads is not None:
            governor(threads)

        for name, value, valid in (("context", context, CONTEXT_SOURCES), ("obs_type", obs_type, OBS_TYPES),
                                   ("reward_mode", reward_mode, REWARD_MODES)):
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
        self.reward_threshold, self.done_threshold = float(reward_threshold), float(done_threshold)
        masking = str(self.meta.get("train_config", {}).get("scheduler", "sigmoid"))
        steps = DEFAULT_FRAME_STEPS if steps_per_frame is None else int(steps_per_frame)
        self.sampler = SamplerConfig(sampler, steps=steps, temperature=temperature,
                                     gumbel=DEFAULT_FRAME_GUMBEL if gumbel is None else gumbel, schedule=schedule,
                                     masking=masking, action_guidance=action_guidance,
                                     history_guidance=history_guidance)
        self.rollout = CachedRollout(self.model, self.sampler, batch_size, device=self.device, compile=compile)
        self.batch_size = batch_size
        self.source_name = ("dataset" if data else "live") if context == "auto" else context
        self.source: DatasetContext | LiveContext | None = None
        self.given: dict[int, Context] = {}             # last caller-given context per dream
        if self.source_name == "dataset":
            if not data:
                raise ConfigError("context='dataset' needs data=DIR (a frames or token dataset of the real env)")
            self.source = DatasetContext(data, split, self.context_length, self.meanings, self.tokenizer, self.grid)
        elif self.source_name == "live":
            env_id = self.meta.get("env_id") or "DMLabMaze-v0"
            kwargs = {**dict(self.meta.get("env_kwargs") or {}), **dict(env_kwargs or {})}
            self.source = LiveContext(env_id, kwargs, self.context_length, self.meanings, policy, self.tokenizer)

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

    def rewards(self, p_reward: np.ndarray) -> np.ndarray:
        """Reward from the reward head: 1/0 by threshold (``binary``) or the probability itself."""
        if self.reward_mode == "probability":
            return p_reward.astype(np.float64)
        return (p_reward > self.reward_threshold).astype(np.float64)

    def frames(self, tokens: torch.Tensor) -> np.ndarray:
        """(b h w) tokens -> (b y x c) uint8 frames on the host."""
        with torch.inference_mode():
            return self.tokenizer.decode(tokens).cpu().numpy()

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


class MaskFlowDreamEnv(gym.Env):
    """A Gymnasium env that dreams: every ``step`` imagines the next 64×64 frame with a MaskFlow world model.

    ## Arguments
    ``checkpoint``: a `maskflow train` output directory or ``"default"`` (the shipped model).
    ``context``: where each episode's real context comes from — ``"dataset"`` (random windows of
    ``data=DIR``'s ``split`` episodes), ``"live"`` (a fresh held-out maze of the real env recorded in the
    checkpoint, with its recorded ``env_kwargs`` updated by ``env_kwargs``, explored by ``policy``),
    ``"given"`` (only ``reset(options=...)``), or ``"auto"`` (dataset when ``data`` is set, else live).
    Drift controls: ``sampler`` (mgm | mgm_tfree | fm | df), ``steps_per_frame`` (default 20),
    ``temperature``, ``gumbel`` (None = ``DEFAULT_FRAME_GUMBEL``, 8), ``schedule``,
    ``context_length`` (frames of real context, default window − 1, the most the model can see),
    ``action_guidance`` / ``history_guidance`` (classifier-free guidance weights, 0 = off; each one on
    adds a model pass per unmasking step, see ``SamplerConfig``).
    ``max_episode_steps`` (default 300, None = never truncate), ``device``, ``render_mode`` (None |
    "rgb_array"), ``timing_info`` (add the step's wall clock to ``info``), ``compile`` (torch.compile the
    rollout), ``threads`` (torch CPU threads: 0 = adapt to the cores other processes leave free, so a
    dream beside another job is not stalled; N = fixed; None = leave the process's setting alone).

    ## Spaces
    Observation ``Box(0, 255, (64, 64, 3), uint8)``, or with ``obs_type="tokens"`` the token grid
    ``Box(0, V − 1, (h, w), int64)``. Action: ``Discrete(n)`` of the real env the model was trained on.

    ## Reward, termination, truncation
    The commit pass of each frame gives reward and termination logits. ``reward`` is 1.0 when
    sigmoid(reward logit) > ``reward_threshold`` (0.5) else 0.0, or the probability itself with
    ``reward_mode="probability"``. ``terminated`` is sigmoid(done logit) > ``done_threshold`` (0.5).
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
                 reward_mode: str = "binary", reward_threshold: float = 0.5, done_threshold: float = 0.5,
                 policy: str = "random_walk", env_kwargs: dict | None = None, device: str = "cpu",
                 render_mode: str | None = None, timing_info: bool = False, compile: bool = False,
                 action_guidance: float = 0.0, history_guidance: float = 0.0, threads: int | None = 0):
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ConfigError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps}")
        self.core = DreamCore(1, checkpoint, context=context, data=data, split=split, sampler=sampler,
                              steps_per_frame=steps_per_frame, temperature=temperature, gumbel=gumbel,
                              schedule=schedule, context_length=context_length, obs_type=obs_type,
                              reward_mode=reward_mode, reward_threshold=reward_threshold,
                              done_threshold=done_threshold, policy=policy, env_kwargs=env_kwargs, device=device,
                              compile=compile, action_guidance=action_guidance, history_guidance=history_guidance,
                              threads=threads)
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
        terminated = bool(p_done[0] > self.core.done_threshold)
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
