"""``DMLabMaze-v0``: a DeepMind-Lab-style first-person maze, in the spirit of ``explore_goal_locations``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.common.errors import DatasetError
from envs.maze.layout import PRESETS, MazeConfig, MazeLayout, generate_layout, layout_from_text

# name, forward, strafe (right +), turn (left +) in units of (move_step, strafe_step, turn_step)
ACTIONS: tuple[tuple[str, float, float, float], ...] = (
    ("noop", 0, 0, 0),
    ("forward", 1, 0, 0),
    ("backward", -1, 0, 0),
    ("strafe_left", 0, -1, 0),
    ("strafe_right", 0, 1, 0),
    ("turn_left", 0, 0, 1),
    ("turn_right", 0, 0, -1),
    ("forward_turn_left", 1, 0, 1),
    ("forward_turn_right", 1, 0, -1),
)
ACTION_MEANINGS: tuple[str, ...] = tuple(a[0] for a in ACTIONS)


class DMLabMazeEnv(gym.Env):
    """
    ## Description
    A first-person 3-D maze that looks like DeepMind Lab: the layout comes from DeepMind Lab's own
    generator (``labmaze.RandomMaze``, 11×11 with up to 4 rooms by default), walls, floors and sky
    use DeepMind Lab's textures (shipped in the labmaze wheel), each room has its own floor, and the
    scene is rendered headless through MiniWorld's OpenGL stack. A golden goal object sits in one room.

    ## Action Space
    ``Discrete(9)``; the meanings are in ``env.unwrapped.action_meanings``:

    | Num | Action             | effect                                   |
    |-----|--------------------|------------------------------------------|
    | 0   | noop               | stand still                              |
    | 1   | forward            | move ``move_step`` cells ahead           |
    | 2   | backward           | move ``move_step`` cells back            |
    | 3   | strafe_left        | sidestep ``strafe_step`` cells left      |
    | 4   | strafe_right       | sidestep ``strafe_step`` cells right     |
    | 5   | turn_left          | turn ``turn_step`` degrees left          |
    | 6   | turn_right         | turn ``turn_step`` degrees right         |
    | 7   | forward_turn_left  | forward and turn left                    |
    | 8   | forward_turn_right | forward and turn right                   |

    Walls block movement; the agent slides along them as in DeepMind Lab.

    ## Observation Space
    ``Box(0, 255, (obs_height, obs_width, 3), uint8)``: the first-person RGB view (64×64 by default).

    ## Rewards
    +1 when the agent reaches the goal, 0 otherwise.

    ## Episode End
    ``goal_mode="respawn"`` (DeepMind Lab style, default): reaching the goal respawns the agent at a
    random spawn point and the episode goes on; it is truncated after ``max_episode_steps``.
    ``goal_mode="terminate"``: reaching the goal terminates the episode.

    ## Arguments
    ``maze``: a preset name (``"small"`` 11×11, ``"large"`` 15×15) or a :class:`MazeConfig`;
    ``maze_seed``: pin one maze for every reset (default: a new maze per reset, drawn from the
    seed); ``max_episode_steps``; ``goal_mode``; ``obs_width``/``obs_height``; ``move_step``,
    ``strafe_step``, ``turn_step``; ``styles`` (DMLab texture styles 1–5 to draw from);
    ``render_mode="rgb_array"``.

    ``reset(seed=s)`` fixes layout, textures and spawn. ``options`` may carry ``maze_seed`` (int) or
    ``layout`` (a text grid, ``*`` for walls) to pin a maze. ``info`` holds ``pose`` (x, z, heading),
    ``cell`` (row, col), ``clearance`` (free distance ahead, cells), ``maze_seed``, ``layout`` (the
    text grid) and ``goal`` (x, z); :meth:`render_top_view` draws a map.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}
    action_meanings = ACTION_MEANINGS

    def __init__(self, maze: str | MazeConfig = "small", maze_seed: int | None = None,
                 max_episode_steps: int = 300, goal_mode: str = "respawn", obs_width: int = 64,
                 obs_height: int = 64, move_step: float = 0.16, strafe_step: float = 0.12,
                 turn_step: float = 12.0, agent_radius: float = 0.2, styles: tuple[int, ...] | None = None,
                 render_mode: str | None = None):
        if isinstance(maze, str):
            if maze not in PRESETS:
                raise ValueError(f"unknown maze preset {maze!r}; valid presets: {', '.join(PRESETS)}")
            maze = PRESETS[maze]
        if styles is not None:  # e.g. one texture style, to fit the data to a small compute budget
            maze = dataclasses.replace(maze, styles=tuple(int(s) for s in styles))
        if goal_mode not in ("respawn", "terminate"):
            raise ValueError(f"goal_mode must be 'respawn' or 'terminate', got {goal_mode!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.maze_config = maze
        self.fixed_maze_seed = maze_seed
        self.max_episode_steps = max_episode_steps
        self.goal_mode = goal_mode
        self.move_step, self.strafe_step = move_step, strafe_step
        self.turn_step = math.radians(turn_step)
        self.radius = agent_radius
        self.render_mode = render_mode
        self.obs_size = (obs_height, obs_width)
        self.action_space = spaces.Discrete(len(ACTIONS))
        self.observation_space = spaces.Box(0, 255, (obs_height, obs_width, 3), np.uint8)
        self._renderer = None  # created lazily: no GL context before the first reset
        self._layout: MazeLayout | None = None
        self._layout_cache: dict[int, MazeLayout] = {}
        self._obs: np.ndarray | None = None

    # -- world ------------------------------------------------------------------------------------
    def _get_layout(self, options: dict) -> MazeLayout:
        if "layout" in options:
            return layout_from_text(options["layout"], int(options.get("maze_seed", 0)), self.maze_config)
        if "maze_seed" in options:
            seed = int(options["maze_seed"])
        elif self.fixed_maze_seed is not None:
            seed = int(self.fixed_maze_seed)
        else:
            seed = int(self.np_random.integers(0, 2**31 - 1))
        if seed not in self._layout_cache:
            if len(self._layout_cache) > 64:
                self._layout_cache.clear()
            self._layout_cache[seed] = generate_layout(self.maze_config, seed)
        return self._layout_cache[seed]

    def _random_spot(self, chars: str) -> tuple[float, float]:
        cells = self._layout.cells(chars) or self._layout.free_cells()
        r, c = cells[int(self.np_random.integers(len(cells)))]
        return c + 0.5, r + 0.5

    def _spawn(self) -> None:
        """Put the agent on a spawn cell (not the goal's), facing a random direction."""
        goal_cell = (int(self._goal[1]), int(self._goal[0]))
        for _ in range(20):
            x, z = self._random_spot("P")
            if (int(z), int(x)) != goal_cell:
                break
        self._x, self._z = x, z
        self._heading = float(self.np_random.uniform(-math.pi, math.pi))

    def _blocked(self, x: float, z: float) -> bool:
        """True if a circle of the agent's radius at (x, z) overlaps a wall cell."""
        r0, r1 = int(math.floor(z - self.radius)), int(math.floor(z + self.radius))
        c0, c1 = int(math.floor(x - self.radius)), int(math.floor(x + self.radius))
        for r in range(r0, r1 + 1):
            for c in range(c0, c1 + 1):
                if self._layout.is_wall(r, c):
                    nx, nz = min(max(x, c), c + 1), min(max(z, r), r + 1)
                    if (x - nx) ** 2 + (z - nz) ** 2 < self.radius**2:
                        return True
        return False

    def _move(self, forward: float, right: float) -> None:
        h = self._heading
        dx = forward * math.cos(h) + right * math.sin(h)
        dz = -forward * math.sin(h) + right * math.cos(h)
        # try the full move, then slide along each axis (DeepMind Lab agents slide along walls)
        for mx, mz in ((dx, dz), (dx, 0.0), (0.0, dz)):
            if (mx or mz) and not self._blocked(self._x + mx, self._z + mz):
                self._x += mx
                self._z += mz
                return

    def _render_obs(self) -> np.ndarray:
        return self._renderer.render(self._x, self._z, self._heading)

    def clearance(self, max_dist: float = 4.0, step: float = 0.05) -> float:
        """Free distance ahead of the agent along its heading, in cells (ray march over the grid)."""
        dx, dz = math.cos(self._heading), -math.sin(self._heading)
        d = 0.0
        while d < max_dist:
            d += step
            if self._layout.is_wall(int(math.floor(self._z + d * dz)), int(math.floor(self._x + d * dx))):
                return d - step
        return max_dist

    def _info(self) -> dict[str, Any]:
        return {
            "pose": np.array([self._x, self._z, self._heading], dtype=np.float32),
            "clearance": np.float32(self.clearance()),
            "cell": (int(self._z), int(self._x)),
            "maze_seed": self._layout.maze_seed,
            "layout": self._layout.text,
            "goal": np.array(self._goal, dtype=np.float32),
        }

    # -- gymnasium API ----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        layout = self._get_layout(options)
        if self._renderer is None:
            from envs.maze.render import MazeRenderer

            self._renderer = MazeRenderer(self.obs_size[1], self.obs_size[0])
        self._layout = layout
        self._goal = self._random_spot("G")
        self._renderer.build(layout, self._goal)
        self._spawn()
        self._steps = 0
        self._obs = self._render_obs()
        return self._obs.copy(), self._info()

    def step(self, action):
        if self._layout is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space} "
                             f"(meanings: {', '.join(ACTION_MEANINGS)})")
        _, fwd, strafe, turn = ACTIONS[int(action)]
        self._heading = (self._heading + turn * self.turn_step + math.pi) % (2 * math.pi) - math.pi
        self._move(fwd * self.move_step, strafe * self.strafe_step)
        self._steps += 1
        reward, terminated = 0.0, False
        if math.hypot(self._x - self._goal[0], self._z - self._goal[1]) < self.radius + 0.15:
            reward = 1.0
            if self.goal_mode == "terminate":
                terminated = True
            else:
                self._spawn()
        truncated = not terminated and self._steps >= self.max_episode_steps
        self._obs = self._render_obs()
        return self._obs.copy(), reward, terminated, truncated, self._info()

    def render(self):
        if self.render_mode == "rgb_array":
            return None if self._obs is None else self._obs.copy()
        return None

    def render_top_view(self, scale: int = 8) -> np.ndarray:
        """A top-down map (uint8 RGB): walls dark, rooms tinted, goal gold, agent red with a heading tick."""
        if self._layout is None:
            raise RuntimeError("call reset() before render_top_view()")
        wall = self._layout.wall_mask()
        img = np.where(wall[..., None], np.uint8(40), np.uint8(200)).astype(np.uint8).repeat(3, -1)
        palette = np.array([[200, 200, 200], [170, 200, 235], [235, 200, 170], [180, 230, 180],
                            [225, 180, 225], [230, 230, 170], [170, 230, 230]], dtype=np.uint8)
        for r, row in enumerate(self._layout.variations):
            for c, ch in enumerate(row):
                if not wall[r, c] and ch != ".":
                    img[r, c] = palette[1 + (ord(ch) - ord("A")) % (len(palette) - 1)]
        img = img.repeat(scale, 0).repeat(scale, 1)

        def dot(x: float, z: float, color, rad: float) -> None:
            yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
            img[(xx - x * scale) ** 2 + (yy - z * scale) ** 2 <= (rad * scale) ** 2] = color

        dot(*self._goal, (230, 180, 20), 0.25)
        dot(self._x, self._z, (220, 30, 30), self.radius)
        tip = (self._x + 0.45 * math.cos(self._heading), self._z - 0.45 * math.sin(self._heading))
        dot(*tip, (120, 0, 0), 0.1)
        return img

    @property
    def layout(self) -> MazeLayout | None:
        """The current maze layout (``None`` before the first reset)."""
        return self._layout

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()


