"""A trained policy on disk, and playing it (or a baseline) in real held-out mazes.

On disk a policy is two files, never a pickle:

- ``policy.safetensors``: the weights of SB3's ``ActorCriticCnnPolicy`` (NatureCNN features shared by actor
  and critic; the aliases SB3 keeps under three names are stored once and listed in the metadata), or of
  sb3-contrib's ``RecurrentActorCriticCnnPolicy`` (the same CNN, then an LSTM for the actor and one for the
  critic: ``recurrent`` in the JSON holds their sizes);
- ``policy.json``: ``format: maskflow-policy``, the observation space (channels first, as SB3 trains on
  images; ``frame_stack`` frames of the env's view stacked along c, oldest first), the sampling
  ``temperature`` it acts at, the action space, the env it acts in (``env_id``, ``env_kwargs``, action
  meanings) and the run's stats, sealed with the weights' sha256 (checked on every load).

:func:`load_policy` rebuilds the network from those alone. :func:`goal_rate` plays any actor (a loaded
policy, or a collection policy such as the random walk) in held-out mazes (odd maze seeds, never trained
on) and counts goal reaches per 1,000 real steps: the figure the RL issue compares agents by.

Axis letters: y x pixels, c colour.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from envs.common.config_check import SEED, Check, at_least, check_config
from envs.common.errors import CheckpointError, ConfigError

POLICY_FORMAT = "maskflow-policy"
POLICY_VERSION = 1


def _obs_space(shape: list[int]):
    from gymnasium import spaces

    return spaces.Box(0, 255, tuple(int(s) for s in shape), np.uint8)


def recurrent_sizes(policy) -> dict[str, Any] | None:
    """The LSTM settings of an sb3-contrib recurrent policy (what rebuilds it), None for a feed-forward one."""
    if not hasattr(policy, "lstm_actor"):
        return None
    return {"lstm_hidden_size": int(policy.lstm_output_dim), "n_lstm_layers": int(policy.lstm_actor.num_layers),
            "shared_lstm": bool(policy.shared_lstm), "enable_critic_lstm": bool(policy.enable_critic_lstm)}


def save_policy(policy, out: str | Path, env_id: str, env_kwargs: dict | None, meanings: tuple[str, ...],
                stats: dict[str, Any] | None = None, frame_stack: int = 1, temperature: float = 1.0,
                action_repeat: int = 1) -> Path:
    """Write ``policy`` (an SB3 ``ActorCriticCnnPolicy`` or sb3-contrib ``RecurrentActorCriticCnnPolicy``) as
    ``policy.safetensors`` + ``policy.json`` in ``out``;
    ``frame_stack``: how many of the env's frames it sees at once (its observation's c is that many times the
    env's); ``temperature``: what it acts at in real mazes; ``action_repeat``: how many steps it holds each action
    (:class:`PolicyActor`)."""
    from envs.common.files import save_weights, write_sealed_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # SB3 shares one features extractor between actor and critic under several names; safetensors wants each
    # tensor once, so aliases are dropped here and restored on load
    tensors, aliases, seen = {}, {}, {}
    for name, t in policy.state_dict().items():
        key = (t.data_ptr(), t.dtype, tuple(t.shape))
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key], tensors[name] = name, t.detach().cpu().contiguous()
    recurrent = recurrent_sizes(policy)
    save_weights(out / "policy.safetensors", tensors,
                 metadata={"format": "sb3-recurrent-ppo-cnn-lstm-policy" if recurrent else "sb3-ppo-cnn-policy"})
    write_sealed_json(out / "policy.json", {
        "format": POLICY_FORMAT, "format_version": POLICY_VERSION,
        "policy": "sb3-contrib RecurrentActorCriticCnnPolicy" if recurrent else "sb3 ActorCriticCnnPolicy",
        "recurrent": recurrent,
        "observation_shape": list(policy.observation_space.shape), "actions": int(policy.action_space.n),
        "action_meanings": list(meanings), "env_id": env_id, "env_kwargs": dict(env_kwargs or {}),
        "frame_stack": int(frame_stack), "temperature": float(temperature),
        "action_repeat": int(action_repeat), "aliases": aliases, "stats": stats or {}},
        files=("policy.safetensors",))
    return out


def read_policy_meta(path: str | Path) -> dict[str, Any]:
    """``policy.json`` of a policy folder, checked for its format."""
    from envs.common.files import read_format_json

    p = Path(path)
    if not (p / "policy.json").is_file() or not (p / "policy.safetensors").is_file():
        raise CheckpointError(f"{p} is not a policy folder: it needs policy.json and policy.safetensors (written by "
                              "`maskflow rl` or agents.policy.save_policy)")
    return read_format_json(p / "policy.json", "policy", POLICY_FORMAT, POLICY_VERSION,
                            ("observation_shape", "actions", "env_id", "aliases"), check_files=True)


def new_policy(observation_shape: list[int], actions: int, learning_rate: float = 2.5e-4,
               recurrent: dict[str, Any] | None = None):
    """A fresh SB3 ``ActorCriticCnnPolicy`` for ``observation_shape`` (c y x) images and ``actions`` choices;
    ``recurrent`` (LSTM sizes, :func:`recurrent_sizes`): sb3-contrib's ``RecurrentActorCriticCnnPolicy``."""
    from gymnasium import spaces

    if recurrent is None:
        from stable_baselines3.common.policies import ActorCriticCnnPolicy

        return ActorCriticCnnPolicy(_obs_space(observation_shape), spaces.Discrete(int(actions)),
                                    lambda _: learning_rate)
    try:
        from sb3_contrib.common.recurrent.policies import RecurrentActorCriticCnnPolicy
    except ImportError:
        raise ConfigError("a recurrent policy needs sb3-contrib, which is not installed: pip install -e '.[rl]' "
                          "(make install does)") from None
    return RecurrentActorCriticCnnPolicy(_obs_space(observation_shape), spaces.Discrete(int(actions)),
                                         lambda _: learning_rate, **recurrent)


