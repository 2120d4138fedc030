"""Exploration policies for data collection.

:class:`RandomWalkPolicy` imitates the DeepMind Lab datasets' random walks: an action is held for a
random number of steps, forward motion dominates, and a blocked agent turns away, so the agent
travels through the maze instead of jittering in place. :class:`RevisitPolicy` adds excursions that turn
away and back to the view they left, for memory training. :class:`GoalSeekingPolicy` is an oracle for the
reward data: it reads the maze layout and the goal from ``info`` (privileged, as only a collector may)
and alternates stretches of walking the shortest path to the goal with stretches of random walk, so the
data holds many goal reaches, approached from many sides.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
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


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


class GoalSeekingPolicy:
    """Shortest-path walks to the goal (an oracle: it reads ``info["layout"]``, ``["goal"]`` and ``["pose"]``),
    alternating with held random-walk stretches; a random walk wherever ``info`` lacks those keys.

    ``seek_fraction`` is the expected share of steps spent seeking; stretches last ``min_stretch`` to
    ``max_stretch`` steps. Seeking turns towards the centre of the next cell on the shortest 4-connected
    path (the goal itself in its own cell) and moves forward once roughly facing it.
    """

    def __init__(self, action_meanings: tuple[str, ...], seed: int | None = None, seek_fraction: float = 0.6,
                 min_stretch: int = 8, max_stretch: int = 48):
        if not 0.0 <= seek_fraction <= 1.0:
            raise ValueError(f"seek_fraction must lie in [0, 1], got {seek_fraction}")
        self.meanings = tuple(action_meanings)
        needed = ("forward", "turn_left", "turn_right", "forward_turn_left", "forward_turn_right")
        missing = [m for m in needed if m not in self.meanings]
        self.index = {m: self.meanings.index(m) for m in needed if m in self.meanings}
        self.can_seek = not missing
        self.seek_fraction, self.stretch = float(seek_fraction), (int(min_stretch), int(max_stretch))
        self.walk = RandomWalkPolicy(action_meanings, seed=seed)
        self.rng = np.random.default_rng(None if seed is None else seed + 7919)
        self._distances: dict[tuple[str, tuple[int, int]], np.ndarray] = {}
        self._seeking, self._left = False, 0

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed + 7919)
        self.walk.reset(seed)
        self._seeking, self._left = False, 0

    def _distance_field(self, layout: str, goal_cell: tuple[int, int]) -> np.ndarray:
        """Steps from every free cell to the goal cell (BFS over the text grid; walls and unreached = inf)."""
        key = (layout, goal_cell)
        if key not in self._distances:
            grid = layout.split("\n")
            h, w = len(grid), len(grid[0])
            dist = np.full((h, w), np.inf)
            dist[goal_cell] = 0
            todo = deque([goal_cell])
            while todo:
                r, c = todo.popleft()
                for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                    if 0 <= nr < h and 0 <= nc < w and grid[nr][nc] != "*" and dist[nr, nc] == np.inf:
                        dist[nr, nc] = dist[r, c] + 1
                        todo.append((nr, nc))
            if len(self._distances) > 64:
                self._distances.clear()
            self._distances[key] = dist
        return self._distances[key]

    def seek(self, info: dict) -> int:
        """The action that heads along the map's shortest path to the goal (``info``: pose, goal, layout)."""
        x, z, heading = (float(v) for v in np.asarray(info["pose"])[:3])
        gx, gz = (float(v) for v in np.asarray(info["goal"])[:2])
        cell, goal_cell = (int(z), int(x)), (int(gz), int(gx))
        dist = self._distance_field(str(info["layout"]), goal_cell)
        tx, tz = gx, gz
        if cell != goal_cell and np.isfinite(dist[cell]):
            r, c = cell
            steps = [(dist[n], n) for n in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1))
                     if 0 <= n[0] < dist.shape[0] and 0 <= n[1] < dist.shape[1]]
            _, (nr, nc) = min(steps)
            tx, tz = nc + 0.5, nr + 0.5
        # forward moves along (cos h, -sin h); a left turn adds to h
        off = _wrap(math.atan2(-(tz - z), tx - x) - heading)
        if abs(off) > math.radians(40):
            return self.index["turn_left" if off > 0 else "turn_right"]
        if abs(off) > math.radians(8):
            return self.index["forward_turn_left" if off > 0 else "forward_turn_right"]
        return self.index["forward"]

    def act(self, obs=None, info: dict | None = None) -> int:
        info = info or {}
        knows = self.can_seek and all(k in info for k in ("pose", "goal", "layout"))
        if self._left <= 0:
            self._seeking = bool(self.rng.random() < self.seek_fraction)
            self._left = int(self.rng.integers(self.stretch[0], self.stretch[1] + 1))
        self._left -= 1
        if self._seeking and knows:
            return self.seek(info)
        return self.walk.act(obs, info)


