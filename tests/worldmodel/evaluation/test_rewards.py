"""Reward recall: windows anchored on real goal reaches, scored on a tiny dream."""

from __future__ import annotations

import json

import numpy as np
import pytest

from envs.common.errors import ConfigError
from worldmodel.evaluation.rewards import event_windows, reward_recall


@pytest.mark.slow
def test_windows_sit_on_real_reaches_and_away_from_them():
    import gymnasium as gym

    import envs  # noqa: F401
    from envs.heldout import play_heldout

    lead, tol, m = 4, 2, 3
    for trial in range(2):
        pos, neg = event_windows("DMLabMaze-v0", {}, trial, 0, m, lead, tol, max_steps=600)
        env = gym.make("DMLabMaze-v0", max_episode_steps=601)
        play = play_heldout(env, 600, trial, "goal_seeking", on_end="stop")        # the same play, again
        env.close()
        assert pos is not None and neg is not None and pos.maze_seed == 2 * trial + 1
        assert play.rewards[pos.step] > 0 and not np.any(play.rewards[: pos.step][m + lead - 1:] > 0)
        s = pos.step - lead                                   # context ends lead frames before the reach
        assert np.array_equal(pos.context_frames, play.frames[s - m + 1: s + 1]) and len(pos.context_frames) == m
        assert np.array_equal(pos.actions, play.actions[s + 1: pos.step + tol + 1])
        near = np.flatnonzero(play.rewards > 0)
        assert np.all(np.abs(near - neg.step) > lead + tol) and not neg.terminal


@pytest.mark.slow
def test_reward_recall_scores_a_tiny_dream(tiny_world_checkpoint):
    ckpt = str(tiny_world_checkpoint)
    res = reward_recall(ckpt, trials=3, seed=0, steps_per_frame=1, threads=1, max_steps=400)
    assert res["reward_recall"]["of"] == len(res["reaches"]) >= 2
    for key in ("reward_recall", "reward_false_alarms", "done_false_alarms"):
        r = res[key]
        assert r["ci95"][0] <= r["rate"] <= r["ci95"][1] and r["count"] <= r["of"]
    # hits are peaks above the threshold within ± tolerance of the reach: the counts follow the recorded peaks
    thr = res["reward_threshold"]
    assert res["reward_recall"]["count"] == sum(r["reward_peak"] > thr for r in res["reaches"])
    for r in res["reaches"]:
        assert len(r["reward_probs"]) == res["lead"] + res["tolerance"]
        assert r["reward_peak"] == pytest.approx(max(r["reward_probs"][1:]), abs=1e-4)   # frames t-2 .. t+2
    assert res["done_recall"] is None                    # respawn mode: nothing ends, only false alarms count
    # a threshold of 0 fires everywhere, of 1 nowhere
    assert reward_recall(ckpt, trials=2, steps_per_frame=1, threads=1, threshold=0.0, max_steps=400)[
        "reward_recall"]["rate"] == 1.0
    never = reward_recall(ckpt, trials=2, steps_per_frame=1, threads=1, threshold=1.0, max_steps=400)
    assert never["reward_recall"]["rate"] == 0.0 and never["reward_false_alarms"]["rate"] == 0.0
    with pytest.raises(ConfigError, match="reward_trials=0"):
        reward_recall(ckpt, trials=0)


def test_pick_threshold_keeps_false_alarms_within_the_budget():
    from worldmodel.evaluation.rewards import pick_threshold

    neg = np.array([0.9, 0.3, 0.2, 0.12, 0.11, 0.1, 0.09, 0.08, 0.07, 0.06])
    for budget, want in ((0.0, 0.9), (0.1, 0.3), (0.25, 0.2), (0.5, 0.1)):
        t = pick_threshold(neg, budget)
        assert t == pytest.approx(want) and (neg > t).mean() <= budget
    assert pick_threshold(np.full(10, 0.01), 0.1) == 0.05          # never below the floor
    assert pick_threshold(np.full(10, 0.99), 0.0) == 0.95          # nor above the ceiling
    with pytest.raises(ConfigError, match="no no-reach windows"):
        pick_threshold([], 0.1)