def load_policy(path: str | Path):
    """(policy, meta): the SB3 policy of a policy folder, weights checked strictly, in eval mode on the CPU."""
    from envs.common.files import load_state_dict_strict, load_weights

    meta = read_policy_meta(path)
    policy = new_policy(meta["observation_shape"], meta["actions"], recurrent=meta.get("recurrent"))
    state = load_weights(Path(path) / "policy.safetensors")
    for alias, name in meta["aliases"].items():
        if name not in state:
            raise CheckpointError(f"{path}/policy.json: alias {alias!r} points at {name!r}, which the weights lack")
        state[alias] = state[name]
    load_state_dict_strict(policy, state, str(Path(path) / "policy.safetensors"))
    policy.set_training_mode(False)
    return policy, meta


@dataclass
class PolicyActor:
    """A policy as an ``act(obs, info) -> int`` actor (what collection and held-out plays call).
    ``deterministic=False`` samples the policy's action distribution at ``temperature`` (its logits divided by
    it: 1 = as it acted in training; below 1 sharper, towards the most likely action that ``deterministic=True``
    always takes, where a memoryless policy can loop for ever).

    ``frame_stack`` > 1: the policy sees the last that many frames stacked along c (y x c, oldest first), the
    frames before an episode's first zeros, as SB3's ``VecFrameStack`` showed them in training; call
    :meth:`reset` at every episode's start.

    A recurrent policy (sb3-contrib's) carries its LSTM state from step to step, from zeros at the episode's
    first frame (as RecurrentPPO trained it); :meth:`reset` starts it afresh.

    ``action_repeat`` > 1: the policy decides every that many steps and holds its action in between, as
    :class:`agents.repeat.ActionRepeat` trained it; only the frames it decides on enter the stack."""

    policy: Any
    deterministic: bool = False
    frame_stack: int = 1
    temperature: float = 1.0
    action_repeat: int = 1

    def __post_init__(self) -> None:
        self._stacker = None        # SB3's StackedObservations: the very stacking VecFrameStack trained with
        self._stack: np.ndarray | None = None                                   # y x (k c): what the policy saw last
        self._lstm = None           # the actor LSTM's (h, c), each (layers, 1, hidden); None before a first frame
        self._recurrent = recurrent_sizes(self.policy) is not None
        self._held, self._left = 0, 0               # the action held, and for how many more steps

    def act(self, obs, info: dict | None = None) -> int:
        if self._left > 0:
            self._left -= 1
            return self._held
        self._held = self._decide(obs)
        self._left = self.action_repeat - 1
        return self._held

    def _decide(self, obs) -> int:
        obs = np.asarray(obs)
        if self.frame_stack > 1:
            if self._stacker is None:               # an episode's first frame
                from gymnasium import spaces
                from stable_baselines3.common.vec_env.stacked_observations import StackedObservations

                self._stacker = StackedObservations(1, self.frame_stack, spaces.Box(0, 255, obs.shape, obs.dtype),
                                                    "last")
                stacked = self._stacker.reset(obs[None])                             # 1 y x (k c)
            else:
                stacked, _ = self._stacker.update(obs[None], np.zeros(1, bool), [{}])
            obs = self._stack = stacked[0]
        if not self._recurrent and (self.deterministic or self.temperature == 1.0):
            return int(self.policy.predict(obs, deterministic=self.deterministic)[0])
        import torch

        x, _ = self.policy.obs_to_tensor(obs)
        with torch.no_grad():
            if self._recurrent:
                first = self._lstm is None
                if first:
                    zeros = torch.zeros(self.policy.lstm_hidden_state_shape)
                    self._lstm = (zeros, zeros.clone())
                dist, self._lstm = self.policy.get_distribution(x, self._lstm, torch.tensor([float(first)]))
            else:
                dist = self.policy.get_distribution(x)
            logits = dist.distribution.logits[0]                                          # (actions,)
        if self.deterministic:
            return int(logits.argmax())
        return int(torch.multinomial(torch.softmax(logits / self.temperature, -1), 1))

    def reset(self, seed: int | None = None) -> None:
        self._stacker = self._lstm = None
        self._left = 0
        if seed is not None:
            import torch

            torch.manual_seed(seed)


