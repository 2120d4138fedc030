"""The goal-sighting probe and bonus (agents.sighting): labels from the maze's geometry, the probe learning them from
real frames, and the bonus paid once per episode when the goal first comes into view."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from envs.common.errors import CheckpointError, ConfigError, DatasetError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def seeking_dataset(tmp_path_factory):
    """A real goal-seeking dataset (the oracle walks to the goal, so the goal is often in view): 4 episodes of 60
    steps, 3 train and 1 test."""
    from envs.collect import CollectConfig, collect

    out = tmp_path_factory.mktemp("sight") / "frames"
    collect(CollectConfig(out=str(out), policy="goal_seeking", episodes=4, steps=60, workers=1, seed=5,
                          test_fraction=0.25, episodes_per_shard=2), progress=False)
    return out


def test_an_episodes_goal_is_recovered_from_its_seeds_where_it_was_not_recorded(seeking_dataset):
    from agents.sighting import episode_goal
    from envs.dataset import EpisodeDataset, load_manifest

    kwargs = load_manifest(seeking_dataset)["config"]["env_kwargs"]
    for split in ("train", "test"):
        ds = EpisodeDataset(seeking_dataset, split)
        for i in range(len(ds)):
            attrs = ds.episode(i)["attrs"]
            old = {k: v for k, v in attrs.items() if k != "goal"}          # as a dataset from before the goal was kept
            assert np.array_equal(episode_goal(old, ds.env_id, kwargs), attrs["goal"])
        ds.close()
    with pytest.raises(DatasetError, match="maze_seed"):
        episode_goal({"seed": 1}, "DMLabMaze-v0")


def test_labels_show_the_goal_in_view_as_the_oracle_walks_into_it(seeking_dataset):
    from agents.sighting import labelled_frames
    from envs.dataset import EpisodeDataset
    from envs.maze.dmlab import goal_in_view_along

    ds = EpisodeDataset(seeking_dataset, "train")
    reaches = 0
    for i in range(len(ds)):
        ep = ds.episode(i)
        labels = goal_in_view_along(ep["poses"], ep["attrs"]["goal"], ep["attrs"]["layout"])
        for j in np.flatnonzero(ep["rewards"] > 0):
            assert labels[max(j - 5, 0):j].any(), f"episode {i}: reach at frame {j} without the goal in view before it"
            reaches += 1
    ds.close()
    assert reaches >= 1
    frames, labels = labelled_frames([str(seeking_dataset)], "train", every=2)
    assert frames.shape == (len(labels), 64, 64, 3) and 0 < labels.mean() < 1


def test_the_probe_refuses_a_dataset_without_poses_by_name(tmp_path):
    from agents.sighting import labelled_frames
    from envs.dataset import write_dataset

    bare = write_dataset(tmp_path / "bare", [{"id": 3, "frames": np.zeros((8, 64, 64, 3), np.uint8),
                                              "actions": np.zeros(8, np.int64), "rewards": np.zeros(8, np.float32)}],
                         env_id="DMLabMaze-v0", action_meanings=["forward"])
    with pytest.raises(DatasetError, match="sighting probe's data .*bare.* needs every episode's poses.*episode 3 "
                                           "lacks poses"):
        labelled_frames([str(bare)], "train")


def test_the_probe_learns_to_see_the_goal_reloads_and_is_checked(seeking_dataset, tmp_path):
    from agents.sighting import labelled_frames, load_sight_probe, predict, train_sight_probe

    out = tmp_path / "probe"
    res = train_sight_probe([str(seeking_dataset)], str(out), steps=200, batch=64, every=1, progress=False)
    frames, labels = labelled_frames([str(seeking_dataset)], "train")
    net, meta = load_sight_probe(out)
    p = predict(net, frames)
    # it learnt the labels beyond guessing the majority class, and reloads to the same predictions
    majority = max(labels.mean(), 1 - labels.mean())
    assert ((p > 0.5) == labels).mean() > majority + 0.03
    assert p[labels].mean() > p[~labels].mean() + 0.2
    assert meta["test_real"]["frames"] == 61 and res["train_frames"] == len(labels)
    raw = bytearray((out / "sight.safetensors").read_bytes())
    raw[-3] ^= 0xFF
    (out / "sight.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sight.safetensors"):
        load_sight_probe(out)
    with pytest.raises(CheckpointError, match="not a sighting probe"):
        load_sight_probe(tmp_path)
    with pytest.raises(ConfigError, match="steps"):
        train_sight_probe([str(seeking_dataset)], str(tmp_path / "x"), steps=0)


class Replay(gym.Env):
    """Plays recorded episodes' frames back in order, one episode per reset (the real frames a policy saw)."""

    def __init__(self, episodes: list[np.ndarray]):
        self.episodes, self.k, self.t = episodes, -1, 0
        self.observation_space = gym.spaces.Box(0, 255, episodes[0].shape[1:], np.uint8)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        self.k, self.t = (self.k + 1) % len(self.episodes), 0
        return self.episodes[self.k][0], {}

    def step(self, action):
        self.t += 1
        ep = self.episodes[self.k]
        return ep[self.t], 0.0, self.t == len(ep) - 1, False, {}


