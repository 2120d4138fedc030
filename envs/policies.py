"""Exploration policies for data collection.

:class:`RandomWalkPolicy` imitates the DeepMind Lab datasets' random walks: an action is held for a
random number of steps, forward motion dominates, and a blocked agent turns away, so the agent
travels through the maze instead of jittering in place.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np


class Policy(Protocol):
    """What plays an env: the next action from the observation and the info of the last step."""

    def act(self, obs=None, info: dict | None = None) -> int: ...


@dataclasses.dataclass(frozen=True)
class RandomWalkConfig:
    """Settings of the held-action random walk.

    Attributes:
        min_hold, max_hold: an action is repeated for a uniform number of steps in [min_hold, max_hold].
        weights: relative probability of each action by name; missing names get 0.
        turn_when_blocked: after a blocked forward move, turn for ``min_hold``..``max_hold`` steps.
        min_clearance: with ``info["clearance"]`` (free cells ahead) below this, forward moves are
            replaced by a held turn, so the agent looks down corridors rather than at walls.
    """

    min_hold: int = 2
    max_hold: int = 8
    weights: tuple[tuple[str, float], ...] = (
        ("forward", 4.0), ("forward_turn_left", 1.5), ("forward_turn_right", 1.5),
        ("turn_left", 1.0), ("turn_right", 1.0), ("strafe_left", 0.4), ("strafe_right", 0.4),
        ("backward", 0.2), ("noop", 0.2),
    )
    turn_when_blocked: bool = True
    min_clearance: float = 0.6


class RandomWalkPolicy:
    """A held-action random walk over a named discrete action set (``act(obs, info) -> int``)."""

    def __init__(self, action_meanings: tuple[str, ...], config: RandomWalkConfig | None = None,
                 seed: int | None = None):
        self.cfg = config or RandomWalkConfig()
        self.meanings = tuple(action_meanings)
        w = dict(self.cfg.weights)
        probs = np.array([w.get(m, 0.0) for m in self.meanings], dtype=np.float64)
        if probs.sum() <= 0:
            raise ValueError(f"no positive weight for any of the actions {self.meanings}")
        self.probs = probs / probs.sum()
        self._turns = [i for i, m in enumerate(self.meanings) if m in ("turn_left", "turn_right")]
        self.rng = np.random.default_rng(seed)
        self._action, self._left, self._last_pose = 0, 0, None

    def reset(self, seed: int | None = None) -> None:
        """Forget the held action; reseed if ``seed`` is given."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self._action, self._left, self._last_pose = 0, 0, None

    def _hold(self) -> int:
        return int(self.rng.integers(self.cfg.min_hold, self.cfg.max_hold + 1))

    def act(self, obs=None, info: dict | None = None) -> int:
        """Next action. ``info["pose"]`` (if present) lets the walk notice that it is stuck."""
        info = info or {}
        pose = None if "pose" not in info else np.asarray(info["pose"])[:2]
        forward = "forward" in self.meanings[self._action]
        stuck = (pose is not None and self._last_pose is not None and self._left > 0 and forward
                 and np.linalg.norm(pose - self._last_pose) < 0.02)
        walled = "clearance" in info and float(info["clearance"]) < self.cfg.min_clearance
        self._last_pose = pose
        if (stuck or (walled and (forward or self._left <= 0))) and self.cfg.turn_when_blocked and self._turns:
            self._action, self._left = int(self.rng.choice(self._turns)), self._hold()
        elif self._left <= 0:
            self._action, self._left = int(self.rng.choice(len(self.probs), p=self.probs)), self._hold()
        self._left -= 1
        return self._action


class UniformRandomPolicy:
    """Uniformly random actions every step (the baseline for coverage)."""

    def __init__(self, action_meanings: tuple[str, ...], seed: int | None = None):
        self.n = len(action_meanings)
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed)

    def act(self, obs=None, info: dict | None = None) -> int:
        return int(self.rng.integers(self.n))


POLICIES = {"random_walk": RandomWalkPolicy, "uniform": UniformRandomPolicy}


def make_policy(name: str, action_meanings: tuple[str, ...], seed: int | None = None) -> Policy:
    """Build a collection policy by name (``random_walk`` or ``uniform``)."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; valid policies: {', '.join(POLICIES)}")
    return POLICIES[name](action_meanings, seed=seed)


def coverage(layout_free_cells: list[tuple[int, int]], cells_visited: list[tuple[int, int]]) -> float:
    """Fraction of a maze's free cells that the agent's cell positions visited."""
    free = set(layout_free_cells)
    return len(free & set(cells_visited)) / max(1, len(free))
