"""The world-model RL loop end to end on tiny settings, the saved policy, and the baselines' scoring."""

from __future__ import annotations

import csv
import dataclasses
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
    assert (r0 / "tokens" / "manifest.json").is_file()
    # the poses travel with the frames into the tokens (`sight_starts` reads them there)
    first = ds.episode(0)
    toks = EpisodeDataset(r0 / "tokens", "train")
    assert first["poses"].shape == (len(first["frames"]), 3)
    assert np.array_equal(toks.episode(0)["poses"], first["poses"])
    toks.close()
    ds.close()
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


def test_wm_goal_share_reaches_each_fine_tune_and_needs_the_poses_of_wm_data(tmp_path, monkeypatch):
    import worldmodel.model.checkpoint as checkpoint
    import worldmodel.training.loop as loop
    from agents.rl import RLConfig, finetune_world, run_rl
    from envs.dataset import write_dataset

    def episode(poses: bool) -> dict:
        return {"id": 0, "frames": np.zeros((4, 8, 8, 3), np.uint8), "actions": np.zeros(4, np.int64),
                "rewards": np.zeros(4, np.float32), **({"poses": np.zeros((4, 3), np.float32)} if poses else {})}

    write_dataset(tmp_path / "bare", [episode(False)], env_id="DMLabMaze-v0", action_meanings=("a", "b"))
    write_dataset(tmp_path / "posed", [episode(True)], env_id="DMLabMaze-v0", action_meanings=("a", "b"))
    with pytest.raises(ConfigError, match="wm_goal_share=0.25 needs the poses .*bare"):
        run_rl(RLConfig(out=str(tmp_path / "a"), wm_goal_share=0.25, wm_data=[str(tmp_path / "bare")]))
    with pytest.raises(ConfigError, match="wm_steps=0"):
        run_rl(RLConfig(out=str(tmp_path / "a"), wm_goal_share=0.25, wm_steps=0))
    with pytest.raises(ConfigError, match="wm_goal_share"):
        RLConfig(wm_goal_share=1.0).validate()
    RLConfig(wm_goal_share=0.25, wm_data=[str(tmp_path / "posed")]).validate()
    seen = []
    monkeypatch.setattr(loop, "train", lambda tc: seen.append(tc))      # the settings each fine-tune gets
    monkeypatch.setattr(checkpoint, "read_world_model_meta", lambda path: {})
    finetune_world(RLConfig(wm_goal_share=0.25, wm_steps=4), "init", ["d"], tmp_path / "w", seed=0)
    finetune_world(RLConfig(wm_steps=4), "init", ["d"], tmp_path / "w", seed=0)
    assert [tc.goal_share for tc in seen] == [0.25, 0.0]


def test_bad_settings_are_refused_before_any_work(tmp_path):
    from agents.rl import RLConfig, run_rl

    with pytest.raises(ConfigError, match="batch_size"):
        run_rl(RLConfig(out=str(tmp_path / "a"), dream_envs=2, n_steps=8, batch_size=64))
    with pytest.raises(ConfigError, match="wm_data"):
        run_rl(RLConfig(out=str(tmp_path / "b"), wm_data=[str(tmp_path / "nothing")]))
    with pytest.raises(ConfigError, match="first_policy"):
        run_rl(RLConfig(out=str(tmp_path / "c"), first_policy="oracle"))
    with pytest.raises(ConfigError, match="sight_starts"):
        run_rl(RLConfig(out=str(tmp_path / "c"), reward_starts=0.5, sight_starts=0.75))
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


