"""The world-model RL loop end to end on tiny settings, the saved policy, and the baselines' scoring."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from envs.common.errors import CheckpointError, ConfigError

TINY = dict(rounds=1, collect_steps=40, episode_steps=20, wm_steps=2, dream_steps=16, dream_envs=2, n_steps=8,
            batch_size=16, epochs=1, horizon=4, steps_per_frame=1, eval_episodes=2, eval_seed=3, threads=1,
            progress=False)


@pytest.mark.slow
def test_one_round_runs_end_to_end_saves_a_playable_policy_and_resumes(tiny_world_checkpoint, tmp_path):
    from agents.policy import PolicyActor, goal_rate, load_policy, play_policy
    from agents.rl import RLConfig, count_rewards, run_rl
    from envs.dataset import EpisodeDataset
    from worldmodel.cli import run

    out = tmp_path / "rl"
    res = run_rl(RLConfig(out=str(out), checkpoint=str(tiny_world_checkpoint), **TINY))
    r0 = out / "rounds" / "r00"
    row = res["rounds"][0]
    # 1. real steps collected into a frames dataset and tokenized; 2. the world model fine-tuned from the start
    ds = EpisodeDataset(r0 / "frames", "train")
    assert sum(n - 1 for n in ds.lengths()) == 40 == row["real_steps"]
    ds.close()
    assert (r0 / "tokens" / "manifest.json").is_file()
    assert json.loads((r0 / "world" / "model.json").read_text())["init"]["path"] == str(tiny_world_checkpoint)
    # 3. PPO trained in the dream; 4. evaluated on the held-out mazes
    assert row["dream_frames"] >= 16 and row["eval_steps"] == 2 * 20
    # dreams start before real rewards only where the start data holds some (a random walk's 40 steps: none)
    assert row["reward_starts"] == (0.5 if count_rewards(str(r0 / "tokens"), "train") else 0.0)
    # an uncalibrated start dreams at the 0.5 threshold; the fine-tune keeps the start's reward labelling
    assert row["reward_threshold"] == 0.5
    start_cfg = json.loads((tiny_world_checkpoint / "model.json").read_text())["train_config"]
    tuned_cfg = json.loads((r0 / "world" / "model.json").read_text())["train_config"]
    assert tuned_cfg["reward_early"] == start_cfg.get("reward_early", 0)
    with open(out / "rl_log.csv") as f:
        logged = list(csv.DictReader(f))
    assert len(logged) == 1 and float(logged[0]["eval_reaches_per_1000"]) == pytest.approx(row["eval_reaches_per_1000"])
    assert (out / "curves.png").stat().st_size > 0
    # the saved policy reloads, acts like the trained one, and plays in the real env
    policy, meta = load_policy(out / "policy")
    again, _ = load_policy(r0 / "policy")
    obs = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert PolicyActor(policy, True).act(obs) == PolicyActor(again, True).act(obs)
    assert meta["env_id"] == "DMLabMaze-v0" and meta["actions"] == 9
    played = play_policy(out / "policy", episodes=1, seed=3, video=str(tmp_path / "p.mp4"), episode_steps=20)
    assert played["steps"] == 20 and (tmp_path / "p.mp4").stat().st_size > 0
    run("play", [f"policy={out / 'policy'}", "episodes=1", "episode_steps=20", "seed=3", f"out={tmp_path / 'play'}"])
    assert json.loads((tmp_path / "play" / "play.json").read_text())["steps"] == 20
    assert (tmp_path / "play" / "play.mp4").stat().st_size > 0
    with pytest.raises(CheckpointError, match="not a policy folder"):
        run("play", [f"policy={tmp_path}"])
    scored = goal_rate(PolicyActor(policy), "DMLabMaze-v0", {}, 2, 3, 20, actor_seed=0)
    assert scored["steps"] == 40 and scored["reaches_per_1000"] == 1000 * scored["reaches"] / 40
    # resuming: a finished round is not run again; one more round continues from it
    stamp = (r0 / "done.json").stat().st_mtime_ns
    res2 = run_rl(RLConfig(out=str(out), checkpoint=str(tiny_world_checkpoint), **{**TINY, "rounds": 2}))
    assert (r0 / "done.json").stat().st_mtime_ns == stamp and [r["round"] for r in res2["rounds"]] == [0, 1]
    assert res2["rounds"][1]["real_steps"] == 80
    # other settings in the same folder are refused by name
    with pytest.raises(ConfigError, match="collect_steps"):
        run_rl(RLConfig(out=str(out), checkpoint=str(tiny_world_checkpoint), **{**TINY, "collect_steps": 50}))
    # a changed weight file is refused on load (its sha256 is sealed in policy.json)
    w = out / "policy" / "policy.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="policy.safetensors"):
        load_policy(out / "policy")


def test_the_loop_dreams_at_the_start_checkpoints_calibrated_threshold(tiny_world_checkpoint, tmp_path):
    import shutil

    from agents.rl import RLConfig, run_rl, world_meta
    from worldmodel.model.checkpoint import write_reward_calibration

    ckpt = tmp_path / "world"
    shutil.copytree(tiny_world_checkpoint, ckpt)
    assert world_meta(str(ckpt))["reward_threshold"] == 0.5
    write_reward_calibration(ckpt, 0.25, {"trials": 1})
    assert world_meta(str(ckpt))["reward_threshold"] == 0.25
    with pytest.raises(ConfigError, match="reward_threshold"):
        run_rl(RLConfig(out=str(tmp_path / "a"), checkpoint=str(ckpt), reward_threshold=1.0))


def test_bad_settings_are_refused_before_any_work(tmp_path):
    from agents.rl import RLConfig, run_rl

    with pytest.raises(ConfigError, match="batch_size"):
        run_rl(RLConfig(out=str(tmp_path / "a"), dream_envs=2, n_steps=8, batch_size=64))
    with pytest.raises(ConfigError, match="wm_data"):
        run_rl(RLConfig(out=str(tmp_path / "b"), wm_data=[str(tmp_path / "nothing")]))
    with pytest.raises(ConfigError, match="first_policy"):
        run_rl(RLConfig(out=str(tmp_path / "c"), first_policy="oracle"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "mine.txt").write_text("a user's file")
    with pytest.raises(ConfigError, match="not an RL run"):
        run_rl(RLConfig(out=str(tmp_path / "d")))
    assert not (tmp_path / "a").exists() and (tmp_path / "d" / "mine.txt").read_text() == "a user's file"


@pytest.mark.slow
def test_baseline_actors_are_scored_on_the_same_held_out_mazes():
    from agents.policy import goal_rate
    from envs.maze.dmlab import ACTION_MEANINGS
    from envs.policies import make_policy

    a = goal_rate(make_policy("random_walk", ACTION_MEANINGS), "DMLabMaze-v0", {}, 2, 7, 30, actor_seed=1)
    b = goal_rate(make_policy("random_walk", ACTION_MEANINGS), "DMLabMaze-v0", {}, 2, 7, 30, actor_seed=1)
    c = goal_rate(make_policy("random_walk", ACTION_MEANINGS), "DMLabMaze-v0", {}, 2, 7, 30, actor_seed=2)
    assert a == b and a["steps"] == 60 and c["steps"] == 60
    with pytest.raises(ConfigError, match="eval_episodes"):
        goal_rate(make_policy("uniform", ACTION_MEANINGS), "DMLabMaze-v0", {}, 0, 7)