def policy_actor(path: str | Path, deterministic: bool = False) -> tuple[PolicyActor, dict[str, Any]]:
    """(actor, meta): the saved policy in ``path`` as an actor, seeing as many frames at once as it was trained
    on and acting at the temperature it was saved with, and its ``policy.json``."""
    policy, meta = load_policy(path)
    actor = PolicyActor(policy, deterministic, int(meta.get("frame_stack", 1)), float(meta.get("temperature", 1.0)),
                        int(meta.get("action_repeat", 1)))
    return actor, meta


def goal_rate(actor: Any, env_id: str, env_kwargs: dict | None, episodes: int, seed: int,
              episode_steps: int = 300, actor_seed: int = 0, training_mazes: bool = False) -> dict[str, Any]:
    """Goal reaches per 1,000 real steps of ``actor`` (an ``act(obs, info)`` object or a collection policy's
    name) over ``episodes`` episodes of ``episode_steps`` steps in held-out mazes; episode e plays the maze of
    seed ``seed + e`` (odd maze seed), so every actor is scored on the same mazes and spawns.
    ``training_mazes=True`` plays the even maze seeds instead: for choosing settings without touching the
    held-out mazes."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers the env ids)
    from envs.heldout import play_heldout, play_maze, training_options

    if episodes < 1:
        raise ConfigError(f"eval_episodes={episodes} must be >= 1")
    kwargs = {**dict(env_kwargs or {}), "max_episode_steps": episode_steps}
    env = gym.make(env_id, **kwargs)
    reaches, steps = [], 0
    try:
        for e in range(episodes):
            if hasattr(actor, "reset"):
                actor.reset(actor_seed * 1_000_003 + seed + e)
            if training_mazes:
                play = play_maze(env, episode_steps, seed + e, actor, training_options(env, seed + e), on_end="stop")
            else:
                play = play_heldout(env, episode_steps, seed + e, actor, on_end="stop")
            reaches.append(int((play.rewards > 0).sum()))
            steps += len(play.frames) - 1
    finally:
        env.close()
    per_episode = np.asarray(reaches, np.float64) * 1000.0 / episode_steps
    return {"reaches_per_1000": 1000.0 * sum(reaches) / max(steps, 1), "reaches": int(sum(reaches)),
            "steps": steps, "episodes": episodes, "seed": seed, "training_mazes": training_mazes,
            "per_episode_reaches": reaches,
            "per_episode_sd": float(per_episode.std(ddof=1)) if episodes > 1 else 0.0}


def play_policy(path: str | Path, episodes: int = 3, seed: int = 0, video: str | None = None,
                deterministic: bool = False, episode_steps: int = 300) -> dict[str, Any]:
    """Play a saved policy in held-out mazes of its env: goal reaches per 1,000 steps, and optionally an
    mp4 of the first episode at ``video``."""
    actor, meta = policy_actor(path, deterministic)
    result = goal_rate(actor, meta["env_id"], meta.get("env_kwargs"), episodes, seed, episode_steps)
    if video:
        import gymnasium as gym

        import envs  # noqa: F401
        from envs.common.video import write_video
        from envs.heldout import play_heldout

        env = gym.make(meta["env_id"], **{**dict(meta.get("env_kwargs") or {}), "max_episode_steps": episode_steps})
        try:
            actor.reset(seed)
            play = play_heldout(env, episode_steps, seed, actor, on_end="stop")
        finally:
            env.close()
        result["video"] = str(write_video(video, play.frames, scale=4))
    return result


def main_play(cfg: Any) -> dict[str, Any]:
    """CLI entry of ``maskflow play``."""
    from omegaconf import OmegaConf

    from envs.common.files import write_json

    c = PlayConfig(**OmegaConf.to_container(cfg, resolve=True))
    c.validate()
    read_policy_meta(c.policy)                          # a bad folder fails before any env opens
    out = Path(c.out) if c.out else None
    result = play_policy(c.policy, c.episodes, c.seed, str(out / "play.mp4") if out else None, c.deterministic,
                         c.episode_steps)
    if out:
        write_json(out / "play.json", {"policy": c.policy, **result})
    print(json.dumps(result, indent=1))
    return result


@dataclass
class PlayConfig:
    """Settings of ``maskflow play`` (the keys of ``configs/play.yaml``)."""

    policy: str = ""                # policy folder (policy.json + policy.safetensors), e.g. runs/rl/policy
    episodes: int = 3               # held-out mazes to play (episode e: maze of seed `seed + e`)
    episode_steps: int = 300
    seed: int = 0
    out: str = ""                   # folder for play.json and play.mp4 (the first episode); "" = print only
    deterministic: bool = False     # true = always the most likely action (default: sample, as trained)

    CHECKS: ClassVar[dict[str, Check]] = {"episodes": at_least(1), "episode_steps": at_least(1), "seed": SEED}

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first key of a wrong type or out of its range."""
        check_config(self)