@pytest.mark.slow
def test_calibrate_writes_a_threshold_the_dream_uses_and_only_for_its_weights(tiny_world_checkpoint, tmp_path):
    import json
    import shutil

    from envs.common.errors import CheckpointError
    from worldmodel.cli import run
    from worldmodel.dream.env import MaskFlowDreamEnv
    from worldmodel.model.checkpoint import CALIBRATION_NAME, load_world_model, save_world_model

    ckpt = tmp_path / "world"
    shutil.copytree(tiny_world_checkpoint, ckpt)
    out = run("calibrate", [f"checkpoint={ckpt}", "trials=3", "steps_per_frame=1", "threads=1",
                            "max_false_alarms=0.5"])
    cal = json.loads((ckpt / CALIBRATION_NAME).read_text())
    t = cal["reward_threshold"]
    assert t == out["reward_threshold"] and 0.05 <= t <= 0.95 and cal["trials"] == 3 and cal["seed"] == 500000
    assert cal["at_threshold"]["false_alarms"] <= 0.5
    # the dream takes the calibrated threshold unless told another; uncalibrated checkpoints keep 0.5
    for kw, want in (({}, t), ({"reward_threshold": 0.9}, 0.9)):
        env = MaskFlowDreamEnv(str(ckpt), context="given", **kw)
        assert env.core.reward_threshold == pytest.approx(want)
        env.close()
    env = MaskFlowDreamEnv(str(tiny_world_checkpoint), context="given")
    assert env.core.reward_threshold == 0.5
    env.close()
    with pytest.raises(ConfigError, match="reward_threshold"):
        MaskFlowDreamEnv(str(ckpt), context="given", reward_threshold=1.5)
    # the calibration is sealed to its weights: other weights (a fine-tune, here a nudge) refuse it by name
    model, _, meta = load_world_model(ckpt)
    state = {k: v + 1e-3 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    other = tmp_path / "other"
    save_world_model(other, model.cfg, state, action_meanings=meta["action_space"]["meanings"],
                     env_id=meta["env_id"], tokenizer_dir=ckpt / "tokenizer")
    shutil.copy(ckpt / CALIBRATION_NAME, other / CALIBRATION_NAME)
    with pytest.raises(CheckpointError, match="made for other weights"):
        load_world_model(other)
    # a bad setting is refused before any maze is played
    with pytest.raises(ConfigError, match="max_false_alarms"):
        run("calibrate", [f"checkpoint={ckpt}", "max_false_alarms=1.5"])


def test_a_release_takes_its_calibration_into_its_checksums(tiny_world_checkpoint, tmp_path):
    from envs.common.errors import CheckpointError
    from worldmodel.model.checkpoint import CALIBRATION_NAME, load_world_model, write_reward_calibration
    from worldmodel.model.export import export_checkpoint, verify_release

    rel = export_checkpoint(tiny_world_checkpoint, tmp_path / "release")
    write_reward_calibration(rel, 0.3, {"trials": 1})
    assert CALIBRATION_NAME in verify_release(rel)          # listed, so the release still verifies
    assert load_world_model(rel)[2]["reward_calibration"]["reward_threshold"] == 0.3
    write_reward_calibration(rel, 0.2, {"trials": 1})        # a new calibration replaces the old one
    assert load_world_model(rel)[2]["reward_calibration"]["reward_threshold"] == 0.2
    # a calibration written before releases listed it (unlisted) is replaced and listed, not refused
    sums = json.loads((rel / "SHA256SUMS.json").read_text())
    del sums["files"][CALIBRATION_NAME]
    (rel / "SHA256SUMS.json").write_text(json.dumps(sums))
    with pytest.raises(CheckpointError, match=CALIBRATION_NAME):
        verify_release(rel)
    write_reward_calibration(rel, 0.25, {"trials": 1})
    assert CALIBRATION_NAME in verify_release(rel)
    export_checkpoint(tiny_world_checkpoint, rel, overwrite=True)   # re-exporting drops it (new weights)
    assert CALIBRATION_NAME not in verify_release(rel) and not (rel / CALIBRATION_NAME).exists()
    # a release changed by hand is not blessed by calibrating it
    (rel / "tokenizer" / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        write_reward_calibration(rel, 0.3, {"trials": 1})
    assert not (rel / CALIBRATION_NAME).exists()