def test_a_frame_stacked_policy_sees_in_the_real_env_what_vecframestack_showed_it_in_training(tmp_path):
    import gymnasium as gym
    from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

    import envs  # noqa: F401
    from agents.policy import PolicyActor, new_policy, policy_actor, save_policy
    from envs.maze.dmlab import ACTION_MEANINGS

    k = 3
    venv = VecFrameStack(DummyVecEnv([lambda: gym.make("DMLabMaze-v0", max_episode_steps=50)]), k,
                         channels_order="last")
    venv.seed(5)
    stacked = venv.reset()                                  # 1 y x (k c)
    policy = new_policy([3 * k, 64, 64], 9)
    actor = PolicyActor(policy, True, frame_stack=k)
    frame = stacked[0][..., -3:]
    actions = [1, 5, 1, 6, 7, 2]
    for t, a in enumerate(actions):
        actor.act(frame)
        # the actor's stack is the training stack: zeros before the episode's first frame, the newest last
        assert np.array_equal(actor._stack, stacked[0]), t
        assert (actor._stack[..., : 3 * max(k - 1 - t, 0)] == 0).all()
        stacked, _, _, _ = venv.step(np.array([a]))
        frame = stacked[0][..., -3:]
    venv.close()
    # a new episode starts from zeros again
    actor.reset(0)
    actor.act(frame)
    assert (actor._stack[..., :-3] == 0).all() and np.array_equal(actor._stack[..., -3:], frame)
    # saved and loaded, the policy knows its stack depth and acts as before on the same frames
    save_policy(policy, tmp_path / "p", "DMLabMaze-v0", {}, ACTION_MEANINGS, frame_stack=k)
    again, meta = policy_actor(tmp_path / "p", deterministic=True)
    assert again.frame_stack == k == meta["frame_stack"] and meta["observation_shape"] == [3 * k, 64, 64]
    first = PolicyActor(policy, True, frame_stack=k)
    frames = np.random.default_rng(1).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    assert [first.act(f) for f in frames] == [again.act(f) for f in frames]


def test_resuming_a_run_written_before_a_setting_existed_takes_that_settings_default(tmp_path):
    from agents.rl import RLConfig, check_out
    from envs.common.files import write_json

    out = tmp_path / "rl"
    out.mkdir()
    settings = {k: v for k, v in RLConfig(out=str(out)).__dict__.items() if k != "frame_stack"}
    write_json(out / "rl.json", {"format": "maskflow-rl-run", "settings": settings})
    check_out(RLConfig(out=str(out), rounds=8))         # frame_stack's default (1) is what the old run used
    with pytest.raises(ConfigError, match="frame_stack"):
        check_out(RLConfig(out=str(out), frame_stack=4))


@pytest.mark.slow
def test_ppo_on_the_real_env_learns_and_plays_on_stacked_frames():
    from agents.policy import PolicyActor, goal_rate
    from agents.rl import RLConfig, ppo_real

    cfg = RLConfig(frame_stack=2, n_steps=8, batch_size=16, epochs=1)
    model = ppo_real("DMLabMaze-v0", {}, 32, cfg, envs_n=2, episode_steps=20)
    # (b) sees what (a) sees: two frames stacked along c
    assert model.policy.observation_space.shape == (6, 64, 64) and model.num_timesteps >= 32
    scored = goal_rate(PolicyActor(model.policy, frame_stack=2), "DMLabMaze-v0", {}, 1, 3, 20)
    assert scored["steps"] == 20
    with pytest.raises(ConfigError, match="frame_stack"):
        RLConfig(frame_stack=0).validate()


