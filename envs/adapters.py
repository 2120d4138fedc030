"""64×64 adapters for other maze worlds: stock MiniWorld mazes, Memory Maze, and DeepMind Lab itself.

Each adapter exposes ``action_meanings`` and puts the agent ``pose`` (x, z, heading) in ``info``
where the underlying world allows, so collection and the action-following checks work unchanged.
Optional worlds are imported lazily and fail with the install command when absent.
"""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class _PoseInfo(gym.Wrapper):
    """Adds ``pose`` to MiniWorld's info dicts and names the actions."""

    def __init__(self, env: gym.Env, meanings: tuple[str, ...]):
        super().__init__(env)
        self.action_meanings = meanings

    def _pose(self, info: dict) -> dict:
        agent = self.env.unwrapped.agent
        info = dict(info)
        info["pose"] = np.array([agent.pos[0], agent.pos[2], agent.dir], dtype=np.float32)
        return info

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, self._pose(info)

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        return obs, r, term, trunc, self._pose(info)


def make_miniworld(env_id: str = "MiniWorld-Maze-v0", obs_width: int = 64, obs_height: int = 64, **kwargs):
    """A stock MiniWorld maze rendered headless at 64×64 (actions: turn_left, turn_right, forward)."""
    os.environ.setdefault("PYGLET_HEADLESS", "1")
    import pyglet

    pyglet.options["headless"] = os.environ["PYGLET_HEADLESS"] == "1"
    pyglet.options["debug_gl"] = os.environ.get("MASKFLOW_DEBUG_GL") == "1"  # no glGetError after every call
    import miniworld  # noqa: F401  (registers the MiniWorld ids)

    env = gym.make(env_id, obs_width=obs_width, obs_height=obs_height, **kwargs).unwrapped
    return _PoseInfo(env, ("turn_left", "turn_right", "forward"))


class MemoryMazeEnv(gym.Env):
    """Memory Maze (dm_control) behind a Gymnasium API, 64×64 RGB. Needs ``pip install '.[memory-maze]'``."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}
    action_meanings = ("noop", "forward", "turn_left", "turn_right", "forward_turn_left", "forward_turn_right")

    def __init__(self, size: int = 9, render_mode: str | None = None):
        os.environ.setdefault("MUJOCO_GL", "egl")
        try:
            from memory_maze import tasks
        except ImportError as e:
            raise ImportError("Memory Maze is an optional extra: pip install '.[memory-maze]' "
                              f"(pins mujoco==3.17.0, dm-control==1.0.50); import failed: {e}") from e
        self._make = getattr(tasks, f"memory_maze_{size}x{size}")
        self._env = None
        self.render_mode = render_mode
        self.action_space = spaces.Discrete(6)
        self.observation_space = spaces.Box(0, 255, (64, 64, 3), np.uint8)
        self._obs = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self._env is not None:
            self._env.close()
        self._env = self._make(seed=int(self.np_random.integers(2**31 - 1)), image_only_obs=True,
                               camera_resolution=64)
        ts = self._env.reset()
        self._obs = np.asarray(ts.observation, dtype=np.uint8).copy()
        return self._obs.copy(), {}

    def step(self, action):
        ts = self._env.step(int(action))
        self._obs = np.asarray(ts.observation, dtype=np.uint8).copy()
        return self._obs.copy(), float(ts.reward or 0.0), False, bool(ts.last()), {}

    def render(self):
        return None if self._obs is None else self._obs.copy()

    def close(self):
        if self._env is not None:
            self._env.close()
            self._env = None


class DeepMindLabEnv(gym.Env):
    """DeepMind Lab itself (``explore_goal_locations_small``), for users who built its Python module.

    DeepMind Lab's engine cannot be built from the package registries (its build needs Bazel
    inside Docker with downloads from outside), so this adapter only works where ``import deepmind_lab``
    does; otherwise constructing it raises ImportError with that reason.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}
    # DMLab's IMPALA-style action set, as (look_left_right, look_up_down, strafe, move, fire, jump, crouch)
    _ACTIONS = {
        "noop": (0, 0, 0, 0, 0, 0, 0), "forward": (0, 0, 0, 1, 0, 0, 0), "backward": (0, 0, 0, -1, 0, 0, 0),
        "strafe_left": (0, 0, -1, 0, 0, 0, 0), "strafe_right": (0, 0, 1, 0, 0, 0, 0),
        "turn_left": (-20, 0, 0, 0, 0, 0, 0), "turn_right": (20, 0, 0, 0, 0, 0, 0),
        "forward_turn_left": (-20, 0, 0, 1, 0, 0, 0), "forward_turn_right": (20, 0, 0, 1, 0, 0, 0),
    }
    action_meanings = tuple(_ACTIONS)

    def __init__(self, level: str = "explore_goal_locations_small", render_mode: str | None = None,
                 max_episode_steps: int = 300):
        try:
            import deepmind_lab
        except ImportError as e:
            raise ImportError(
                "DeepMind Lab's Python module `deepmind_lab` is not installed. It cannot be built from the "
                "package registries (it needs Bazel inside Docker); build it yourself from DeepMind Lab's "
                "sources, or use DMLabMaze-v0, which uses DeepMind Lab's maze generator and textures."
            ) from e
        self._lab = deepmind_lab.Lab(level, ["RGB_INTERLEAVED"], {"width": "64", "height": "64"})
        self.render_mode = render_mode
        self.max_episode_steps = max_episode_steps
        self.action_space = spaces.Discrete(len(self._ACTIONS))
        self.observation_space = spaces.Box(0, 255, (64, 64, 3), np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._lab.reset(seed=int(self.np_random.integers(2**31 - 1)))
        self._t = 0
        self._obs = self._lab.observations()["RGB_INTERLEAVED"].copy()
        return self._obs.copy(), {}

    def step(self, action):
        act = np.array(self._ACTIONS[self.action_meanings[int(action)]], dtype=np.intc)
        reward = float(self._lab.step(act, num_steps=4))
        self._t += 1
        running = self._lab.is_running()
        if running:
            self._obs = self._lab.observations()["RGB_INTERLEAVED"].copy()
        return self._obs.copy(), reward, not running, running and self._t >= self.max_episode_steps, {}

    def render(self):
        return self._obs.copy()
