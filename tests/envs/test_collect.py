"""Collection and dataset: end to end, resume, splits, corrupt shards, clips."""

from __future__ import annotations

import numpy as np
import pytest

import envs.collect as collect_mod
from envs.collect import CollectConfig, collect, plan_episodes
from envs.common.errors import DatasetError
from envs.dataset import ClipDataset, EpisodeDataset, load_manifest


@pytest.mark.slow
def test_tiny_collection_end_to_end(tiny_frames_dataset):
    m = load_manifest(tiny_frames_dataset)
    assert m["complete"] and m["env_id"] == "DMLabMaze-v0" and len(m["action_meanings"]) == 9
    train, test = EpisodeDataset(tiny_frames_dataset, "train"), EpisodeDataset(tiny_frames_dataset, "test")
    assert len(train) == 3 and len(test) == 1
    ep = train.episode(0)
    assert ep["frames"].shape == (25, 64, 64, 3) and ep["frames"].dtype == np.uint8
    assert ep["actions"][0] == -1 and (ep["actions"][1:] >= 0).all() and (ep["actions"] < 9).all()
    assert ep["poses"].shape == (25, 3) and ep["truncated"][-1] and not ep["truncated"][:-1].any()
    assert "*" in ep["attrs"]["layout"]
    # frames actually change over the episode (the agent moves)
    assert np.abs(np.diff(ep["frames"].astype(np.int16), axis=0)).mean() > 1


def test_splits_use_disjoint_mazes():
    plans = plan_episodes(CollectConfig(out="x", episodes=40, seed=1))
    train = {p.maze_seed for p in plans if p.split == "train"}
    test = {p.maze_seed for p in plans if p.split == "test"}
    assert test and train and not (train & test)
    assert len({p.id for p in plans}) == 40


@pytest.mark.slow
def test_resume_after_killed_collection_has_no_duplicates(tmp_path, monkeypatch, kill_on_call):
    cfg = CollectConfig(out=str(tmp_path / "d"), episodes=6, steps=6, workers=1, seed=5, test_fraction=0.34,
                        episodes_per_shard=2)
    real = kill_on_call(collect_mod, "write_shard", 2, KeyboardInterrupt("killed"))
    with pytest.raises(KeyboardInterrupt):
        collect(cfg, progress=False)
    assert len(load_manifest(cfg.out)["shards"]) == 1
    monkeypatch.setattr(collect_mod, "write_shard", real)
    summary = collect(cfg, progress=False)
    assert summary["new_frames"] == 4 * 7  # only the 4 missing episodes were collected
    ref = CollectConfig(**{**cfg.__dict__, "out": str(tmp_path / "ref")})
    collect(ref, progress=False)
    for split in ("train", "test"):
        a, b = EpisodeDataset(cfg.out, split), EpisodeDataset(ref.out, split)
        assert len(a) == len(b)
        ids = [a.episode(i)["id"] for i in range(len(a))]
        assert len(set(ids)) == len(ids)
        for i in range(len(a)):
            assert np.array_equal(a.episode(i)["frames"], b.episode(i)["frames"])


@pytest.mark.slow
def test_existing_dataset_not_overwritten(tmp_path):
    cfg = CollectConfig(out=str(tmp_path / "d"), episodes=2, steps=3, workers=1, seed=0)
    collect(cfg, progress=False)
    with pytest.raises(DatasetError, match="overwrite=true"):
        collect(CollectConfig(**{**cfg.__dict__, "seed": 1}), progress=False)
    collect(CollectConfig(**{**cfg.__dict__, "seed": 1, "overwrite": True}), progress=False)
    assert load_manifest(cfg.out)["config"]["seed"] == 1


@pytest.mark.slow
def test_two_workers_match_one_worker(tmp_path):
    base = dict(episodes=2, steps=10, seed=11, test_fraction=0.5)
    collect(CollectConfig(out=str(tmp_path / "a"), workers=1, **base), progress=False)
    collect(CollectConfig(out=str(tmp_path / "b"), workers=2, **base), progress=False)
    for split in ("train", "test"):
        a, b = EpisodeDataset(tmp_path / "a", split).episode(0), EpisodeDataset(tmp_path / "b", split).episode(0)
        assert np.array_equal(a["frames"], b["frames"]) and np.array_equal(a["actions"], b["actions"])


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_corrupt_shard_is_named(tiny_frames_dataset, tmp_path, damage):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(tiny_frames_dataset, root)
    shard = sorted((root / "shards").glob("train-*.h5"))[0]
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        shard.write_bytes(b"\0" * len(data))
    else:
        shard.unlink()
    with pytest.raises(DatasetError, match=shard.name):
        EpisodeDataset(root, "train").episode(0)


