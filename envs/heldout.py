"""Playing a held-out maze: the real side of every dream, probe and policy check.

    play = play_heldout(gymnasium.make("DMLabMaze-v0"), steps=47, seed=3)    # maze seed 2·3 + 1 = 7
    play.frames, play.actions, play.rewards        # (f y x c) uint8, (f,) int64 (-1 = reset), (f,) float64

Odd maze seeds (2·seed + 1) are never in a training split (:mod:`envs.collect` draws train mazes from
even ones), so a model never saw the maze it is compared against here. Envs that take no maze seed
(the adapters) are reset with ``seed`` alone.

Axis letters: f frames, y x pixels, c colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from envs.policies import Policy, make_policy

END_MODES = ("reset", "stop")


@dataclass
class HeldoutPlay:
    """Frames (f y x c) uint8 from the reset frame on, the action that led to each (f,) int64 (-1 at the reset
    frame), the reward it earned (f,) float64, the episodes that ended during the play, and the maze seed."""

    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    episodes_ended: int
    maze_seed: int
    terminated: bool = False        # the last step ended its episode by termination (not truncation)
    layout: str = ""                # the maze's text grid, where the env reports one
    goal: np.ndarray | None = None  # the goal's (x, z), where the env reports one (fixed within an episode)
    poses: np.ndarray | None = None  # (f, 3) float32 (x, z, heading) at each frame, where the env reports them


def heldout_maze_seed(seed: int) -> int:
    """The held-out (odd) maze seed of ``seed``."""
    return 2 * seed + 1


def heldout_options(env: gym.Env, seed: int) -> dict | None:
    """``reset`` options pinning the held-out maze of ``seed``, or None for an env without maze seeds."""
    return {"maze_seed": heldout_maze_seed(seed)} if hasattr(env.unwrapped, "fixed_maze_seed") else None


def training_options(env: gym.Env, seed: int) -> dict | None:
    """``reset`` options pinning the training (even) maze of ``seed``, or None for an env without maze seeds."""
    return {"maze_seed": 2 * seed} if hasattr(env.unwrapped, "fixed_maze_seed") else None


def env_action_meanings(env: gym.Env) -> tuple[str, ...]:
    """The env's action names (``unwrapped.action_meanings``), or "0", "1", ... for an env without names."""
    n = int(getattr(env.action_space, "n", 0) or 0)
    return tuple(getattr(env.unwrapped, "action_meanings", ())) or tuple(str(i) for i in range(n))


def play_heldout(env: gym.Env, steps: int, seed: int, policy: str | Policy = "random_walk",
                 on_end: str = "reset") -> HeldoutPlay:
    """Reset ``env`` on the held-out maze of ``seed`` and play ``steps`` steps (:func:`play_maze`).

    ``policy`` is a collection policy's name (:data:`envs.policies.POLICIES`, seeded with ``seed + 1``) or
    any object with ``act(obs, info) -> int``. At an episode's end ``on_end="reset"`` starts a new episode
    in the same maze (the stream goes on, as a dream has no episode end); ``"stop"`` ends the play there,
    so the frames never splice two episodes."""
    play = play_maze(env, steps, seed, policy, heldout_options(env, seed), on_end)
    play.maze_seed = heldout_maze_seed(seed)
    return play


def stack_poses(poses: list) -> np.ndarray | None:
    """(f, 3) float32 of an episode's per-frame poses, or None where a step lacks one (an env that reports none)."""
    return None if not poses or any(p is None for p in poses) else np.asarray(poses, np.float32)


def play_maze(env: gym.Env, steps: int, seed: int, policy: str | Policy, options: dict | None,
              on_end: str = "reset") -> HeldoutPlay:
    """Reset ``env`` with ``seed`` and ``options`` (e.g. the maze seed to pin) and play ``steps`` steps; the
    rest as :func:`play_heldout` (which pins the held-out maze of ``seed``; a training-maze play pins an even
    one)."""
    if on_end not in END_MODES:
        raise ValueError(f"on_end={on_end!r} is not one of {', '.join(END_MODES)}")
    if isinstance(policy, str):
        policy = make_policy(policy, env_action_meanings(env), seed=seed + 1)
    obs, info = env.reset(seed=seed, options=options)
    frames, actions, rewards, ended, term = [obs], [-1], [0.0], 0, False
    poses = [info.get("pose")]
    for _ in range(steps):
        a = policy.act(obs, info)
        obs, r, term, trunc, info = env.step(a)
        frames.append(obs)
        actions.append(a)
        rewards.append(float(r))
        poses.append(info.get("pose"))
        if term or trunc:
            ended += 1
            if on_end == "stop":
                break
            obs, info = env.reset(options=options)
    maze = (options or {}).get("maze_seed", info.get("maze_seed", -1))
    return HeldoutPlay(np.stack(frames), np.asarray(actions, np.int64), np.asarray(rewards, np.float64), ended,
                       int(maze), bool(term), str(info.get("layout", "")),
                       None if "goal" not in info else np.asarray(info["goal"], np.float32),
                       stack_poses(poses))
