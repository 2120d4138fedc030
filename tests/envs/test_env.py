"""Environment contract tests for DMLabMaze-v0 and the adapters (real rendering)."""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.maze.dmlab import ACTION_MEANINGS, DMLabMazeEnv

A = {m: i for i, m in enumerate(ACTION_MEANINGS)}


@pytest.fixture
def env():
    e = DMLabMazeEnv()
    yield e
    e.close()


@pytest.mark.slow
@pytest.mark.parametrize("env_id", ["DMLabMaze-v0", "DMLabMazeLarge-v0", "DMLabMazeGoal-v0",
                                    "MiniWorldMazeS3Fast64-v0"])
def test_check_env_passes(env_id):
    e = gym.make(env_id)
    check_env(e.unwrapped, skip_render_check=False)
    obs, _ = e.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    e.close()


def test_ids_registered():
    for env_id in envs.ENV_IDS:
        assert env_id in gym.registry


@pytest.mark.slow
def test_same_seed_same_frames_different_seed_differs():
    def rollout(seed):
        e = DMLabMazeEnv()
        obs, info = e.reset(seed=seed)
        frames = [obs] + [e.step(a)[0] for a in [1, 1, 5, 1, 7, 6, 1, 3]]
        e.close()
        return np.stack(frames), info["layout"]

    f1, l1 = rollout(7)
    f2, l2 = rollout(7)
    f3, l3 = rollout(8)
    assert np.array_equal(f1, f2) and l1 == l2
    assert not np.array_equal(f1, f3)


@pytest.mark.slow
def test_turning_changes_heading_and_image(env):
    obs, info = env.reset(seed=1)
    obs2, _, _, _, info2 = env.step(A["turn_left"])
    dh = (info2["pose"][2] - info["pose"][2] + math.pi) % (2 * math.pi) - math.pi
    assert dh == pytest.approx(math.radians(12), abs=1e-4)
    assert np.allclose(info2["pose"][:2], info["pose"][:2])
    assert np.abs(obs2.astype(int) - obs).mean() > 1.0
    _, _, _, _, info3 = env.step(A["turn_right"])
    assert info3["pose"][2] == pytest.approx(info["pose"][2], abs=1e-4)


@pytest.mark.slow
def test_forward_moves_along_heading_and_walls_block(env):
    env.reset(seed=2)
    u = env.unwrapped
    # face the longest free direction, step forward once: the pose moves by move_step along the heading
    best = max(range(36), key=lambda k: (setattr(u, "_heading", k * math.pi / 18), u.clearance())[1])
    u._heading = best * math.pi / 18
    x0, z0 = u._x, u._z
    _, _, _, _, info = env.step(A["forward"])
    moved = np.array(info["pose"][:2]) - [x0, z0]
    assert np.linalg.norm(moved) == pytest.approx(u.move_step, rel=1e-3)
    assert moved[0] * math.cos(u._heading) - moved[1] * math.sin(u._heading) > 0
    # keep walking: the agent never enters a wall cell and never gets closer than its radius
    for _ in range(200):
        _, _, _, _, info = env.step(A["forward"])
        r, c = info["cell"]
        assert not u.layout.is_wall(r, c)
        assert not u._blocked(u._x, u._z)
    assert u.clearance() < 0.5  # it ended up against a wall


@pytest.mark.slow
def test_goal_gives_reward_and_respawns_or_terminates():
    for mode in ("respawn", "terminate"):
        e = DMLabMazeEnv(goal_mode=mode)
        e.reset(seed=4)
        gx, gz = e._goal
        e._x, e._z, e._heading = gx, gz, 0.0  # stand on the goal, then noop
        _, r, term, trunc, info = e.step(A["noop"])
        assert r == 1.0
        assert term == (mode == "terminate") and not trunc
        if mode == "respawn":
            assert math.hypot(info["pose"][0] - gx, info["pose"][1] - gz) > 0.3
        e.close()


@pytest.mark.slow
def test_truncation_at_max_steps_and_invalid_action():
    e = DMLabMazeEnv(max_episode_steps=5)
    e.reset(seed=0)
    flags = [e.step(0)[3] for _ in range(5)]
    assert flags == [False] * 4 + [True]
    with pytest.raises(ValueError, match="not in Discrete"):
        e.step(9)
    e.close()


@pytest.mark.slow
def test_options_pin_layout_and_maze_seed(env):
    _, info = env.reset(seed=0, options={"maze_seed": 1234})
    _, info2 = env.reset(seed=99, options={"maze_seed": 1234})
    assert info["layout"] == info2["layout"] and info["maze_seed"] == 1234
    grid = "*****\n*P G*\n*****"
    obs, info3 = env.reset(seed=1, options={"layout": grid})
    assert info3["layout"] == grid and info3["cell"] == (1, 1)


@pytest.mark.slow
def test_top_view_and_render(env):
    obs, _ = env.reset(seed=0)
    top = env.render_top_view(scale=4)
    assert top.dtype == np.uint8 and top.shape == (44, 44, 3)
    e = DMLabMazeEnv(render_mode="rgb_array")
    o, _ = e.reset(seed=0)
    assert np.array_equal(e.render(), o)
    e.close()


@pytest.mark.slow
def test_textures_are_dmlab_assets(env):
    env.reset(seed=5)
    lay = env.unwrapped.layout
    assert lay.wall_texture.startswith("wall_") and all(v.startswith("floor_") for v in lay.floor_textures.values())
    rooms = {ch for row in lay.variations for ch in row} - {"."}
    assert len({lay.floor_textures[r] for r in rooms}) >= min(len(rooms), 2)


