"""MaskFlowDream-v0 and its vector env on a tiny real checkpoint: Gymnasium's env checker, seeding,
autoreset, termination vs truncation, long runs, clear errors, the action check on real maze frames,
SB3 PPO inside the dream and the benchmark's smoke run."""

from __future__ import annotations

import importlib.util
import json
import shutil
import tracemalloc
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import envs  # noqa: F401  (registers MaskFlowDream-v0)
from envs.common.errors import CheckpointError, ConfigError, DatasetError, MaskFlowError, SamplerSettingsError
from worldmodel.dream.env import DreamEnvError, MaskFlowDreamEnv
from worldmodel.dream.vector_env import MaskFlowDreamVectorEnv
from worldmodel.evaluation.action_check import (
    TURN_LEFT_SHIFT_SIGN,
    TurnAgreement,
    action_check,
    horizontal_shift,
    measure_turn_sign,
    turn_agreement,
    turn_probe,
)

ROOT = Path(__file__).resolve().parents[3]


def make(ckpt, data, **kw) -> MaskFlowDreamEnv:
    return MaskFlowDreamEnv(ckpt, **{"data": data, "steps_per_frame": 2, **kw})


def rollout(env, seed, actions, options=None):
    obs, info = env.reset(seed=seed, options=options)
    frames = [obs]
    for a in actions:
        frames.append(env.step(a)[0])
    return np.stack(frames), info


# -- Gymnasium API ----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("source,obs_type", [("live", "rgb"), ("dataset", "rgb"), ("dataset", "tokens")])
def test_env_checker_passes_on_the_registered_env(ckpt, data, source, obs_type):
    env = gym.make("MaskFlowDream-v0", checkpoint=ckpt, context=source, data=data if source == "dataset" else None,
                   obs_type=obs_type, steps_per_frame=2, render_mode="rgb_array")   # (no wall clock in info by default)
    try:
        check_env(env.unwrapped)
        obs, info = env.reset(seed=0)
        assert obs in env.observation_space and info["context_source"].startswith(
            "live DMLabMaze-v0" if source == "live" else data)
        assert env.action_space == gym.spaces.Discrete(9)
        if obs_type == "rgb":
            assert env.observation_space == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
        else:
            assert obs.shape == (8, 8) and obs.dtype == np.int64 and env.render().shape == (64, 64, 3)
    finally:
        env.close()


@pytest.mark.slow
def test_step_info_reward_and_render(ckpt, data):
    env = make(ckpt, data, render_mode="rgb_array", timing_info=True)
    obs, info = env.reset(seed=1)
    assert info["nfe"] == info["context_frames"] == 3           # window 4 -> context 3, one commit pass each
    assert np.array_equal(env.render(), obs)
    obs, reward, terminated, truncated, info = env.step(5)
    assert info["nfe"] == 2 + 1 and info["step_time_s"] > 0       # steps_per_frame sampling calls + commit pass
    assert 0.0 <= info["reward_prob"] <= 1.0 and 0.0 <= info["done_prob"] <= 1.0
    assert reward == float(info["reward_prob"] > 0.5) and terminated == (info["done_prob"] > 0.5)
    assert np.array_equal(env.render(), obs) and obs.dtype == np.uint8
    env.close()
    env.close()                                                   # closing twice is allowed
    with pytest.raises(DreamEnvError, match="closed"):
        env.step(0)
    guided = make(ckpt, data, action_guidance=1.0, history_guidance=2.0)
    guided.reset(seed=1)
    assert guided.step(5)[4]["nfe"] == 2 * 3 + 1                 # each guidance term adds a pass per step
    guided.close()
    prob = make(ckpt, data, reward_mode="probability")
    prob.reset(seed=1)
    _, reward, _, _, info = prob.step(5)
    assert reward == pytest.approx(info["reward_prob"])
    prob.close()