def test_the_bonus_is_paid_once_an_episode_when_the_goal_first_comes_into_view(seeking_dataset, tmp_path):
    from stable_baselines3.common.vec_env import DummyVecEnv

    from agents.sighting import load_sight_probe, predict, sight_bonus, train_sight_probe
    from envs.dataset import EpisodeDataset

    train_sight_probe([str(seeking_dataset)], str(tmp_path / "probe"), steps=200, batch=64, every=1, progress=False)
    net, _ = load_sight_probe(tmp_path / "probe")
    ds = EpisodeDataset(seeking_dataset, "train")
    # short episodes, so that every env replays several and the bonus must re-arm at each reset
    episodes = [ds.episode(i)["frames"][a:a + 15] for i in range(len(ds)) for a in (0, 15, 30, 45)]   # 12
    ds.close()
    seen = [predict(net, ep) > 0.5 for ep in episodes]
    venv = sight_bonus(DummyVecEnv([lambda: Replay(episodes[0::2]), lambda: Replay(episodes[1::2])]),
                       str(tmp_path / "probe"), 0.25)
    venv.reset()
    paid: list[list[int]] = [[], []]
    steps = [0, 0]
    for _ in range(6 * 14):                 # every env plays its six episodes once
        _, rewards, dones, infos = venv.step(np.zeros(2, np.int64))
        for i in range(2):
            steps[i] += 1
            assert rewards[i] in (0.0, 0.25) and (rewards[i] > 0) == bool(infos[i].get("sighting"))
            if rewards[i] > 0:
                paid[i].append(steps[i])
            if dones[i]:
                steps[i] = 0
                paid[i].append(-1)          # episode boundary
    # the expected pays: the first frame t >= 1 showing the goal, in an episode that did not start with it in view
    for i in range(2):
        want: list[int] = []
        for s in seen[i::2]:
            if not s[0] and s[1:].any():
                want.append(int(np.flatnonzero(s[1:])[0]) + 1)
            want.append(-1)
        assert paid[i] == want
    assert venv.sightings == sum(p != -1 for row in paid for p in row) >= 1
    with pytest.raises(ConfigError, match="resolution"):
        sight_bonus(DummyVecEnv([lambda: Replay([e[:, ::2, ::2] for e in episodes])]), str(tmp_path / "probe"), 0.25)


def test_the_rl_loop_refuses_a_probe_folder_that_is_not_one(tmp_path):
    from agents.rl import RLConfig, run_rl

    with pytest.raises(ConfigError, match="sight_probe"):
        run_rl(RLConfig(out=str(tmp_path / "a"), sight_reward=0.3, sight_probe=str(tmp_path)))
    with pytest.raises(ConfigError, match="sight_reward"):
        run_rl(RLConfig(out=str(tmp_path / "b"), sight_reward=-1.0))
    assert not (tmp_path / "a").exists()


def test_the_loop_learns_its_probe_from_its_own_real_frames_and_pays_the_bonus(seeking_dataset, tiny_world_checkpoint,
                                                                              tmp_path, monkeypatch):
    import shutil

    import agents.imitation
    from agents.rl import RLConfig, round_probe, run_rl
    from agents.sighting import load_sight_probe

    # round_probe: learnt from rounds 0..r's frames where no probe is given, kept, and reused on resume
    out = tmp_path / "run"
    shutil.copytree(seeking_dataset, out / "rounds" / "r00" / "frames")
    cfg = RLConfig(sight_reward=0.3)
    assert round_probe(RLConfig(), out, 0) is None                  # the bonus off: no probe
    probe = round_probe(cfg, out, 0)
    _, meta = load_sight_probe(probe)
    assert probe == str(out / "rounds" / "r00" / "sight") and meta["train_positives"] > 0
    stamp = (out / "rounds" / "r00" / "sight" / "sight.json").stat().st_mtime_ns
    assert round_probe(cfg, out, 0) == probe
    assert (out / "rounds" / "r00" / "sight" / "sight.json").stat().st_mtime_ns == stamp
    # a round of the loop with a given probe: the bonus wraps the dream and its sightings are logged
    from tests.agents.test_rl import TINY

    # ... and the exploration prior, let go where that probe sees the goal, in the dream and on the real steps
    freed, with_prior = [], agents.imitation.with_prior
    monkeypatch.setattr(agents.imitation, "with_prior", lambda *a, **k: (freed.append(a[4]), with_prior(*a, **k))[1])
    res = run_rl(RLConfig(out=str(tmp_path / "rl"), checkpoint=str(tiny_world_checkpoint), sight_reward=0.3,
                          sight_probe=probe, imitate_steps=2, prior_kl=0.05, prior_free_in_view=True,
                          **{**TINY, "rounds": 2, "learn_real": True}))
    assert freed == [probe] * 3 and res["rounds"][1]["real_steps"] == 80
    row = res["rounds"][0]
    assert isinstance(row["dream_sightings"], int) and row["dream_sightings"] >= 0
    with open(tmp_path / "rl" / "rl_log.csv") as f:
        assert "dream_sightings" in f.readline()