def make_config(**kwargs) -> MazeConfig:
    """A :class:`MazeConfig` with the given fields changed from the small preset."""
    return dataclasses.replace(PRESETS["small"], **kwargs)


def goal_in_view(info: dict, fov_deg: float = 60.0, step: float = 0.05) -> bool:
    """Whether the goal's centre lies in the agent's view: within ``fov_deg`` / 2 of the heading (the renderer's
    60° at a square frame) and with no wall cell on the straight line to it (ray march over ``info['layout']``).

    A geometric reading of ``info`` (``pose``, ``goal``, ``layout``), for diagnostics: how often an agent
    sees the goal tells its exploration apart from its approach. The box's edges may show while its centre is
    out of view; this counts the centre only.
    """
    x, z, heading = (float(v) for v in np.asarray(info["pose"])[:3])
    gx, gz = (float(v) for v in np.asarray(info["goal"])[:2])
    # forward moves along (cos h, -sin h); a left turn adds to h (as DMLabMazeEnv.step)
    off = (math.atan2(-(gz - z), gx - x) - heading + math.pi) % (2 * math.pi) - math.pi
    if abs(off) > math.radians(fov_deg) / 2:
        return False
    grid = str(info["layout"]).split("\n")
    n = max(2, int(math.hypot(gx - x, gz - z) / step))
    for i in range(1, n):
        t = i / n
        if grid[int(math.floor(z + t * (gz - z)))][int(math.floor(x + t * (gx - x)))] == "*":
            return False
    return True