@pytest.mark.slow
def test_ppo_on_the_real_env_scored_along_the_way_learns_as_one_run_would():
    import torch

    from agents.rl import RLConfig, ppo_real, scored_ppo_real

    cfg = RLConfig(n_steps=8, batch_size=16, epochs=1, episode_steps=20)    # ppo_real: 128 steps x 2 envs a rollout
    whole = ppo_real("DMLabMaze-v0", {}, 600, cfg, envs_n=2, episode_steps=20)
    seen = []

    def score(n, model):                        # scoring draws from the global RNGs that SB3 trains with
        seen.append((n, model.num_timesteps))
        torch.rand(7), np.random.rand(7)
    pieces = ppo_real("DMLabMaze-v0", {}, 600, cfg, envs_n=2, episode_steps=20, marks=(300, 256, 900), on_mark=score)
    # each mark sees the model as learn(total_timesteps=mark) leaves it: whole rollouts until it has mark steps
    assert seen == [(256, 256), (300, 512), (600, 768)] and whole.num_timesteps == 768
    for (k, v), w in zip(whole.policy.state_dict().items(), pieces.policy.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    # (b)'s row: scored in the held-out mazes at each mark, the last one the row's own figure
    row = scored_ppo_real({"env_id": "DMLabMaze-v0", "env_kwargs": {}}, 300, dataclasses.replace(cfg, seed=1),
                          (256,), eval_episodes=1, eval_seed=3)
    assert [c["real_steps"] for c in row["curve"]] == [256, 300] and row["real_steps"] == 300
    assert row["steps"] == 20 and row["reaches_per_1000"] == row["curve"][-1]["reaches_per_1000"]


def test_the_acting_temperature_sharpens_sampling_towards_the_most_likely_action(tmp_path):
    import torch

    from agents.policy import PolicyActor, new_policy, policy_actor, save_policy
    from agents.rl import RLConfig
    from envs.maze.dmlab import ACTION_MEANINGS

    torch.manual_seed(0)
    policy = new_policy([3, 64, 64], 9)
    frames = np.random.default_rng(2).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    greedy = [PolicyActor(policy, True).act(f) for f in frames]
    # a near-zero temperature always takes the most likely action; temperature 1 samples (a fresh policy is
    # close to uniform over 9 actions, so 200 draws at one frame are not all one action)
    cold = PolicyActor(policy, temperature=1e-4)
    cold.reset(0)
    assert [cold.act(f) for f in frames] == greedy
    warm = PolicyActor(policy, temperature=1.0)
    warm.reset(0)
    assert len({warm.act(frames[0]) for _ in range(200)}) > 1
    hot = PolicyActor(policy, temperature=3.0)
    hot.reset(0)
    assert len({hot.act(frames[0]) for _ in range(200)}) > 1
    # the temperature is saved with the policy and played with it
    save_policy(policy, tmp_path / "p", "DMLabMaze-v0", {}, ACTION_MEANINGS, temperature=0.5)
    assert policy_actor(tmp_path / "p")[0].temperature == 0.5
    assert policy_actor(tmp_path / "p")[1]["recurrent"] is None             # a feed-forward policy says so
    with pytest.raises(ConfigError, match="act_temperature"):
        RLConfig(act_temperature=0.0).validate()


@pytest.mark.slow
def test_a_recurrent_policy_carries_its_memory_through_an_episode_and_reloads(tmp_path):
    import torch

    from agents.policy import PolicyActor, load_policy, policy_actor, save_policy
    from agents.rl import RLConfig, ppo_real
    from envs.maze.dmlab import ACTION_MEANINGS

    # (b) trains the same kind of policy as (a): sb3-contrib's RecurrentPPO on the real env
    cfg = RLConfig(recurrent=True, n_steps=8, batch_size=16, epochs=1)
    model = ppo_real("DMLabMaze-v0", {}, 32, cfg, envs_n=2, episode_steps=20)
    policy = model.policy
    assert hasattr(policy, "lstm_actor") and model.num_timesteps >= 32
    frames = np.random.default_rng(3).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    # step by step the actor takes what SB3's own recurrent predict takes with the state carried along
    actor = PolicyActor(policy, True)
    state, start, expected = None, np.ones(1, bool), []
    for f in frames:
        a, state = policy.predict(f[None], state, start, deterministic=True)
        expected.append(int(a[0]))
        start = np.zeros(1, bool)
    assert [actor.act(f) for f in frames] == expected
    # the state is memory: after different pasts the same frame meets a different state
    other = PolicyActor(policy, True)
    for f in frames[::-1]:
        other.act(f)
    assert not torch.allclose(actor._lstm[0], other._lstm[0])
    # a new episode starts from zeros: the same frames give the same actions again
    actor.reset(0)
    assert [actor.act(f) for f in frames] == expected
    # saved and loaded, the LSTM's sizes travel in policy.json and the actor acts as before
    save_policy(policy, tmp_path / "p", "DMLabMaze-v0", {}, ACTION_MEANINGS)
    again, meta = policy_actor(tmp_path / "p", deterministic=True)
    assert meta["recurrent"] == {"lstm_hidden_size": 256, "n_lstm_layers": 1, "shared_lstm": False,
                                 "enable_critic_lstm": True}
    assert [again.act(f) for f in frames] == expected
    reloaded, _ = load_policy(tmp_path / "p")
    assert type(reloaded) is type(policy)
    sampled = PolicyActor(policy, temperature=0.5)
    sampled.reset(1)
    assert all(0 <= sampled.act(f) < 9 for f in frames)


@pytest.mark.slow
def test_the_loop_trains_a_recurrent_policy_in_the_dream_and_plays_it(tiny_world_checkpoint, tmp_path):
    from agents.policy import play_policy, policy_actor
    from agents.rl import RLConfig, run_rl

    out = tmp_path / "rl"
    res = run_rl(RLConfig(out=str(out), checkpoint=str(tiny_world_checkpoint), recurrent=True, **TINY))
    assert res["rounds"][0]["dream_frames"] >= 16 and res["rounds"][0]["eval_steps"] == 2 * 20
    actor, meta = policy_actor(out / "policy")
    assert meta["recurrent"]["lstm_hidden_size"] == 256 and hasattr(actor.policy, "lstm_actor")
    assert play_policy(out / "policy", episodes=1, seed=3, episode_steps=20)["steps"] == 20
    # the feed-forward settings cannot resume it
    with pytest.raises(ConfigError, match="recurrent"):
        run_rl(RLConfig(out=str(out), checkpoint=str(tiny_world_checkpoint), **TINY))


def test_real_rollouts_spend_the_rounds_real_steps_exactly():
    from agents.rl import real_rollouts

    for steps in (12500, 40, 1000, 997, 2):
        envs, n_steps, updates = real_rollouts(steps)
        assert envs * n_steps * updates == steps and n_steps >= 2 or (steps == 2 and (envs, n_steps) == (1, 2))
    assert real_rollouts(12500) == (4, 125, 25)
    with pytest.raises(ConfigError, match="collect_steps"):
        real_rollouts(1)


@pytest.mark.slow
def test_learning_from_real_steps_records_exactly_those_steps_and_moves_the_policy(tiny_world_checkpoint, tmp_path):
    import gymnasium as gym

    import envs  # noqa: F401
    from agents.policy import load_policy
    from agents.rl import RLConfig, run_rl
    from envs.dataset import EpisodeDataset

    out = tmp_path / "rl"
    cfg = {**TINY, "rounds": 2, "collect_steps": 48}
    res = run_rl(RLConfig(out=str(out), checkpoint=str(tiny_world_checkpoint), learn_real=True, **cfg))
    r1 = out / "rounds" / "r01"
    assert [r["real_steps"] for r in res["rounds"]] == [48, 96]
    ds = EpisodeDataset(r1 / "frames", "train")
    assert sum(n - 1 for n in ds.lengths()) == 48
    # round 0 has no policy to learn: the random walk collects and nothing is learnt from real steps
    assert not (out / "rounds" / "r00" / "policy_real").exists()
    # PPO moved the round-0 policy on the real steps, and the recorded frames are the real env's: the first
    # episode of each env (seeded by SB3) replays frame for frame from its seed, maze and actions
    before, _ = load_policy(out / "rounds" / "r00" / "policy")
    after, meta = load_policy(r1 / "policy_real")
    assert meta["stats"]["real_steps"] == 48
    assert any(not np.array_equal(a.detach().numpy(), b.detach().numpy())
               for a, b in zip(before.state_dict().values(), after.state_dict().values(), strict=True))
    env = gym.make("DMLabMaze-v0", max_episode_steps=20)
    replayed = 0
    for i in range(len(ds.lengths())):
        ep = ds.episode(i)
        if ep["attrs"]["seed"] < 0:
            continue
        obs, info = env.reset(seed=int(ep["attrs"]["seed"]), options={"maze_seed": int(ep["attrs"]["maze_seed"])})
        assert np.array_equal(obs, ep["frames"][0]) and np.array_equal(ep["attrs"]["goal"], info["goal"])
        assert np.allclose(ep["poses"][0], info["pose"])
        for t in range(1, len(ep["frames"])):
            obs, reward, _, _, info = env.step(int(ep["actions"][t]))
            assert np.array_equal(obs, ep["frames"][t]) and reward == ep["rewards"][t]
            assert np.allclose(ep["poses"][t], info["pose"])
        replayed += 1
    env.close()
    ds.close()
    assert replayed >= 1
    with pytest.raises(ConfigError, match="act_temperature"):
        run_rl(RLConfig(out=str(tmp_path / "t"), learn_real=True, act_temperature=0.5))
