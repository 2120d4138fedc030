"""Loop closure: the loop scripts, the real maze's premise (turning away and back returns the identical
view), the metric on the tiny checkpoint, and `maskflow eval loops=...` writing its section."""

from __future__ import annotations

import numpy as np
import pytest

from envs.common.errors import ConfigError
from envs.loops import action_yaw, parse_loop, real_loop
from worldmodel.evaluation.loops import loop_closure


def test_loop_names_parse_into_turn_scripts():
    turn = parse_loop("turn3")
    assert turn.script == ("turn_left",) * 3 + ("turn_right",) * 3 and turn.frames == 6 and turn.far == 2
    circle = parse_loop("circle30")
    assert circle.script == ("turn_left",) * 30 and circle.far == 14          # 180 degrees after 15 turns
    assert parse_loop("turn30").far == 14 and parse_loop("turn15").far == 14  # 30 turns left = back at the start
    # frames facing a heading seen before on the way out (never the start view: that is the loop's score)
    assert turn.revisits() == [(4, 2), (5, 1)] and circle.revisits() == []
    assert parse_loop("turn30").revisits() == [(30 + j, 30 - j) for j in range(1, 30)]
    for bad in ("turn", "turn0", "spin4", "circle-3", "turn4x"):
        with pytest.raises(ConfigError, match=r"use turnL .* or circleN"):
            parse_loop(bad)


@pytest.mark.parametrize("name", ["turn5", "circle30"])
def test_the_real_maze_returns_to_the_identical_view(name):
    """The premise of the metric: deterministic rendering and exact 12-degree turns."""
    loop = parse_loop(name)
    frames, actions = real_loop("DMLabMaze-v0", {}, loop, context=4, seed=3)
    assert len(frames) == 4 + loop.frames and list(actions[:1]) == [-1]
    assert np.array_equal(frames[-1], frames[3])                       # back at the start view
    assert not np.array_equal(frames[4 + loop.far], frames[3])         # and it had really turned away
    assert all(np.array_equal(frames[3 + a], frames[3 + b]) for a, b in loop.revisits())  # same heading, same view


@pytest.mark.slow
def test_loop_closure_scores_a_tiny_dream(tiny_world_checkpoint):
    ckpt = str(tiny_world_checkpoint)
    res = loop_closure(ckpt, ["turn2", "circle30"], trials=2, seed=0, steps_per_frame=2, threads=1)
    assert set(res["loops"]) == {"turn2", "circle30"} and res["trials"] == 2
    for name, r in res["loops"].items():
        assert r["frames"] == parse_loop(name).frames and len(r["per_trial"]) == 2
        assert r["real_return_psnr"] == 100.0                            # the premise held in every trial
        assert 0 < r["return_psnr"] < 100 and 0 < r["far_psnr"] <= 100 and 0 < r["ceiling_psnr"] < 100
        assert r["return_minus_far"] == pytest.approx(r["return_psnr"] - r["far_psnr"])
        assert r["goal_met"] == (r["ceiling_psnr"] - r["return_psnr"] <= 4 and r["return_minus_far"] >= 5)
    # the dream against itself: turn2's way back (frame 3) against its way out (frame 1); circles face no heading twice
    assert 0 < res["loops"]["turn2"]["self_psnr"] <= 100 and res["loops"]["circle30"]["self_psnr"] is None
    assert all(t["self_psnr"] is not None for t in res["loops"]["turn2"]["per_trial"])
    # the same mazes for every loop: trial i is maze seed 2 (seed + i) + 1
    assert [t["maze_seed"] for t in res["loops"]["turn2"]["per_trial"]] == [1, 3]
    with pytest.raises(ConfigError, match="loop_trials=0"):
        loop_closure(ckpt, ["turn2"], trials=0)


@pytest.mark.slow
def test_real_turns_give_the_way_out_as_real_context(tiny_world_checkpoint):
    """With the first 3 of turn2's 4 turns real, only the last frame is dreamed: the revisit pair (3, 1) is then
    real against real (100 dB), and the settings record it; a loop with nothing left to dream is refused."""
    ckpt = str(tiny_world_checkpoint)
    res = loop_closure(ckpt, ["turn2"], trials=1, seed=0, steps_per_frame=2, threads=1, real_turns=3)
    r = res["loops"]["turn2"]
    assert res["real_turns"] == 3 and r["self_psnr"] == 100.0 and r["real_return_psnr"] == 100.0
    assert 0 < r["return_psnr"] < 100
    dreamed = loop_closure(ckpt, ["turn2"], trials=1, seed=0, steps_per_frame=2, threads=1)["loops"]["turn2"]
    assert dreamed["self_psnr"] < 100                      # fully dreamed, the same pair is the dream's own
    with pytest.raises(ConfigError, match="loop_real_turns=4 must lie in .0, frames of the loop.*turn2"):
        loop_closure(ckpt, ["turn2", "circle30"], trials=1, real_turns=4)


def test_action_yaw_reads_the_turns_from_the_action_names():
    from envs.maze.dmlab import ACTION_MEANINGS

    assert action_yaw(ACTION_MEANINGS) == [0, 0, 0, 0, 0, 12, -12, 12, -12]
    assert action_yaw(["noop", "turn_left", "turn_right"], {"turn_step": 20}) == [0, 20, -20]
