"""Action repeat: the VecEnv wrapper's bookkeeping, the real-maze actor holding its actions as training did, and
the loop with ``action_repeat`` on tiny settings."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

from envs.common.errors import ConfigError


class Ticks(gym.Env):
    """Test scaffolding for the wrapper's arithmetic: frame t pays reward t and shows t; episodes last
    ``lengths[e]`` frames, then end (terminated)."""

    observation_space = gym.spaces.Box(0, 1000, (1,), np.float32)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, lengths: list[int]):
        self.lengths, self.episode, self.t = lengths, -1, 0

    def reset(self, *, seed=None, options=None):
        self.episode, self.t = self.episode + 1, 0
        return np.array([1000 * self.episode], np.float32), {}

    def step(self, action):
        self.t += 1
        end = self.t >= self.lengths[self.episode % len(self.lengths)]
        return np.array([1000 * self.episode + self.t], np.float32), float(self.t), end, False, {"t": self.t}


def test_a_held_action_sums_the_rewards_of_its_frames_and_carries_those_after_an_end():
    from agents.repeat import ActionRepeat

    # env 0: episodes of 5 frames, then 1 frame; env 1: episodes of 7
    venv = ActionRepeat(DummyVecEnv([lambda: Ticks([5, 1, 5]), lambda: Ticks([7])]), 3)
    venv.reset()
    obs, rew, done, info = venv.step(np.array([1, 2]))           # frames 1-3 of each
    assert rew.tolist() == [6, 6] and not done.any() and obs[:, 0].tolist() == [3, 3]
    obs, rew, done, info = venv.step(np.array([1, 2]))
    # env 0 ends on frame 5 (4 + 5 paid); frame 1 of its next episode (1 frame long) ends that one too: this end
    # is not reported and its reward dropped, and env 0 stands at episode 2's start
    assert done.tolist() == [True, False] and rew.tolist() == [9, 15]
    assert info[0]["terminal_observation"][0] == 5 and obs[:, 0].tolist() == [2000, 6]
    obs, rew, done, info = venv.step(np.array([1, 2]))
    # env 1: frame 7 ends it, then frames 1-2 of its next episode: their rewards (1 + 2) wait for its first decision
    assert rew.tolist() == [6, 7] and done.tolist() == [False, True]
    assert info[1]["terminal_observation"][0] == 7 and obs[:, 0].tolist() == [2003, 1002]
    obs, rew, done, info = venv.step(np.array([0, 0]))
    assert rew.tolist() == [4 + 5, (1 + 2) + 3 + 4 + 5] and done.tolist() == [True, False]
    obs, rew, done, info = venv.step(np.array([0, 0]))
    assert rew[0] == 1 + (2 + 3 + 4)                          # env 0's carried frame 1, then frames 2-4
    venv.close()


def test_in_the_real_maze_a_held_action_shows_what_k_plain_steps_show():
    from agents.repeat import ActionRepeat

    make = [lambda: gym.make("DMLabMaze-v0", max_episode_steps=5)]
    held, plain = ActionRepeat(DummyVecEnv(make), 2), DummyVecEnv(make)
    held.seed(4)
    plain.seed(4)
    assert np.array_equal(held.reset(), plain.reset())
    for a in (1, 4, 0):                                      # frames 1-2, 3-4, then 5 (the end) and the next
        obs, _, done, info = held.step(np.array([a]))
        for _ in range(2):
            p_obs, _, p_done, p_info = plain.step(np.array([a]))
            if p_done[0]:
                ended = p_info[0]["terminal_observation"]
        assert np.array_equal(obs, p_obs)
    assert done[0] and np.array_equal(info[0]["terminal_observation"], ended)
    assert info[0]["TimeLimit.truncated"]
    held.close()
    plain.close()


def test_the_actor_holds_its_actions_and_stacks_only_the_frames_it_decides_on(tmp_path):
    import envs  # noqa: F401
    from agents.policy import PolicyActor, new_policy, policy_actor, save_policy
    from agents.repeat import ActionRepeat
    from envs.maze.dmlab import ACTION_MEANINGS

    k, depth = 3, 2
    venv = VecFrameStack(ActionRepeat(DummyVecEnv([lambda: gym.make("DMLabMaze-v0", max_episode_steps=99)]), k),
                         depth, channels_order="last")
    venv.seed(2)
    stacked = venv.reset()                                   # 1 y x (depth c): what PPO sees at each decision
    policy = new_policy([3 * depth, 64, 64], 9)
    actor = PolicyActor(policy, False, frame_stack=depth, action_repeat=k)
    actor.reset(0)
    env = gym.make("DMLabMaze-v0", max_episode_steps=99)
    obs, _ = env.reset(seed=2)
    for _decision in range(4):
        actions = [actor.act(obs)]
        assert np.array_equal(actor._stack, stacked[0])      # the training stack, one frame per decision
        for _ in range(k - 1):
            actions.append(actor.act(np.zeros_like(obs)))    # frames between decisions are not looked at
            obs, *_ = env.step(actions[-2])
        obs, *_ = env.step(actions[-1])
        assert len(set(actions)) == 1
        stacked, *_ = venv.step(np.array([actions[0]]))
    env.close()
    venv.close()
    save_policy(policy, tmp_path / "p", "DMLabMaze-v0", {}, ACTION_MEANINGS, frame_stack=depth, action_repeat=k)
    again, meta = policy_actor(tmp_path / "p")
    assert again.action_repeat == k == meta["action_repeat"]
    # saved without it, a policy acts every step
    save_policy(policy, tmp_path / "q", "DMLabMaze-v0", {}, ACTION_MEANINGS, frame_stack=depth)
    assert json.loads((tmp_path / "q" / "policy.json").read_text())["action_repeat"] == 1
    assert policy_actor(tmp_path / "q")[0].action_repeat == 1


def test_action_repeat_settings_are_refused_before_any_work(tmp_path):
    from agents.rl import RLConfig, run_rl

    with pytest.raises(ConfigError, match="action_repeat"):
        run_rl(RLConfig(out=str(tmp_path / "a"), action_repeat=0))
    with pytest.raises(ConfigError, match="multiple"):
        run_rl(RLConfig(out=str(tmp_path / "b"), action_repeat=4, learn_real=True, collect_steps=12502))
    with pytest.raises(ConfigError, match="imitate_steps"):
        run_rl(RLConfig(out=str(tmp_path / "c"), action_repeat=2, imitate_steps=100, frame_stack=4))
    assert not any((tmp_path / d).exists() for d in "abc")


@pytest.mark.slow
def test_the_loop_decides_every_k_frames_in_the_dream_and_in_the_real_steps(tiny_world_checkpoint, tmp_path):
    from agents.policy import load_policy, play_policy
    from agents.rl import RLConfig, run_rl
    from envs.dataset import EpisodeDataset

    from .test_rl import TINY

    out = tmp_path / "rl"
    cfg = {**TINY, "rounds": 2, "collect_steps": 48, "dream_steps": 32}
    res = run_rl(RLConfig(out=str(out), checkpoint=str(tiny_world_checkpoint), learn_real=True, action_repeat=2,
                          **cfg))
    rows = res["rounds"]
    # the dream's frames are PPO's decisions x 2: whole rollouts of dream_envs x n_steps decisions
    assert all(r["dream_frames"] % (2 * 2 * 8) == 0 and r["dream_frames"] >= 32 for r in rows)
    # the real budget is frames, spent to the frame in decisions of 2
    ds = EpisodeDataset(out / "rounds" / "r01" / "frames", "train")
    assert sum(n - 1 for n in ds.lengths()) == 48
    actions = [ds.episode(i)["actions"][1:] for i in range(len(ds.lengths()))]
    ds.close()
    # every episode starts on a decision (20-frame episodes, decisions of 2), so frames 2j+1 and 2j+2 share one
    assert all((a[0::2][: len(a[1::2])] == a[1::2]).all() for a in actions)
    for name in ("policy_real", "policy"):
        assert load_policy(out / "rounds" / "r01" / name)[1]["action_repeat"] == 2
    assert play_policy(out / "policy", episodes=1, seed=3, episode_steps=20)["steps"] == 20


@pytest.mark.slow
def test_ppo_on_the_real_env_spends_its_budget_in_frames_with_a_repeat():
    from agents.rl import RLConfig, ppo_real

    cfg = RLConfig(n_steps=8, batch_size=16, epochs=1, action_repeat=2)     # ppo_real: 128 decisions x 2 envs a rollout
    seen = []
    model = ppo_real("DMLabMaze-v0", {}, 1024, cfg, envs_n=2, episode_steps=20, marks=(512,),
                     on_mark=lambda n, m: seen.append((n, m.num_timesteps, cfg.actor(m.policy).action_repeat)))
    # a mark of n real frames is n / 2 decisions; (b) is scored holding its actions as it learnt them
    assert seen == [(512, 256, 2), (1024, 512, 2)] and model.num_timesteps == 512