@pytest.mark.slow
def test_only_diffuse_textures_are_drawn_so_walls_are_never_black():
    import warnings

    from labmaze import assets
    from PIL import Image

    from envs.maze.layout import style_textures

    for style in range(1, 6):
        walls, floors = style_textures(style)
        assert walls and floors and not any(n.endswith("_m.png") for n in walls + floors)   # no light maps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            means = [np.asarray(Image.open(Path(assets.ROOT_DIR) / f"style_{style:02d}" / n).convert("RGB")).mean()
                     for n in walls + floors]
        assert min(means) > 30, (style, means)
    # maze seed 3090996131 drew the near-black wall_light_m.png when the style folder was globbed
    e = DMLabMazeEnv(maze_seed=3090996131, styles=(1,))
    dark = []
    for seed in range(3):
        o, _ = e.reset(seed=seed)
        for _ in range(4):
            o, *_ = e.step(6)                           # turn: different views of the same maze
            dark.append((o.max(-1) < 20).mean())
    e.close()
    assert max(dark) < 0.05, dark


def test_optional_adapters_give_clear_errors():
    try:
        import deepmind_lab  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="cannot be built"):
            gym.make("DeepMindLab-v0")


def test_goal_in_view_reads_heading_field_of_view_and_walls():
    from envs.maze.dmlab import goal_in_view

    layout = "*****\n*   *\n* * *\n*   *\n*****"     # a ring around one pillar at row 2, col 2
    goal = np.array([3.5, 1.5], np.float32)          # x, z: the top-right corner cell
    info = {"layout": layout, "goal": goal}
    # from the top-left cell, heading 0 (+x) looks straight along the free top row at the goal
    assert goal_in_view({**info, "pose": np.array([1.5, 1.5, 0.0])})
    assert not goal_in_view({**info, "pose": np.array([1.5, 1.5, math.pi])})            # facing away
    assert not goal_in_view({**info, "pose": np.array([1.5, 1.5, math.radians(40)])})   # 40° off: outside 60°
    assert goal_in_view({**info, "pose": np.array([1.5, 1.5, math.radians(40)])}, fov_deg=90)
    # from the bottom-left cell the pillar stands on the diagonal between agent and goal
    assert not goal_in_view({**info, "pose": np.array([1.5, 3.5, math.radians(45)])})


def test_goal_lost_ends_are_windows_that_saw_the_goal_and_lost_it_without_a_reach():
    from envs.common.errors import DatasetError
    from envs.maze.dmlab import goal_lost_ends, goal_seen

    seen = np.zeros(20, bool)
    seen[[2, 3, 12]] = True
    reached = np.zeros(20, bool)
    # windows of 4 frames: frames 4-6 still hold frame 3's sighting; 13-15 hold frame 12's
    assert goal_lost_ends(seen, reached, 4).tolist() == [4, 5, 6, 13, 14, 15]
    assert goal_lost_ends(seen, reached, 1).tolist() == []                 # a window of one frame holds no past
    reached[14] = True                                                     # a reach at 14 moves the agent
    assert goal_lost_ends(seen, reached, 4).tolist() == [4, 5, 6, 13]
    reached[:] = False
    reached[2] = True                 # a reach on the window's first frame comes before what the window holds
    assert goal_lost_ends(seen, reached, 4).tolist() == [5, 6, 13, 14, 15]
    # read from an episode's poses, goal and layout; refused by name without them
    ep = {"id": 7, "poses": np.array([[1.5, 1.5, 0.0], [1.5, 1.5, math.pi]], np.float32),
          "attrs": {"layout": "*****\n*   *\n*****", "goal": np.array([3.5, 1.5], np.float32)}}
    assert goal_seen(ep, "x").tolist() == [True, False]
    with pytest.raises(DatasetError, match="sight_starts needs every episode's poses.*episode 7 lacks poses"):
        goal_seen({"id": 7, "attrs": ep["attrs"]}, "sight_starts")
    with pytest.raises(DatasetError, match="episode 7 lacks a recorded goal or layout"):
        goal_seen({**ep, "attrs": {"layout": ep["attrs"]["layout"]}}, "sight_starts")


@pytest.mark.slow
def test_goal_in_view_agrees_with_the_rendered_frame():
    """Wherever the geometry says the goal's centre is in view, the rendered frame shows the golden box."""
    from envs.maze.dmlab import goal_in_view
    from envs.policies import RandomWalkPolicy

    e = DMLabMazeEnv(styles=(1,))
    seen = 0
    try:
        for ep in range(6):
            obs, info = e.reset(seed=ep)
            walk = RandomWalkPolicy(ACTION_MEANINGS, seed=ep)
            for _ in range(300):
                if goal_in_view(info):
                    o = obs.astype(int)
                    # golden pixels, the box's darkest face included
                    gold = (o[..., 0] > 110) & (o[..., 1] > 85) & (o[..., 2] < 60) & (o[..., 0] - o[..., 2] > 80)
                    assert gold.sum() > 0, f"maze {info['maze_seed']}: goal in view at {info['pose']} but no gold"
                    seen += 1
                obs, _, _, _, info = e.step(walk.act(obs, info))
    finally:
        e.close()
    assert seen >= 10  # the walk met the goal in view often enough for the check to mean something
