"""Train stable-baselines3 PPO purely inside the dream (``MaskFlowDream-v0``), then try it in the real maze.

    python -m agents.ppo_dream CHECKPOINT --steps 20000 [--envs 16 --vector] [--data DIR] [--out DIR]

One env: SB3's ``DummyVecEnv`` over :class:`~worldmodel.dream.env.MaskFlowDreamEnv` (Monitor-wrapped).
``--vector``: :class:`SB3DreamVecEnv` adapts the batched
:class:`~worldmodel.dream.vector_env.MaskFlowDreamVectorEnv` (all N dreams in one forward pass) to SB3's
own VecEnv API; SB3 resets an ended env in the same step and reports its last observation as
``info["terminal_observation"]``, which is Gymnasium's ``SAME_STEP`` autoreset, so the adapter runs the
vector env in that mode. The policy is SB3's ``CnnPolicy`` (NatureCNN; 64×64 frames are above its 36 px
minimum). The trained policy's weights are written as safetensors; ``--eval-real-steps`` plays it in
the real env the model was trained on. ``maskflow rl`` runs the whole world-model RL loop around this.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecMonitor

from envs.common.errors import ConfigError

INFO_KEYS = ("nfe", "reward_prob", "done_prob", "step_time_s")


class SB3DreamVecEnv(VecEnv):
    """Stable-baselines3 ``VecEnv`` over a gymnasium vector env that autoresets in ``SAME_STEP`` mode."""

    def __init__(self, venv) -> None:
        from gymnasium.vector import AutoresetMode

        if venv.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP:
            raise ConfigError("SB3DreamVecEnv needs a vector env with autoreset_mode=SAME_STEP (SB3 resets ended "
                              "envs in the same step)")
        self.venv = venv
        self._actions: np.ndarray | None = None
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    def _unbatch(self, info: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for key, value in info.items():
            if key.startswith("_") or key in ("final_obs", "final_info") or f"_{key}" not in info:
                continue
            for i in np.flatnonzero(info[f"_{key}"]):
                out[i][key] = value[i].item() if isinstance(value[i], np.generic) else value[i]
        return out

    def reset(self):
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        obs, info = self.venv.reset(seed=seeds)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = self._unbatch(info)
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs).astype(np.int64)

    def step_wait(self):
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        dones = terminated | truncated
        infos = self._unbatch(info)
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = info["final_obs"][i]
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def _count(self, indices) -> int:
        return len(self._get_indices(indices)) if indices is not None else self.num_envs

    def _get_indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)

    # the N dreams share one object, so attributes and methods are those of the vector env
    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self.venv, attr_name)] * self._count(indices)

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        return [getattr(self.venv, method_name)(*method_args, **method_kwargs)] * self._count(indices)

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * self._count(indices)

    def get_images(self) -> list[np.ndarray | None]:
        frames = self.venv.render()
        return list(frames) if frames is not None else [None] * self.num_envs


def make_dream_vec_env(checkpoint: str, n_envs: int = 1, vector: bool = False, **env_kwargs: Any) -> VecEnv:
    """An SB3 VecEnv of dreams: ``n_envs`` single envs in a DummyVecEnv, or one batched vector env."""
    if vector:
        from gymnasium.vector import AutoresetMode

        from worldmodel.dream.vector_env import MaskFlowDreamVectorEnv

        venv = MaskFlowDreamVectorEnv(n_envs, checkpoint, autoreset_mode=AutoresetMode.SAME_STEP, **env_kwargs)
        return VecMonitor(SB3DreamVecEnv(venv))
    from stable_baselines3.common.monitor import Monitor

    from worldmodel.dream.env import MaskFlowDreamEnv

    return DummyVecEnv([lambda: Monitor(MaskFlowDreamEnv(checkpoint, **env_kwargs)) for _ in range(n_envs)])


def train_ppo(checkpoint: str, total_timesteps: int, n_envs: int = 1, vector: bool = False, seed: int = 0,
              n_steps: int = 128, batch_size: int = 64, n_epochs: int = 4, learning_rate: float = 2.5e-4,
              device: str = "cpu", verbose: int = 0, **env_kwargs: Any):
    """Train PPO (CnnPolicy) for ``total_timesteps`` dream steps; returns (model, stats dict)."""
    from stable_baselines3 import PPO

    if n_envs * n_steps < batch_size:
        raise ConfigError(f"batch_size={batch_size} exceeds one rollout of n_envs * n_steps = {n_envs * n_steps}")
    env = make_dream_vec_env(checkpoint, n_envs, vector, device=device, **env_kwargs)
    try:
        model = PPO("CnnPolicy", env, n_steps=n_steps, batch_size=batch_size, n_epochs=n_epochs,
                    learning_rate=learning_rate, seed=seed, device=device, verbose=verbose)
        t0 = time.perf_counter()
        model.learn(total_timesteps=total_timesteps)
        seconds = time.perf_counter() - t0
        episodes = list(model.ep_info_buffer)
        stats = {"timesteps": int(model.num_timesteps), "seconds": round(seconds, 2),
                 "steps_per_s": model.num_timesteps / seconds, "episodes": len(episodes),
                 "mean_episode_reward": float(np.mean([e["r"] for e in episodes])) if episodes else float("nan"),
                 "mean_episode_length": float(np.mean([e["l"] for e in episodes])) if episodes else float("nan"),
                 "n_envs": n_envs, "vector": vector}
        return model, stats
    finally:
        env.close()


def evaluate_real(model, env_id: str = "DMLabMaze-v0", env_kwargs: dict | None = None, steps: int = 300,
                  seed: int = 1) -> dict[str, Any]:
    """Play the dream-trained policy (deterministic) for ``steps`` steps in the real env; total reward and
    episodes. The maze is a held-out one (odd maze seed), as for the dream's live context."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers the env ids)
    from agents.policy import PolicyActor
    from envs.heldout import play_heldout

    env = gym.make(env_id, **dict(env_kwargs or {}))
    try:
        # the policy's most likely action; a new episode in the same maze after each end
        play = play_heldout(env, steps, seed, PolicyActor(model.policy, deterministic=True))
        return {"env_id": env_id, "steps": steps, "total_reward": float(sum(play.rewards.tolist())),
                "episodes_ended": play.episodes_ended}
    finally:
        env.close()