def test_the_prior_lets_go_where_the_probe_sees_the_goal(seeking_dataset, tmp_path):
    import torch
    from gymnasium import spaces
    from stable_baselines3.common.policies import ActorCriticCnnPolicy
    from torch.distributions import Categorical, kl_divergence

    from agents.imitation import PriorKLPolicy, with_prior
    from agents.policy import new_policy, save_policy
    from agents.rl import RLConfig, run_rl
    from agents.sighting import predict, train_sight_probe
    from envs.dataset import EpisodeDataset

    train_sight_probe([str(seeking_dataset)], str(tmp_path / "probe"), steps=200, batch=64, every=1, progress=False)
    meanings = ("noop", "forward", "backward", "strafe_left", "strafe_right", "turn_left", "turn_right",
                "forward_turn_left", "forward_turn_right")
    torch.manual_seed(0)
    policy = PriorKLPolicy(spaces.Box(0, 255, (6, 64, 64), np.uint8), spaces.Discrete(9), lambda _: 1e-3)
    torch.manual_seed(1)
    save_policy(new_policy([6, 64, 64], 9), tmp_path / "prior", "DMLabMaze-v0", {}, meanings, frame_stack=2)
    model = type("Model", (), {"policy": policy})()
    with_prior(model, str(tmp_path / "prior"), prior_kl=0.02, ent_coef=0.01, free_in_view=str(tmp_path / "probe"))
    ds = EpisodeDataset(seeking_dataset, "train")
    frames = np.concatenate([ds.episode(i)["frames"] for i in range(len(ds))])      # t y x c
    ds.close()
    p = predict(policy.__dict__["_sight"][0], frames)
    seen, unseen = np.flatnonzero(p > 0.5), np.flatnonzero(p <= 0.5)
    assert len(seen) >= 4 and len(unseen) >= 4
    newest = np.concatenate([frames[seen[:4]], frames[unseen[:4]]])                 # 4 in view, then 4 not
    older = frames[unseen[-8:]]
    obs = torch.as_tensor(np.concatenate([older, newest], -1)).permute(0, 3, 1, 2).float()   # b (k c) y x
    actions = torch.as_tensor(np.arange(8) % 9)
    view = policy.in_view(obs)
    assert view.tolist() == [True] * 4 + [False] * 4
    swapped = torch.as_tensor(np.concatenate([frames[seen[-8:]], newest], -1)).permute(0, 3, 1, 2).float()
    assert torch.equal(policy.in_view(swapped), view)                               # the newest frame decides
    plain = ActorCriticCnnPolicy.evaluate_actions(policy, obs, actions)
    kl = kl_divergence(Categorical(logits=policy.get_distribution(obs).distribution.logits),
                       Categorical(logits=policy.__dict__["_prior"].get_distribution(obs).distribution.logits))
    assert float(kl.min().detach()) > 0
    paid = plain[2] - policy.evaluate_actions(obs, actions)[2]
    assert torch.allclose(paid, 2.0 * kl * ~view, atol=1e-5)                        # nothing paid where in view
    with pytest.raises(ConfigError, match="prior_free_in_view"):
        run_rl(RLConfig(out=str(tmp_path / "bad"), imitate_steps=5, prior_kl=0.05, prior_free_in_view=True))
    with pytest.raises(ConfigError, match="prior_free_in_view"):
        run_rl(RLConfig(out=str(tmp_path / "bad"), sight_reward=0.3, prior_free_in_view=True))
    assert not (tmp_path / "bad").exists()