@pytest.mark.slow
def test_same_seed_same_dream_and_other_seed_or_actions_differ(ckpt, data):
    env = make(ckpt, data)
    acts = [1, 5, 5, 6, 2, 8]
    a, info_a = rollout(env, 7, acts)
    second_a = rollout(env, None, acts)[0]                         # an unseeded reset continues the seeded stream
    b, info_b = rollout(env, 7, acts)
    assert np.array_equal(a, b) and info_a == info_b
    assert np.array_equal(second_a, rollout(env, None, acts)[0])
    c, _ = rollout(env, 8, acts)
    assert not np.array_equal(a, c)
    # the 6-step tiny model barely uses actions (adaLN-Zero); with perturbed weights they must reach the dream
    torch.manual_seed(0)
    with torch.no_grad():
        for p in env.core.model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    a, _ = rollout(env, 7, acts)
    d, _ = rollout(env, 7, [0, 0, 0, 0, 0, 0])
    assert np.array_equal(a[0], d[0]) and not np.array_equal(a[1:], d[1:])   # same context, other actions
    env.close()


@pytest.mark.slow
def test_context_given_in_reset_options(ckpt, data):
    from envs.dataset import EpisodeDataset
    from worldmodel.tokenizer.codec import encode_frames

    ep = EpisodeDataset(data, "test").episode(0)
    env = make(ckpt, None, context="given")
    with pytest.raises(DreamEnvError, match="context_frames"):
        env.reset(seed=0)
    obs, info = env.reset(seed=0, options={"context_frames": ep["frames"][:10], "context_actions": ep["actions"][:10]})
    assert info["context_frames"] == 3 and info["context_source"] == "given"    # only the last window - 1 count
    tok = encode_frames(env.core.tokenizer, ep["frames"][7:10])
    # the dream decodes at its precision (bf16 where the CPU has it)
    assert np.array_equal(obs, env.core.tokenizer.decode(tok[-1:], dtype=env.core.rollout.dtype)[0].numpy())
    frames_run = [env.step(a)[0] for a in (1, 5)]
    obs_t, _ = env.reset(seed=0, options={"context_tokens": tok.numpy(), "context_actions": ep["actions"][7:10]})
    assert np.array_equal(obs_t, obs)
    assert all(np.array_equal(env.step(a)[0], f) for a, f in zip((1, 5), frames_run, strict=True))
    again, info = env.reset(seed=0)                                # context="given": the last given context
    assert np.array_equal(again, obs) and info["context_source"] == "given"
    env.close()
    venv = MaskFlowDreamVectorEnv(2, ckpt, context="given", steps_per_frame=1, max_episode_steps=1)
    ctx = np.stack([ep["frames"][:3], ep["frames"][5:8]])
    obs, _ = venv.reset(seed=0, options={"context_frames": ctx, "context_actions": np.stack([ep["actions"][:3]] * 2)})
    want = venv.core.tokenizer.decode(encode_frames(venv.core.tokenizer, ctx[:, 2]), dtype=venv.core.rollout.dtype)
    want = want.numpy()
    assert np.abs(obs.astype(int) - want).max() <= 2                # (batched decode: float rounding only)
    venv.step(np.array([1, 1]))
    auto, *_ = venv.step(np.array([1, 1]))                          # autoreset from the given contexts
    assert np.array_equal(auto, obs)
    venv.close()