def save_policy(model, out: str | Path, stats: dict[str, Any], checkpoint: str) -> Path:
    """Write the policy (``policy.safetensors`` + ``policy.json``, :mod:`agents.policy`'s format, playable with
    ``maskflow play policy=OUT``) for the real env of ``checkpoint``."""
    from agents.policy import save_policy as save
    from worldmodel.model.checkpoint import read_world_model_meta

    meta = read_world_model_meta(checkpoint)
    return save(model.policy, out, meta.get("env_id") or "DMLabMaze-v0", meta.get("env_kwargs"),
                tuple(meta["action_space"]["meanings"]), stats)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI: train PPO in the dream, print stats as JSON, optionally save it and evaluate it in the real env."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="world-model checkpoint directory, 'default' or 'memory'")
    p.add_argument("--data", default=None, help="dataset of real episodes for context (default: live episodes)")
    p.add_argument("--steps", type=int, default=20000, help="PPO timesteps (dream frames)")
    p.add_argument("--envs", type=int, default=1)
    p.add_argument("--vector", action="store_true", help="batch the envs in one MaskFlowDreamVectorEnv")
    p.add_argument("--n-steps", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps-per-frame", type=int, default=None)
    p.add_argument("--max-episode-steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = adapt to the load)")
    p.add_argument("--out", default=None, help="write policy.safetensors and policy.json here")
    p.add_argument("--eval-real-steps", type=int, default=0, help="then play the policy this long in the real env")
    a = p.parse_args(argv)
    from worldmodel.common.threads import governor

    governor(a.threads)
    model, stats = train_ppo(a.checkpoint, a.steps, n_envs=a.envs, vector=a.vector, seed=a.seed, n_steps=a.n_steps,
                             batch_size=a.batch_size, n_epochs=a.epochs, device=a.device, data=a.data,
                             steps_per_frame=a.steps_per_frame, max_episode_steps=a.max_episode_steps)
    if a.eval_real_steps > 0:
        from worldmodel.model.checkpoint import read_world_model_meta

        meta = read_world_model_meta(a.checkpoint)
        stats["real"] = evaluate_real(model, meta.get("env_id") or "DMLabMaze-v0", meta.get("env_kwargs"),
                                      steps=a.eval_real_steps, seed=a.seed + 1)
    if a.out:
        save_policy(model, a.out, stats, a.checkpoint)
    print(json.dumps(stats, indent=1))
    return stats


if __name__ == "__main__":
    main()
