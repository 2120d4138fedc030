"""The exploration prior: cloning a collector's real steps into a fresh policy (agents.imitation)."""

from __future__ import annotations

import numpy as np
import pytest

from envs.common.errors import ConfigError

MEANINGS = ("noop", "forward", "backward", "strafe_left", "strafe_right", "turn_left", "turn_right",
            "forward_turn_left", "forward_turn_right")
META = {"env_id": "DMLabMaze-v0", "env_kwargs": {}, "meanings": MEANINGS}


def write_steps(root, episodes: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """A frames dataset of ``(frames t y x c, actions t)`` episodes (actions[0] = -1, the reset's)."""
    from agents.rl import real_episode, write_real_steps

    eps = [real_episode(list(f), a, np.zeros(len(a), np.float32), False, {"seed": i, "maze_seed": 2 * i})
           for i, (f, a) in enumerate(episodes)]
    write_real_steps(root, eps, "DMLabMaze-v0", {}, MEANINGS, {"policy": "test"})


def test_stacked_steps_are_what_sb3s_frame_stack_shows_the_policy(tmp_path):
    from gymnasium import spaces
    from stable_baselines3.common.vec_env.stacked_observations import StackedObservations

    from agents.imitation import stacked_steps

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    actions = np.array([-1, 1, 5, 5, 6, 2], np.int16)
    write_steps(tmp_path / "d", [(frames, actions)])
    x, a = stacked_steps(tmp_path / "d", 3)
    assert x.shape == (5, 64, 64, 9) and a.tolist() == [1, 5, 5, 6, 2]        # frame t, then the action it led to
    stacker = StackedObservations(1, 3, spaces.Box(0, 255, (64, 64, 3), np.uint8), "last")
    seen = [stacker.reset(frames[:1])[0]]
    for t in range(1, 5):
        seen.append(stacker.update(frames[t:t + 1], np.zeros(1, bool), [{}])[0][0])
    assert all(np.array_equal(x[t], seen[t]) for t in range(5))
    from envs.common.errors import DatasetError

    with pytest.raises(DatasetError, match="'test'"):
        stacked_steps(tmp_path / "d", 1, split="test")


@pytest.mark.slow
@pytest.mark.parametrize("stack", [2, 1])
def test_the_clone_learns_what_its_frames_tell_and_leaves_the_critic(tmp_path, stack):
    """The action after frame t is told by the colour of frame t - 1: a clone that sees two frames learns it,
    one that sees a single frame cannot. The critic's head stays as initialised."""
    import torch

    from agents.imitation import imitate, stacked_steps
    from agents.policy import load_policy, new_policy

    rng = np.random.default_rng(1)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    act_of = np.array([1, 5, 6])
    episodes = []
    for _ in range(4):
        c = rng.integers(3, size=40)
        frames = np.broadcast_to(colours[c][:, None, None, :], (40, 64, 64, 3)).copy()
        actions = np.concatenate([[-1, 0], act_of[c[:-2]]])                        # actions[t + 1] = f(colour[t - 1])
        episodes.append((frames, actions))
    write_steps(tmp_path / "d", episodes)
    stats = imitate(tmp_path / "d", tmp_path / "p", META, steps=150, frame_stack=stack, seed=3, batch_size=64)
    assert stats["loss_last"] < stats["loss_first"] and stats["examples"] == 4 * 39
    policy, meta = load_policy(tmp_path / "p")
    assert meta["frame_stack"] == stack and meta["observation_shape"] == [3 * stack, 64, 64]
    x, a = stacked_steps(tmp_path / "d", stack)
    with torch.no_grad():
        logits = policy.get_distribution(torch.as_tensor(x[1:]).permute(0, 3, 1, 2)).distribution.logits
    agree = float((logits.argmax(-1).numpy() == a[1:]).mean())
    assert agree > 0.95 if stack == 2 else agree < 0.6
    torch.manual_seed(3)
    fresh = new_policy([3 * stack, 64, 64], 9)
    assert torch.equal(policy.value_net.weight, fresh.value_net.weight)
    with pytest.raises(ConfigError, match="actions"):
        imitate(tmp_path / "d", tmp_path / "q", {**META, "meanings": MEANINGS[:3]}, steps=1)


@pytest.mark.slow
def test_the_loops_first_dream_starts_from_the_clone(tiny_world_checkpoint, tmp_path):
    import torch

    from agents.policy import load_policy
    from agents.rl import RLConfig, run_rl
    from tests.agents.test_rl import TINY

    out = tmp_path / "rl"
    # a learning rate too small to move a weight: the round's policy is where PPO started
    run_rl(RLConfig(out=str(out), checkpoint=str(tiny_world_checkpoint), imitate_steps=3, frame_stack=2, lr=1e-12,
                    **TINY))
    clone, meta = load_policy(out / "rounds" / "r00" / "policy_imitated")
    assert meta["stats"]["imitate_steps"] == 3 and meta["stats"]["examples"] == 40
    trained, _ = load_policy(out / "rounds" / "r00" / "policy")
    for name, w in clone.state_dict().items():
        assert torch.allclose(w, trained.state_dict()[name], atol=1e-6), name
    with pytest.raises(ConfigError, match="imitate_steps"):
        run_rl(RLConfig(out=str(tmp_path / "bad"), imitate_steps=-1))
    with pytest.raises(ConfigError, match="recurrent"):
        run_rl(RLConfig(out=str(tmp_path / "bad"), imitate_steps=10, recurrent=True))
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_the_prior_term_is_the_kl_to_the_clone_and_pulls_the_policy_to_it(tmp_path):
    import types

    import torch
    from gymnasium import spaces
    from stable_baselines3.common.policies import ActorCriticCnnPolicy
    from torch.distributions import Categorical, kl_divergence

    from agents.imitation import PriorKLPolicy, with_prior
    from agents.policy import new_policy, save_policy

    torch.manual_seed(0)
    space = spaces.Box(0, 255, (3, 64, 64), np.uint8)
    policy = PriorKLPolicy(space, spaces.Discrete(9), lambda _: 1e-3)
    torch.manual_seed(1)
    save_policy(new_policy([3, 64, 64], 9), tmp_path / "prior", "DMLabMaze-v0", {}, MEANINGS)
    with_prior(types.SimpleNamespace(policy=policy), str(tmp_path / "prior"), prior_kl=0.02, ent_coef=0.01)
    assert set(policy.state_dict()) == set(new_policy([3, 64, 64], 9).state_dict())     # the prior is not saved
    obs = torch.as_tensor(np.random.default_rng(0).integers(0, 256, (16, 3, 64, 64))).float()
    actions = torch.as_tensor(np.random.default_rng(1).integers(0, 9, 16))
    plain = ActorCriticCnnPolicy.evaluate_actions(policy, obs, actions)
    value, log_prob, entropy = policy.evaluate_actions(obs, actions)
    assert torch.equal(value, plain[0]) and torch.equal(log_prob, plain[1])
    prior = policy.__dict__["_prior"]
    kl = kl_divergence(Categorical(logits=policy.get_distribution(obs).distribution.logits),
                       Categorical(logits=prior.get_distribution(obs).distribution.logits))
    assert torch.allclose(plain[2] - entropy, 2.0 * kl, atol=1e-5)       # kl_weight = prior_kl / ent_coef = 2
    # PPO's entropy term, minimised, now pulls the policy to the prior
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    before = float(kl.mean().detach())
    for _ in range(30):
        loss = -0.01 * policy.evaluate_actions(obs, actions)[2].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(policy.kl_to_prior(obs, policy.get_distribution(obs).distribution.logits).mean().detach())
    assert after < 0.5 * before
    assert all(not p.requires_grad for p in prior.parameters())


@pytest.mark.slow
def test_the_loop_holds_its_policy_to_the_clone_in_the_dream_and_the_real_steps(tiny_world_checkpoint, tmp_path):
    from agents.policy import load_policy
    from agents.rl import RLConfig, run_rl
    from tests.agents.test_rl import TINY

    out = tmp_path / "rl"
    res = run_rl(RLConfig(out=str(out), checkpoint=str(tiny_world_checkpoint), imitate_steps=2, prior_kl=0.05,
                          learn_real=True, **{**TINY, "rounds": 2, "collect_steps": 48}))
    assert [r["real_steps"] for r in res["rounds"]] == [48, 96]
    _, meta = load_policy(out / "rounds" / "r01" / "policy_real")         # saved as a plain policy
    assert meta["policy"] == "sb3 ActorCriticCnnPolicy"
    with pytest.raises(ConfigError, match="imitate_steps"):
        run_rl(RLConfig(out=str(tmp_path / "bad"), prior_kl=0.05))
    with pytest.raises(ConfigError, match="ent_coef"):
        run_rl(RLConfig(out=str(tmp_path / "bad"), prior_kl=0.05, imitate_steps=5, ent_coef=0.0))