class RevisitPolicy:
    """A random walk with excursions that come back: data in which the far past is worth remembering.

    At each step, with probability ``loop_prob``, the walk (outside an excursion) turns ``L`` times one way and
    then ``L`` times back, or a full circle in place (``circle_turns`` turns), and so ends on exactly the view
    it left (the renderer is deterministic and turns are exact). ``L`` is uniform in [``min_turns``,
    ``max_turns``]. A world model trained on such data sees the start view again up to ``2 max_turns`` frames
    later, which a plain random walk seldom shows it.
    """

    def __init__(self, action_meanings: tuple[str, ...], seed: int | None = None, loop_prob: float = 0.03,
                 min_turns: int = 4, max_turns: int = 15, circle_prob: float = 0.25, circle_turns: int = 30):
        if not 0.0 <= loop_prob <= 1.0 or not 0.0 <= circle_prob <= 1.0:
            raise ValueError(f"loop_prob and circle_prob must lie in [0, 1], got {loop_prob}, {circle_prob}")
        if not 1 <= min_turns <= max_turns:
            raise ValueError(f"need 1 <= min_turns <= max_turns, got {min_turns}, {max_turns}")
        meanings = tuple(action_meanings)
        missing = [m for m in ("turn_left", "turn_right") if m not in meanings]
        if missing:
            raise ValueError(f"the revisit policy needs the actions {missing}; this env has {meanings}")
        self.left, self.right = meanings.index("turn_left"), meanings.index("turn_right")
        self.loop_prob, self.turns, self.circle = float(loop_prob), (int(min_turns), int(max_turns)), (
            float(circle_prob), int(circle_turns))
        self.walk = RandomWalkPolicy(meanings, seed=seed)
        self.rng = np.random.default_rng(None if seed is None else seed + 104729)
        self._script: list[int] = []

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed + 104729)
        self.walk.reset(seed)
        self._script = []

    def act(self, obs=None, info: dict | None = None) -> int:
        if not self._script and self.rng.random() < self.loop_prob:
            a, b = (self.left, self.right) if self.rng.random() < 0.5 else (self.right, self.left)
            if self.rng.random() < self.circle[0]:
                self._script = [a] * self.circle[1]
            else:
                n = int(self.rng.integers(self.turns[0], self.turns[1] + 1))
                self._script = [a] * n + [b] * n
        if self._script:
            return self._script.pop(0)
        return self.walk.act(obs, info)


POLICIES = {"random_walk": RandomWalkPolicy, "uniform": UniformRandomPolicy, "goal_seeking": GoalSeekingPolicy,
            "revisit": RevisitPolicy}


def make_policy(name: str, action_meanings: tuple[str, ...], seed: int | None = None) -> Policy:
    """Build a collection policy by name (``random_walk``, ``uniform``, ``goal_seeking`` or ``revisit``)."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; valid policies: {', '.join(POLICIES)}")
    return POLICIES[name](action_meanings, seed=seed)


def coverage(layout_free_cells: list[tuple[int, int]], cells_visited: list[tuple[int, int]]) -> float:
    """Fraction of a maze's free cells that the agent's cell positions visited."""
    free = set(layout_free_cells)
    return len(free & set(cells_visited)) / max(1, len(free))
