"""Loops in the real maze that return to the view they left: the premise of the loop-closure check.

The maze renderer is deterministic and turns are exact 12° steps, so turning left L times and then
right L times (``turnL``), or turning a full circle in place (``circleN``, N × 12° = 360° for N = 30),
ends on exactly the view it started from. :func:`real_loop` plays one in a held-out maze after a short
exploration, for ``maskflow eval loops=...`` and ``maskflow dream loop=...``. :func:`return_frames` finds
such returns in any recorded episode (``maskflow collect policy=revisit`` makes many).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.common.errors import ConfigError

LOOP_PATTERN = re.compile(r"^(turn|circle)(\d+)$")
DEFAULT_LOOPS = ("turn4", "turn8", "turn15", "circle30", "turn30")
TURN_DEGREES = 12.0             # DMLabMazeEnv's default turn_step: 30 turns make a full circle


@dataclass(frozen=True)
class Loop:
    """One loop: its name and its turn script (action names), plus where the view is furthest away."""

    name: str
    script: tuple[str, ...]
    far: int                        # index into the script after which the heading is furthest from the start

    @property
    def frames(self) -> int:
        return len(self.script)

    def revisits(self, turn_degrees: float = TURN_DEGREES) -> list[tuple[int, int]]:
        """Pairs (later, earlier) of frames of the loop (0 = the start view, i = after the i-th turn) that face
        the same heading in place, so the real maze shows identical views; the earlier is the first frame at
        that heading and never the start view (returning to it is the loop's own score)."""
        heading, first, pairs = 0.0, {0.0: 0}, []
        for i, a in enumerate(self.script, start=1):
            heading += turn_degrees if a == "turn_left" else -turn_degrees
            key = round(heading % 360.0, 6) % 360.0
            if key in first:
                if first[key] != 0:
                    pairs.append((i, first[key]))
            else:
                first[key] = i
        return pairs


def action_yaw(meanings: tuple[str, ...] | list[str], env_kwargs: dict | None = None) -> list[float]:
    """Degrees each action turns the camera, left positive: the env's ``turn_step`` (default 12) for actions
    named ``*turn_left``, minus it for ``*turn_right``, 0 for the rest (DMLabMazeEnv's turns are exact)."""
    step = float((env_kwargs or {}).get("turn_step", TURN_DEGREES))
    return [step if m.endswith("turn_left") else -step if m.endswith("turn_right") else 0.0 for m in meanings]


def action_stays(meanings: tuple[str, ...] | list[str]) -> list[bool]:
    """Which actions keep the camera in place: ``noop`` and the pure turns (``turn_left``, ``turn_right``);
    every other action may move it (heading recall forgets the views of a place the camera left)."""
    return [m in ("noop", "turn_left", "turn_right") for m in meanings]


def furthest(script: tuple[str, ...], turn_degrees: float = TURN_DEGREES) -> int:
    """Index into ``script`` after which the heading is furthest from the start (first such index)."""
    heading, best, where = 0.0, -1.0, 0
    for i, a in enumerate(script):
        heading += turn_degrees if a == "turn_left" else -turn_degrees
        off = abs((heading + 180.0) % 360.0 - 180.0)
        if off > best + 1e-9:
            best, where = off, i
    return where


def parse_loop(name: str) -> Loop:
    """``turnL`` (L × turn_left, then L × turn_right: 2L frames) or ``circleN`` (N × turn_left: a full circle
    when N × 12° = 360°, N frames); a clear :class:`ConfigError` otherwise."""
    m = LOOP_PATTERN.match(str(name))
    if not m or int(m.group(2)) < 1:
        raise ConfigError(f"loop {name!r} is not valid; use turnL (turn left L times, then right L times) or "
                          "circleN (turn left N times; 30 = a full circle), L, N >= 1, e.g. turn15, circle30")
    kind, n = m.group(1), int(m.group(2))
    script = ("turn_left",) * n + (("turn_right",) * n if kind == "turn" else ())
    return Loop(name, script, furthest(script))


class LoopScript:
    """The trial's policy: ``warmup`` steps of an exploration policy, then the loop's turns."""

    def __init__(self, walk: Any, warmup: int, actions: list[int]) -> None:
        self.walk, self.warmup, self.actions, self.t = walk, warmup, actions, 0

    def act(self, obs=None, info: dict | None = None) -> int:
        t, self.t = self.t, self.t + 1
        return self.walk.act(obs, info) if t < self.warmup else self.actions[t - self.warmup]


def real_loop(env_id: str, env_kwargs: dict | None, loop: Loop, context: int, seed: int,
              policy: str = "random_walk") -> tuple[np.ndarray, np.ndarray]:
    """Frames (context + loop.frames, y x c) and actions of one real trial in the held-out maze of ``seed``."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers the env ids)
    from envs.heldout import env_action_meanings, play_heldout
    from envs.policies import make_policy

    steps = context - 1 + loop.frames                # the context includes the reset frame
    env = gym.make(env_id, **{**dict(env_kwargs or {}), "max_episode_steps": steps + 1})
    try:
        meanings = env_action_meanings(env)
        missing = sorted(set(loop.script) - set(meanings))
        if missing:
            raise ConfigError(f"loop {loop.name}: {env_id} has no action {', '.join(missing)}")
        script = LoopScript(make_policy(policy, meanings, seed=seed + 1), context - 1,
                            [meanings.index(a) for a in loop.script])
        play = play_heldout(env, steps, seed, script, on_end="stop")
    finally:
        env.close()
    if len(play.frames) != steps + 1:
        raise ConfigError(f"loop {loop.name}: the real episode in maze seed {seed} ended after {len(play.frames)} "
                          f"frames, before the loop closed")
    return play.frames, play.actions


def return_frames(frames: np.ndarray, episode_start: np.ndarray, history: int, short: int = 16
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Indices g (with ``history`` frames before them in their episode) whose frame equals one ``short`` to
    ``history`` frames earlier and none closer, and differs from frame g − 1 (standing still against a wall
    is no return); and the ordinary frames (equal to none of the ``history`` before, differing from g − 1).

    ``frames`` (n ...) of any kind (pixels or token grids; the renderer is deterministic, so a returned view
    is identical), ``episode_start`` (n,) = index of each frame's episode's first frame."""
    if not 1 <= short <= history:
        raise ValueError(f"need 1 <= short <= history, got short={short}, history={history}")
    if len(episode_start) != len(frames):
        raise ValueError(f"episode_start has {len(episode_start)} entries for {len(frames)} frames")
    flat = frames.reshape(len(frames), -1)
    g = np.arange(len(flat))
    same = np.zeros((len(flat), history), bool)            # column d − 1: frame g equals frame g − d
    for d in range(1, min(history, len(flat) - 1) + 1):
        same[d:, d - 1] = (flat[d:] == flat[:-d]).all(1)
    ok = (g - history >= np.asarray(episode_start)) & ~same[:, 0]
    near, far = same[:, :short - 1].any(1), same[:, short - 1:].any(1)
    return g[ok & far & ~near], g[ok & ~same.any(1)]