def goal_in_view_along(poses: np.ndarray, goal, layout: str) -> np.ndarray:
    """(L,) bool: :func:`goal_in_view` at each pose (L, 3) of an episode whose goal and layout stay put."""
    return np.array([goal_in_view({"pose": p, "goal": goal, "layout": layout}) for p in np.asarray(poses)], bool)


def goal_seen(ep: dict, what: str) -> np.ndarray:
    """(L,) bool: the goal's centre in view at each frame of dataset episode ``ep`` (its ``poses`` (L, 3), and the
    ``goal`` and ``layout`` in its ``attrs``). Raises :class:`DatasetError` naming ``what`` needs them when the
    episode lacks one (datasets collected or tokenized before poses were kept)."""
    attrs = ep.get("attrs", {})
    if "poses" not in ep or "goal" not in attrs or not attrs.get("layout"):
        raise DatasetError(f"{what} needs every episode's poses, goal and layout; episode {ep.get('id')} lacks "
                           f"{'poses' if 'poses' not in ep else 'a recorded goal or layout'} (collect a maze env "
                           "anew, and tokenize it with this version, which keeps the poses)")
    return goal_in_view_along(ep["poses"], attrs["goal"], attrs["layout"])


def goal_lost_ends(seen: np.ndarray, reached: np.ndarray, length: int) -> np.ndarray:
    """Frames j (r,) of one episode where the goal is out of view but was in view earlier in the window of
    ``length`` frames up to j (from frame max(0, j − length + 1)), with no reach after the window's first frame:
    a reach moves the agent to a fresh start, so a box seen before it is not where the window last saw it.
    ``seen`` (L,) from :func:`goal_seen`; ``reached`` (L,) bool, the raw reward frames."""
    seen, reached = np.asarray(seen, bool), np.asarray(reached, bool)
    j = np.arange(len(seen))
    s = np.maximum(0, j - length + 1)
    saw = np.concatenate([[0], np.cumsum(seen)])                    # in view among frames [a, b): saw[b] - saw[a]
    hits = np.concatenate([[0], np.cumsum(reached)])
    return j[~seen & (saw[j] - saw[s] > 0) & (hits[j + 1] - hits[s + 1] == 0)]