@pytest.mark.slow
def test_termination_and_truncation_are_kept_apart(ckpt, data):
    ends = make(ckpt, data, done_threshold=0.0, max_episode_steps=5)   # the done head always fires
    ends.reset(seed=0)
    _, _, terminated, truncated, _ = ends.step(1)
    assert terminated is True and truncated is False
    ends.close()
    never = make(ckpt, data, done_threshold=1.0, max_episode_steps=3)
    never.reset(seed=0)
    flags = [never.step(1)[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    never.close()
    venv = MaskFlowDreamVectorEnv(2, ckpt, data=data, steps_per_frame=2, done_threshold=0.0, max_episode_steps=4)
    venv.reset(seed=0)
    _, _, terminated, truncated, _ = venv.step(np.array([1, 2]))
    assert terminated.all() and not truncated.any()
    venv.close()


@pytest.mark.slow
def test_end_on_reward_ends_the_dream_at_a_reward_and_only_then(ckpt, data):
    # reward_threshold=0 makes every frame a reward; the done head never fires (done_threshold=1)
    for end, want in ((True, True), (False, False)):
        env = make(ckpt, data, reward_threshold=0.0, done_threshold=1.0, end_on_reward=end, max_episode_steps=5)
        env.reset(seed=0)
        _, reward, terminated, truncated, _ = env.step(1)
        assert reward == 1.0 and terminated is want and truncated is False
        env.close()
    quiet = make(ckpt, data, reward_threshold=1.0, done_threshold=1.0, end_on_reward=True, max_episode_steps=2)
    quiet.reset(seed=0)
    assert [quiet.step(1)[2:4] for _ in range(2)] == [(False, False), (False, True)]     # no reward: no end
    quiet.close()
    venv = MaskFlowDreamVectorEnv(2, ckpt, data=data, steps_per_frame=2, reward_threshold=0.0, done_threshold=1.0,
                                  end_on_reward=True, max_episode_steps=4)
    venv.reset(seed=0)
    _, rewards, terminated, _, _ = venv.step(np.array([1, 2]))
    assert terminated.all() and (rewards == 1.0).all()
    venv.close()
    with pytest.raises(ConfigError, match="end_on_reward"):
        make(ckpt, data, end_on_reward="yes")


@pytest.mark.slow
def test_reward_starts_end_the_context_just_before_a_real_reward(ckpt, data, tmp_path):
    import re

    from envs.collect import CollectConfig, collect
    from envs.dataset import EpisodeDataset

    goal = tmp_path / "goal"
    collect(CollectConfig(out=str(goal), policy="goal_seeking", episodes=2, steps=150, workers=1, seed=5,
                          test_fraction=0.0), progress=False)
    ds = EpisodeDataset(goal, "train")
    rewards = {i: np.asarray(ds.episode(i)["rewards"]) for i in range(len(ds))}
    ds.close()
    assert sum(r.sum() for r in rewards.values()) >= 2

    def windows(share: float) -> list[tuple[int, int, int]]:
        env = make(ckpt, str(goal), split="train", reward_starts=share, reward_lead=3, max_episode_steps=2)
        out = []
        for seed in range(12):
            _, info = env.reset(seed=seed)
            i, s, e = map(int, re.search(r"episode (\d+) frames (\d+)\.\.(\d+)", info["context_source"]).groups())
            out.append((i, s, e))
        env.close()
        return out

    near = windows(1.0)
    # every context ends 1..3 frames before a real reward of its episode, and is as long as it can be
    assert all(rewards[i][e + 1:e + 4].sum() > 0 for i, s, e in near)
    assert all(e - s + 1 == min(3, e + 1) for _, s, e in near)
    assert len(set(near)) > 3
    # uniform windows (the default) mostly do not
    assert sum(rewards[i][e + 1:e + 4].sum() > 0 for i, _, e in windows(0.0)) < 12
    # a dataset without rewards, a share outside [0, 1], and live context are refused by name
    ds = EpisodeDataset(data, "test")
    assert not any(np.asarray(ds.episode(i)["rewards"]).any() for i in range(len(ds)))
    ds.close()
    with pytest.raises(ConfigError, match="holds no rewards"):
        make(ckpt, data, reward_starts=0.5)
    with pytest.raises(ConfigError, match="reward_starts"):
        make(ckpt, str(goal), split="train", reward_starts=1.5)
    with pytest.raises(ConfigError, match="reward_lead"):
        make(ckpt, str(goal), split="train", reward_starts=0.5, reward_lead=0)
    with pytest.raises(ConfigError, match="need dataset context"):
        MaskFlowDreamEnv(ckpt, context="live", reward_starts=0.5)


@pytest.mark.slow
def test_sight_starts_end_where_the_goal_was_seen_and_lost(ckpt, data, tmp_path):
    import re

    from envs.collect import CollectConfig, collect
    from envs.dataset import EpisodeDataset, write_dataset
    from envs.maze.dmlab import goal_in_view_along
    from worldmodel.tokenizer.tokenize import tokenize_dataset

    frames = tmp_path / "goal"
    collect(CollectConfig(out=str(frames), policy="goal_seeking", episodes=2, steps=150, workers=1, seed=8,
                          test_fraction=0.0), progress=False)
    # the token dataset keeps each frame's pose, so its windows can be told apart too
    tokens = tokenize_dataset(frames, Path(ckpt).parent / "tok", tmp_path / "tokens", progress=False)
    ds = EpisodeDataset(tokens, "train")
    eps = [ds.episode(i) for i in range(len(ds))]
    ds.close()
    seen = {i: goal_in_view_along(ep["poses"], ep["attrs"]["goal"], ep["attrs"]["layout"]) for i, ep in enumerate(eps)}
    rewards = {i: np.asarray(ep["rewards"]) for i, ep in enumerate(eps)}

    def windows(**kw) -> list[tuple[int, int, int]]:
        env = make(ckpt, str(tokens), split="train", max_episode_steps=2, **kw)
        out = []
        for seed in range(16):
            _, info = env.reset(seed=seed)
            out.append(tuple(map(int, re.search(r"episode (\d+) frames (\d+)\.\.(\d+)",
                                                info["context_source"]).groups())))
        env.close()
        return out

    def sighted(i: int, s: int, e: int) -> bool:       # saw the goal, lost it at the end, no reach in between
        return bool(seen[i][s:e].any() and not seen[i][e] and not rewards[i][s + 1:e + 1].any())

    lost = windows(sight_starts=1.0)
    assert all(sighted(*w) for w in lost) and len(set(lost)) > 3
    assert all(e - s + 1 == 3 for _, s, e in lost)          # full windows (the tiny model sees 3 frames)
    assert sum(sighted(*w) for w in windows()) < 16         # uniform windows mostly are not
    # shared with reward starts: each window is one kind or the other, and both kinds come up
    mixed = windows(reward_starts=0.5, sight_starts=0.5)
    near = [rewards[i][e + 1:e + 17].sum() > 0 for i, _, e in mixed]
    assert all(n or sighted(*w) for n, w in zip(near, mixed)) and any(near) and any(sighted(*w) for w in mixed)
    # refused by name: shares over 1, episodes without poses, live context
    with pytest.raises(ConfigError, match="sight_starts"):
        make(ckpt, str(tokens), split="train", reward_starts=0.5, sight_starts=0.6)
    bare = write_dataset(tmp_path / "bare", [{"id": 0, "frames": np.zeros((8, 64, 64, 3), np.uint8),
                                              "actions": np.zeros(8, np.int64), "rewards": np.zeros(8, np.float32)}],
                         env_id="DMLabMaze-v0", action_meanings=MaskFlowDreamEnv(ckpt, data=data).action_meanings)
    with pytest.raises(DatasetError, match="sight_starts .*bare.* needs every episode's poses.*lacks poses"):
        make(ckpt, str(bare), split="train", sight_starts=0.5)
    with pytest.raises(ConfigError, match="need dataset context"):
        MaskFlowDreamEnv(ckpt, context="live", sight_starts=0.5)


# -- vector env ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_vector_env_next_step_autoreset_per_env(ckpt, data):
    venv = gym.make_vec("MaskFlowDream-v0", num_envs=3, checkpoint=ckpt, data=data, steps_per_frame=2,
                        max_episode_steps=3, done_threshold=1.0)
    assert isinstance(venv, MaskFlowDreamVectorEnv)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert venv.observation_space.shape == (3, 64, 64, 3) and venv.action_space.shape == (3,)
    acts = np.array([1, 5, 6])
    venv.reset(seed=0)
    venv.step(acts)
    obs, info = venv.reset(options={"reset_mask": np.array([True, False, False])})   # env 0 restarts alone
    assert info["_context_source"].tolist() == [True, False, False]
    venv.step(acts)
    _, _, term, trunc, _ = venv.step(acts)
    assert trunc.tolist() == [False, True, True] and not term.any()
    obs, rewards, term, trunc, info = venv.step(acts)               # envs 1, 2 autoreset; env 0 hits its limit
    assert trunc.tolist() == [True, False, False] and not term.any()
    assert rewards[1:].tolist() == [0.0, 0.0]
    assert info["_reward_prob"].tolist() == [True, False, False]
    assert info["_context_source"].tolist() == [False, True, True] and info["nfe"][1:].tolist() == [3, 3]
    obs, rewards, term, trunc, info = venv.step(acts)               # now env 0 resets, 1 and 2 dream on
    assert info["_reward_prob"].tolist() == [False, True, True] and not trunc.any()
    assert obs.shape == (3, 64, 64, 3) and obs.dtype == np.uint8
    venv.close()


@pytest.mark.slow
def test_vector_env_same_step_autoreset(ckpt, data):
    venv = MaskFlowDreamVectorEnv(2, ckpt, data=data, steps_per_frame=2, max_episode_steps=2, done_threshold=1.0,
                                  autoreset_mode=AutoresetMode.SAME_STEP)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    venv.reset(seed=3)
    venv.step(np.array([1, 1]))
    obs, _, term, trunc, info = venv.step(np.array([1, 1]))
    assert trunc.all() and not term.any()
    assert info["_final_obs"].all() and info["final_obs"][0].shape == (64, 64, 3)
    assert info["_context_source"].all()                            # reset in the same step
    assert not np.array_equal(info["final_obs"][0], obs[0])
    _, _, term, trunc, _ = venv.step(np.array([1, 1]))
    assert not (term.any() or trunc.any())
    venv.close()


@pytest.mark.slow
def test_vector_env_seeds_each_env_and_is_reproducible(ckpt, data):
    def run(seed):
        venv = MaskFlowDreamVectorEnv(2, ckpt, data=data, steps_per_frame=2)
        obs, info = venv.reset(seed=seed)
        out = [obs] + [venv.step(np.array([5, 6]))[0] for _ in range(3)]
        venv.close()
        return np.stack(out), list(info["context_source"])

    a, src_a = run(11)
    b, src_b = run(11)
    assert np.array_equal(a, b) and src_a == src_b
    assert run([11, 12])[1] == src_a                                # seed s gives env i the seed s + i
    assert run([12, 11])[1] == src_a[::-1]                          # per-env seeds choose each env's context
    assert not np.array_equal(a, run(12)[0])


@pytest.mark.slow
def test_long_run_has_no_nans_and_constant_memory(ckpt, data):
    import resource

    # token observations keep 2,000 steps cheap; the dream state is the same, and every 50th frame is
    # still decoded through render() (decoding is a pure function of the tokens)
    env = make(ckpt, data, steps_per_frame=1, max_episode_steps=400, obs_type="tokens", render_mode="rgb_array")
    env.reset(seed=0)
    cache_bytes = env.memory_bytes()
    rng = np.random.default_rng(0)
    probs, resets = [], 0

    def run(n):
        nonlocal resets
        for _ in range(n):
            obs, r, term, trunc, info = env.step(int(rng.integers(9)))
            probs.append((info["reward_prob"], info["done_prob"]))
            assert obs.shape == (8, 8) and 0 <= obs.min() and obs.max() < 125 and r in (0.0, 1.0)
            if len(probs) % 50 == 0:
                assert env.render().shape == (64, 64, 3)
            if term or trunc:
                resets += 1
                env.reset()

    run(300)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run(1300)
    tracemalloc.start()                                           # (slows steps down: a shorter window)
    base_py = tracemalloc.get_traced_memory()[0]
    run(400)
    grown_py = tracemalloc.get_traced_memory()[0] - base_py
    tracemalloc.stop()
    grown_rss_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    assert env.memory_bytes() == cache_bytes
    assert np.isfinite(np.asarray(probs)).all() and len(probs) == 2000 and resets >= 4
    assert grown_py < 200_000, f"python heap grew {grown_py} bytes over 400 steps"
    assert grown_rss_mb < 64, f"peak RSS grew {grown_rss_mb:.1f} MB over 1700 steps"
    env.close()


# -- errors ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("action", [9, -1, 2.0, "1", np.array([1, 2]), True])
def test_action_outside_the_space_is_refused(ckpt, data, action):
    env = make(ckpt, data)
    env.reset(seed=0)
    with pytest.raises(DreamEnvError, match="not in Discrete"):
        env.step(action)
    env.close()


@pytest.mark.slow
def test_bad_calls_raise_clear_errors(ckpt, data):
    env = make(ckpt, None, context="given")
    with pytest.raises(DreamEnvError, match="reset"):
        env.step(0)
    good = np.zeros((3, 64, 64, 3), np.uint8)
    for bad, match in ((good.astype(np.float32), "uint8"), (np.zeros((3, 32, 32, 3), np.uint8), "shape"),
                       (good[0], "shape")):
        with pytest.raises(DreamEnvError, match=match):
            env.reset(options={"context_frames": bad})
    with pytest.raises(DreamEnvError, match="context_actions"):
        env.reset(options={"context_frames": good, "context_actions": np.array([1, 2])})
    with pytest.raises(DreamEnvError, match="context_actions"):
        env.reset(options={"context_frames": good, "context_actions": np.array([1, 2, 9])})
    with pytest.raises(DreamEnvError, match="context_tokens"):
        env.reset(options={"context_tokens": np.full((3, 8, 8), 999)})
    env.close()
    venv = MaskFlowDreamVectorEnv(2, ckpt, data=data, steps_per_frame=2)
    venv.reset(seed=0)
    for bad in (np.array([1]), np.array([1, 9]), np.array([0.5, 1.0])):
        with pytest.raises(DreamEnvError, match="actions must be"):
            venv.step(bad)
    venv.close()
    assert issubclass(DreamEnvError, MaskFlowError) and issubclass(DreamEnvError, ValueError)
    with pytest.raises(ConfigError, match="context_length"):
        make(ckpt, data, context_length=4)
    with pytest.raises(SamplerSettingsError):
        make(ckpt, data, sampler="rolling")
    with pytest.raises(ConfigError, match="data"):
        make(ckpt, None, context="dataset")
    with pytest.raises(ConfigError, match="heading_recall=true needs a model with heading rotary"):
        make(ckpt, data, heading_recall=True)
    with pytest.raises(ConfigError, match="heading_recall must be True or False"):
        make(ckpt, data, heading_recall="yes")


@pytest.mark.slow
def test_checkpoint_for_another_action_space_is_refused(ckpt, data, tmp_path):
    from envs.common.files import write_sealed_json
    from envs.dataset import EpisodeDataset, write_dataset
    from worldmodel.model.checkpoint import sealed_files

    ep = EpisodeDataset(data, "test").episode(0)
    episode = {"id": 0, "attrs": {}, **{k: ep[k] for k in ("frames", "actions", "rewards", "terminated", "truncated")}}
    other = write_dataset(tmp_path / "other", [episode], split="test", env_id="Other-v0",
                          action_meanings=[f"a{i}" for i in range(9)])
    with pytest.raises(CheckpointError, match="actions"):
        make(ckpt, str(other))
    moved = Path(shutil.copytree(ckpt, tmp_path / "ckpt3"))
    meta = json.loads((moved / "model.json").read_text())
    meta["action_space"] = {"n": 3, "meanings": ["noop", "forward", "turn_left"]}
    write_sealed_json(moved / "model.json", meta, files=sealed_files(moved))     # as if trained so
    for source in ("live", "dataset"):
        with pytest.raises(CheckpointError, match="actions"):
            make(str(moved), data, context=source)


# -- actions must matter -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dx", [-12, -3, 5, 9])
def test_horizontal_shift_recovers_a_known_shift(dx):
    img = np.random.default_rng(0).integers(0, 255, (64, 96, 3)).astype(np.uint8)
    assert horizontal_shift(img[:, 16:80], img[:, 16 - dx:80 - dx]) == pytest.approx(dx, abs=0.6)
    assert horizontal_shift(img[:, :64], np.full((64, 64, 3), 7, np.uint8)) == 0.0   # nothing to follow


@pytest.mark.slow
def test_real_maze_turns_agree_with_the_measured_sign(tiny_frames_dataset):
    from envs.dataset import EpisodeDataset

    sign, px = measure_turn_sign(seeds=(4,))                         # rendered DMLabMaze-v0 frames
    assert sign == TURN_LEFT_SHIFT_SIGN == 1 and px > 5              # turn_left moves the image right
    frames, actions, meanings = turn_probe(seed=5, hold=5, cycles=2)
    probe = turn_agreement(frames, actions, meanings)
    assert probe.turns >= 20 and probe.rate >= 0.8
    assert turn_agreement(frames, actions, meanings, left_sign=-1).rate <= 0.2
    assert turn_agreement(np.repeat(frames[:1], len(frames), 0), actions, meanings).rate == 0.0   # frozen dream
    ds = EpisodeDataset(tiny_frames_dataset, "train")              # random-walk episodes as collected
    walks = [turn_agreement(ds.episode(i)["frames"], ds.episode(i)["actions"], ds.action_meanings)
             for i in range(len(ds))]
    pooled = TurnAgreement.pooled(walks)
    assert pooled.turns == sum(w.turns for w in walks) >= 10 and pooled.agree == sum(w.agree for w in walks)
    assert pooled.rate >= 0.8 and len(pooled.shifts) == pooled.turns and pooled.median_abs_shift > 5
    assert np.isnan(TurnAgreement.pooled([]).rate) and np.isnan(TurnAgreement(0, 0).median_abs_shift)


@pytest.mark.slow
def test_action_check_reports_real_and_dream_agreement(ckpt, data):
    r = action_check(ckpt, episodes=1, frames=19, steps_per_frame=1, hold=4)        # live turn probe
    assert r["turns"] == 16 and r["real"] >= 0.8
    assert 0.0 <= r["dream"] <= 1.0 and 0.0 <= r["recon"] <= 1.0
    d = action_check(ckpt, data=data, episodes=1, frames=25, steps_per_frame=1)
    assert d["turns"] >= 1 and d["source"].startswith(data) and 0.0 <= d["dream"] <= 1.0
    assert d["per_sequence"]["real"] == [[round(d["real"] * d["turns"]), d["turns"]]]


@pytest.mark.slow
def test_action_check_benchmark_pairs_two_checks_of_the_same_probes(ckpt, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "action_check_bench", Path(__file__).resolve().parents[3] / "benchmarks" / "action_check.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    base = [ckpt, "--episodes", "2", "--frames", "15", "--threads", "1", "--precision", "fp32"]
    a = bench.main([*base, "--steps-per-frame", "1", "--out", str(tmp_path / "a.json")])
    assert [t for _, t in a["per_sequence"]["dream"]] == [12, 12]          # 2 probes of 12 turns (hold 6)
    b = bench.main([*base, "--steps-per-frame", "3", "--pair-with", str(tmp_path / "a.json")])
    assert b["paired"]["n"] == 2 and b["paired"]["mean"] == pytest.approx(b["dream"] - a["dream"])
    with pytest.raises(ConfigError, match="other sequences than this check's"):
        bench.main([*base, "--seed", "5", "--pair-with", str(tmp_path / "a.json")])
    # the margin is now minus earlier, per sequence: +0.5 and 0 -> +0.25
    now = {**a, "per_sequence": {"real": a["per_sequence"]["real"], "dream": [[12, 12], [6, 12]]}}
    was = {**a, "per_sequence": {"real": a["per_sequence"]["real"], "dream": [[6, 12], [6, 12]]}}
    assert bench.pair_dreams(now, was, "was")["mean"] == pytest.approx(0.25)



def test_probe_env_replaces_the_checkpoints_mazes(ckpt):
    env = MaskFlowDreamEnv(ckpt, context="given", steps_per_frame=1)
    try:
        core = env.core
        core.meta.update(env_id="DMLabMaze-v0", env_kwargs={"styles": [1]})
        assert core.probe_env() == ("DMLabMaze-v0", {"styles": [1]})                 # the checkpoint's
        assert core.probe_env("", {"styles": [2]}) == ("DMLabMaze-v0", {"styles": [2]})
        assert core.probe_env("", {}) == ("DMLabMaze-v0", {})       # a dataset's {}: the defaults, not styles [1]
        assert core.probe_env("DMLabMaze-v0") == ("DMLabMaze-v0", {})
    finally:
        env.close()


def test_action_check_probes_the_mazes_asked_for(ckpt, monkeypatch):
    """env_kwargs picks the live probes' mazes (a model trained on mixed styles records none of its own)."""
    import worldmodel.evaluation.action_check as ac

    seen, real_probe = [], ac.turn_probe
    monkeypatch.setattr(ac, "turn_probe", lambda env_id, kw, **k: seen.append(kw) or real_probe(env_id, kw, **k))
    r = action_check(ckpt, episodes=2, frames=19, steps_per_frame=1, hold=4, env_kwargs={"styles": [2]})
    action_check(ckpt, episodes=1, frames=19, steps_per_frame=1, hold=4)
    # every probe of the first check plays the mazes asked for, and the result records them
    assert seen[:2] == [{"styles": [2]}] * 2 and seen[2] != {"styles": [2]}
    assert r["env_kwargs"] == {"styles": [2]} and r["env_id"] == "DMLabMaze-v0"


# -- RL pipelines and the benchmark ----------------------------------------------------------------------------
@pytest.mark.slow
def test_ppo_trains_inside_the_dream(ckpt, data, tmp_path):
    from agents.ppo_dream import main, train_ppo

    model, stats = train_ppo(ckpt, 192, n_envs=3, vector=True, n_steps=32, batch_size=48, n_epochs=1, data=data,
                             steps_per_frame=1, max_episode_steps=20)
    assert stats["timesteps"] >= 192 and stats["episodes"] >= 6 and model._n_updates >= 2
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())
    stats = main([ckpt, "--data", data, "--steps", "128", "--n-steps", "64", "--batch-size", "32", "--epochs", "1",
                  "--steps-per-frame", "1", "--max-episode-steps", "30", "--eval-real-steps", "10",
                  "--out", str(tmp_path / "ppo")])
    assert stats["timesteps"] >= 128 and stats["episodes"] >= 2 and stats["real"]["steps"] == 10
    assert (tmp_path / "ppo" / "policy.safetensors").stat().st_size > 0
    from agents.policy import PolicyActor, load_policy

    policy, meta = load_policy(tmp_path / "ppo")                  # the shared policy format: it reloads and acts
    assert meta["stats"]["timesteps"] == stats["timesteps"]
    assert 0 <= PolicyActor(policy).act(np.zeros((64, 64, 3), np.uint8)) < 9


def _load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_benchmarks_smoke(ckpt, data, capsys, tmp_path, monkeypatch):
    bench = _load_benchmark("dream_env")
    r = bench.main(["--checkpoint", ckpt, "--data", data, "--steps", "3", "--warmup", "1", "--sizes", "1", "2",
                    "--steps-per-frame", "1"])
    assert [row["n"] for row in r["results"]] == [1, 1, 2]
    assert all(row["env_steps_per_s"] > 0 and row["nfe_per_frame"] == 2 for row in r["results"])
    assert "vs single" in capsys.readouterr().out
    monkeypatch.setenv("MASKFLOW_DEFAULT_CHECKPOINT", str(tmp_path / "nothing"))
    with pytest.raises(SystemExit):
        bench.main(["--steps", "1"])                                 # no default model -> asks for --checkpoint
    assert "--checkpoint" in capsys.readouterr().err
    check = _load_benchmark("action_check")
    out = check.main([ckpt, "--data", data, "--episodes", "1", "--frames", "12", "--steps-per-frame", "1"])
    assert 0.0 <= out["real"] <= 1.0 and "dream" in capsys.readouterr().out
