"""Action repeat (frame skip): the policy decides every k-th frame and its action is held for k frames.

DeepMind Lab's agents act this way (IMPALA and Dreamer hold each action for 4 frames): a decision moves the agent
further, so a memoryless policy can move with some of the held-action random walk's persistence, and a dream of
``horizon`` frames is ``horizon / k`` decisions for PPO to assign credit over. (On this maze task k = 2 did not
help; docs/results.md, "Holding each action for two frames".) :class:`ActionRepeat` wraps an SB3
VecEnv (the batched dream, or real envs PPO learns from); :class:`agents.policy.PolicyActor` holds its actions
the same way in the real maze.
"""

from __future__ import annotations

import numpy as np
from stable_baselines3.common.vec_env import VecEnvWrapper


class ActionRepeat(VecEnvWrapper):
    """Each step of this VecEnv steps ``venv`` ``k`` times with the same actions and returns the sum of the
    rewards, the last observation and a ``done`` where an episode ended on any of the k frames.

    The envs of a VecEnv step together and reset themselves when their episode ends, so an env whose episode
    ends on frame j < k goes on for the remaining k - j frames in its next episode, with the same action. Those
    frames' rewards are carried to that episode's first decision, and the observation returned is where that
    episode stands (SB3 then starts the frame stack from it). Should that next episode end too within those
    frames (a dream that pays on its first frame), its end is not reported and its carried reward is dropped:
    PPO sees the episode that ended first, whose ``terminal_observation`` and ``TimeLimit.truncated`` are
    passed on."""

    def __init__(self, venv, k: int):
        if k < 1:
            raise ValueError(f"action_repeat={k} must be >= 1")
        super().__init__(venv)
        self.k = int(k)
        self._carry = np.zeros(self.num_envs, np.float32)   # (n,) reward of frames after a reset, not yet paid
        self._actions: np.ndarray | None = None

    def reset(self):
        self._carry[:] = 0
        return self.venv.reset()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        n = self.num_envs
        total, self._carry = self._carry, np.zeros(n, np.float32)
        ended = np.zeros(n, bool)
        kept: list[dict | None] = [None] * n             # the info of each env's first end in this step
        for _ in range(self.k):
            self.venv.step_async(self._actions)
            obs, rewards, dones, infos = self.venv.step_wait()
            total += np.where(ended, 0.0, rewards)          # float32 in place; an ended env's frames carry
            self._carry += np.where(ended, rewards, 0.0)
            for i in np.flatnonzero(dones):
                if ended[i]:                              # the next episode ended as well: not reported
                    self._carry[i] = 0.0
                else:
                    kept[i] = infos[i]
            ended |= np.asarray(dones, bool)
        out = [kept[i] if kept[i] is not None else infos[i] for i in range(n)]
        return obs, total, ended, out