@pytest.mark.slow
def test_clip_dataset_shapes(tiny_frames_dataset):
    ds = ClipDataset(tiny_frames_dataset, "train", clip_len=8)
    assert len(ds) == 3 * (25 - 8 + 1)
    item = ds[5]
    assert item["obs"].shape == (8, 64, 64, 3) and item["obs"].dtype == np.uint8
    assert item["actions"].shape == (8,) and item["actions"].dtype == np.int64
    with pytest.raises(DatasetError, match="clip_len"):
        ClipDataset(tiny_frames_dataset, "train", clip_len=100)
    with pytest.raises(DatasetError, match="split"):
        EpisodeDataset(tiny_frames_dataset, "valid")


@pytest.mark.slow
def test_random_walk_covers_more_than_uniform():
    from envs.maze.dmlab import ACTION_MEANINGS, DMLabMazeEnv
    from envs.policies import RandomWalkPolicy, UniformRandomPolicy, coverage

    env = DMLabMazeEnv()
    result = {}
    for name, cls in (("walk", RandomWalkPolicy), ("uniform", UniformRandomPolicy)):
        covs = []
        for seed in range(6):
            pol = cls(ACTION_MEANINGS, seed=seed)
            obs, info = env.reset(seed=seed)
            cells = [info["cell"]]
            for _ in range(300):
                obs, _, _, _, info = env.step(pol.act(obs, info))
                cells.append(info["cell"])
            covs.append(coverage(env.unwrapped.layout.free_cells(), cells))
        result[name] = np.mean(covs)
    env.close()
    assert result["walk"] > 1.6 * result["uniform"]


@pytest.mark.slow
def test_goal_seeking_oracle_reaches_the_goal_far_more_often_than_the_random_walk(tmp_path):
    import gymnasium as gym

    import envs  # noqa: F401
    from envs.collect import CollectConfig, collect
    from envs.dataset import EpisodeDataset
    from envs.heldout import play_heldout

    reaches = {}
    env = gym.make("DMLabMaze-v0", max_episode_steps=1201)
    for name in ("goal_seeking", "random_walk"):
        reaches[name] = sum(int((play_heldout(env, 600, s, name, on_end="stop").rewards > 0).sum()) for s in (0, 1))
    env.close()
    assert reaches["goal_seeking"] >= 6 and reaches["goal_seeking"] >= 4 * max(reaches["random_walk"], 1)
    # a collection gives the oracle the layout and goal it needs (it would random-walk without them)
    collect(CollectConfig(out=str(tmp_path / "d"), policy="goal_seeking", episodes=2, steps=300, workers=1, seed=5,
                          test_fraction=0.0), progress=False)
    ds = EpisodeDataset(tmp_path / "d", "train")
    assert sum(float(np.asarray(ds.episode(i)["rewards"]).sum()) for i in range(len(ds))) >= 3
    # each episode records its goal: every reach happens from a pose next to it (the reach respawns the agent)
    for i in range(len(ds)):
        ep = ds.episode(i)
        goal = np.asarray(ep["attrs"]["goal"], np.float32)
        for t in np.flatnonzero(np.asarray(ep["rewards"]) > 0):
            assert np.linalg.norm(ep["poses"][t - 1, :2] - goal) < 0.6, (i, t, ep["poses"][t - 1], goal)
    ds.close()


def test_revisit_policy_returns_to_views_it_left_far_more_often_than_the_random_walk():
    import gymnasium as gym

    import envs  # noqa: F401
    from envs.heldout import play_heldout
    from envs.loops import return_frames
    from envs.maze.dmlab import ACTION_MEANINGS
    from envs.policies import RevisitPolicy

    env = gym.make("DMLabMaze-v0", max_episode_steps=1201)
    # returns from beyond a 16-frame window within 31 frames: what a 32-frame model must remember (86 vs 11
    # when written)
    frames = {name: [play_heldout(env, 300, s, name).frames for s in range(4)] for name in ("revisit", "random_walk")}
    returns = {name: sum(len(return_frames(f, np.zeros(len(f), int), 31)[0]) for f in eps)
               for name, eps in frames.items()}
    env.close()
    assert returns["revisit"] >= 40 and returns["revisit"] >= 4 * max(returns["random_walk"], 1), returns
    with pytest.raises(ValueError, match="min_turns"):
        RevisitPolicy(ACTION_MEANINGS, min_turns=5, max_turns=4)
    with pytest.raises(ValueError, match="turn_left"):
        RevisitPolicy(("noop", "forward"))
