"""Loop closure: the loop scripts, the real maze's premise (turning away and back returns the identical
view), the metric on the tiny checkpoint, and `maskflow eval loops=...` writing its section."""

from __future__ import annotations

import numpy as np
import pytest

from envs.common.errors import ConfigError
from envs.loops import action_yaw, parse_loop, real_loop
from worldmodel.evaluation.loops import loop_closure, pair_loops


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
    assert res["env_id"] == "DMLabMaze-v0" and isinstance(res["env_kwargs"], dict)   # the env it played, recorded
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


def _loop_result(returns: list[float], fars: list[float], first_seed: int = 1) -> dict:
    """A loop_closure-shaped result of one loop, ``turn15``, on mazes 2 i + 1 from ``first_seed``."""
    trials = [{"maze_seed": first_seed + 2 * i, "return_psnr": r, "far_psnr": f, "ceiling_psnr": 30.0,
               "real_return_psnr": 100.0, "self_psnr": None} for i, (r, f) in enumerate(zip(returns, fars))]
    return {"loops": {"turn15": {"per_trial": trials}}}


def test_pair_loops_pools_the_same_mazes_and_refuses_others(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    a = [_loop_result([20, 22], [10, 12]), _loop_result([18, 30, 14], [12, 11, 13], first_seed=5)]
    b = [_loop_result([14, 15], [11, 12]), _loop_result([13, 20, 15], [12, 12, 12], first_seed=5)]
    m = pair_loops(a, b)["turn15"]
    assert m["return_psnr"]["n"] == 5 and m["return_psnr"]["mean"] == pytest.approx(np.mean([6, 7, 5, 10, -1]))
    assert m["return_psnr"]["wins"] == pytest.approx(0.8)
    assert m["return_psnr"]["ci_low"] <= m["return_psnr"]["mean"] <= m["return_psnr"]["ci_high"]
    assert m["return_minus_far"]["mean"] == pytest.approx(np.mean([7, 7, 5, 11, -2]))
    with pytest.raises(ConfigError, match="loop turn15: the two results scored different mazes"):
        pair_loops(a[0], b[1])
    # the same maze seeds in another env (other wall styles) are other mazes
    style1, every = (dict(_loop_result([20, 22], [10, 12]), env_id="DMLabMaze-v0", env_kwargs=kw)
                     for kw in ({"styles": [1]}, {}))
    assert pair_loops(style1, dict(style1))["turn15"]["return_psnr"]["n"] == 2
    with pytest.raises(ConfigError, match="played different envs.*styles.*same data="):
        pair_loops(style1, every)
    # the pooling script reads eval folders (results.json) and loop-results JSON alike
    (tmp_path / "eval_a").mkdir()
    (tmp_path / "eval_a" / "results.json").write_text(json.dumps({"settings": {}, "loops": a[0]}))
    (tmp_path / "a_b.json").write_text(json.dumps(a[1]))
    for i, r in enumerate(b):
        (tmp_path / f"b{i}.json").write_text(json.dumps(r))
    spec = importlib.util.spec_from_file_location(
        "loop_compare", Path(__file__).resolve().parents[3] / "benchmarks" / "loop_compare.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.compare([str(tmp_path / "eval_a"), str(tmp_path / "a_b.json")],
                        [str(tmp_path / "b0.json"), str(tmp_path / "b1.json")])["loops"]["turn15"]
    assert res["return_psnr"] == m["return_psnr"] and res["a"]["return_psnr"] == pytest.approx(20.8)
    (tmp_path / "none.json").write_text(json.dumps({"settings": {}, "loops": None}))
    with pytest.raises(ConfigError, match="none.json: holds no loop-closure results"):
        bench.read_loops(str(tmp_path / "none.json"))


@pytest.mark.slow
def test_loops_dream_with_heading_recall_when_asked(tiny_world_checkpoint, tmp_path):
    """The tiny checkpoint fine-tuned with heading rotary (no new weights): heading recall reaches the dream
    env's rollout and the loop results record it; a loop that never leaves the 3-frame window (turn1) dreams
    exactly the same frames with it. (That recall changes the dream once a view has left the window is
    tested on the rollout, tests/worldmodel/model/test_heading_recall.py: this barely trained model hardly
    looks at its history.)"""
    from worldmodel.dream.env import MaskFlowDreamEnv
    from worldmodel.training.loop import TrainConfig, train

    head = tmp_path / "head"
    train(TrainConfig(data=str(tiny_world_checkpoint.parent / "tokens"), out=str(head), init=str(tiny_world_checkpoint),
                      heading_pairs=2, clip_len=4, steps=1, lr=1e-9, eval_every=0, threads=1, progress=False,
                      tensorboard=False, device="cpu"))
    env = MaskFlowDreamEnv(str(head), context="given", heading_recall=True, threads=1)
    assert env.core.rollout.cache.bank is not None and env.core.rollout.cache.bank.buckets == 30   # 12-degree turns
    env.close()
    kw = dict(trials=1, seed=0, steps_per_frame=2, threads=1, precision="fp32")
    runs = {rec: loop_closure(str(head), ["turn1", "turn4"], heading_recall=rec, **kw) for rec in (False, True)}
    assert runs[True]["heading_recall"] and not runs[False]["heading_recall"]
    assert runs[True]["loops"]["turn1"]["per_trial"] == runs[False]["loops"]["turn1"]["per_trial"]
