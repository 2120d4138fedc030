"""An exploration prior for the RL loop: behaviour cloning of the exploration walk into a fresh policy.

Dream-trained policies approach a goal they see as well as the map-reading oracle does, but see it less often
than the exploration random walk (``benchmarks/goal_sightings.py``): they turn in place for 2-18 % of their steps
where the walk, which holds a turn for 2-8 steps whenever a wall is close, turns for 53 %. :func:`imitate`
fits a new SB3 ``ActorCriticCnnPolicy``'s action head to the walk's own real steps (frame → the action taken
next, cross-entropy), so PPO in the dream starts from the walk's way of searching rather than from a uniform
policy. A memoryless policy cannot hold an action; seeing the last frames (``frame_stack`` 4) it can tell that
it is turning and go on (measured on training mazes: sightings 3.5 per 1,000 steps against the walk's 4.1 and a
one-frame clone's 2.5).

Only the actor (features + action head) is fitted; the critic's head is left as initialised, and PPO fits it.

PPO in the dream pays for approaching a goal in view, not for searching, and wipes the clone's search out within
a few rounds (turns in place 57 % → 17-25 % after three). :class:`PriorKLPolicy` keeps it: PPO's loss also pays
``prior_kl`` × KL(policy ‖ clone) on every minibatch, the behaviour prior of KL-regularised RL.

Axis letters: b batch, k stacked frames, y x pixels, c colour.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from envs.common.errors import ConfigError

try:
    from stable_baselines3.common.policies import ActorCriticCnnPolicy
except ImportError:                     # the rl extra is not installed; maskflow rl says so before any work
    ActorCriticCnnPolicy = object


class PriorKLPolicy(ActorCriticCnnPolicy):
    """SB3's ``ActorCriticCnnPolicy`` whose :meth:`evaluate_actions` (what PPO's update calls) returns the entropy
    less ``kl_weight`` × KL(this policy ‖ ``prior``) per observation. PPO's loss subtracts ``ent_coef`` × the mean
    entropy, so it then also pays ``ent_coef × kl_weight`` × the mean KL: :func:`with_prior` sets ``kl_weight`` to
    ``prior_kl / ent_coef``. The prior is frozen and kept out of the state dict: the saved weights are a plain
    ``ActorCriticCnnPolicy``'s. With ``sight`` (a sighting probe and its threshold) the KL is not paid on
    observations whose newest frame shows the goal: the walk's search is worth keeping, its approach is not."""

    def set_prior(self, prior, kl_weight: float, sight: tuple[Any, float] | None = None) -> None:
        prior.set_training_mode(False)
        for p in prior.parameters():
            p.requires_grad_(False)
        if sight is not None:
            sight[0].eval()
            for p in sight[0].parameters():
                p.requires_grad_(False)
        self.__dict__.update(_prior=prior, _kl_weight=float(kl_weight), _sight=sight)

    def _get_action_dist_from_latent(self, latent_pi):
        self.__dict__["_last_dist"] = dist = super()._get_action_dist_from_latent(latent_pi)
        return dist

    def kl_to_prior(self, obs, logits):
        """KL(softmax(logits) ‖ prior(obs)), one per observation (b)."""
        import torch

        with torch.no_grad():
            q = self._prior.get_distribution(obs).distribution.logits.log_softmax(-1)          # b actions
        p = logits.log_softmax(-1)
        return (p.exp() * (p - q)).sum(-1)

    def evaluate_actions(self, obs, actions):
        values, log_prob, entropy = super().evaluate_actions(obs, actions)
        prior = self.__dict__.get("_prior")
        if prior is None:
            return values, log_prob, entropy
        kl = self.kl_to_prior(obs, self.__dict__["_last_dist"].distribution.logits)
        if self.__dict__.get("_sight") is not None:
            kl = kl * ~self.in_view(obs)
        return values, log_prob, entropy - self._kl_weight * kl

    def in_view(self, obs):
        """(b,) bool: the sighting probe sees the goal in the newest frame of observations b (k c) y x, the
        frames stacked oldest first along c as SB3 shows them to the policy."""
        import torch

        net, threshold = self.__dict__["_sight"]
        with torch.no_grad():
            return torch.sigmoid(net(obs[:, -3:].permute(0, 2, 3, 1))) > threshold     # b y x c, values 0-255


def with_prior(model, prior_dir: str, prior_kl: float, ent_coef: float, free_in_view: str | None = None):
    """``model`` (SB3 PPO built on :class:`PriorKLPolicy`) paying ``prior_kl`` × KL(policy ‖ the policy saved in
    ``prior_dir``) in its loss; ``free_in_view`` (a sighting probe folder): not where the probe sees the goal."""
    from agents.policy import load_policy

    prior, _ = load_policy(prior_dir)
    sight = None
    if free_in_view is not None:
        from agents.sighting import load_sight_probe

        net, meta = load_sight_probe(free_in_view)
        sight = (net, float(meta["threshold"]))
    model.policy.set_prior(prior, prior_kl / ent_coef, sight)
    return model


def read_steps(data: str | Path, frame_stack: int, split: str = "train") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames n y x c uint8, index b k, actions b int64): every step of ``data``'s episodes, with the rows of
    ``frames`` the policy sees at it (oldest first; row 0 is a zero frame, what SB3's ``VecFrameStack`` shows before
    an episode's first) and the action taken from it. :func:`stack` assembles the observations from these, a
    batch at a time, so the stacks are never all held at once."""
    from envs.dataset import EpisodeDataset

    ds = EpisodeDataset(data, split=split)
    frames, index, acts, base = [], [], [], 1
    try:
        for i in range(len(ds)):
            ep = ds.episode(i)
            f = ep["frames"][:-1]                                                  # t y x c, the last has no action
            t = np.arange(len(f))[:, None] + np.arange(frame_stack) - (frame_stack - 1)      # t k, oldest first
            index.append(np.where(t >= 0, base + t, 0))
            frames.append(f)
            acts.append(np.asarray(ep["actions"][1:], np.int64))                   # actions[t + 1] left frame t
            base += len(f)
    finally:
        ds.close()
    if not frames or base == 1:
        raise ConfigError(f"{data} holds no steps to imitate in its {split} split")
    frames.insert(0, np.zeros_like(frames[0][:1]))
    return np.concatenate(frames), np.concatenate(index), np.concatenate(acts)


def stack(frames: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Observations b y x (k c) from :func:`read_steps`' frames and (a batch of) its index rows."""
    b, k = index.shape
    return frames[index].transpose(0, 2, 3, 1, 4).reshape(b, *frames.shape[1:3], k * frames.shape[3])


def stacked_steps(data: str | Path, frame_stack: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(frames b y x (k c) uint8, actions b int64): every step of ``data``'s episodes as the policy would see it
    (the last ``frame_stack`` frames along c, oldest first, zeros before the episode's first, as SB3's
    ``VecFrameStack`` shows them) with the action taken from it."""
    frames, index, actions = read_steps(data, frame_stack, split)
    return stack(frames, index), actions


def imitate(data: str | Path, out: str | Path, meta: dict[str, Any], steps: int, frame_stack: int = 1,
            seed: int = 0, batch_size: int = 128, lr: float = 3e-4) -> dict[str, Any]:
    """Fit a fresh policy's actor to the steps of ``data`` (a frames dataset) for ``steps`` Adam steps of
    ``batch_size``, and save it to ``out`` (:func:`agents.policy.save_policy`; ``meta``: the env's ``env_id``,
    ``env_kwargs`` and action ``meanings``). Returns the stats saved with it (first and last loss)."""
    import torch

    from agents.policy import new_policy, save_policy

    frames, index, a = read_steps(data, frame_stack)
    n_actions = len(meta["meanings"])
    if a.min() < 0 or a.max() >= n_actions:
        raise ConfigError(f"{data}: actions {a.min()}..{a.max()} lie outside the env's {n_actions} actions")
    torch.manual_seed(seed)
    policy = new_policy([frames.shape[-1] * frame_stack, *frames.shape[1:3]], n_actions)
    actor = [p for name, p in policy.named_parameters() if not name.startswith("value_net")]
    opt = torch.optim.Adam(actor, lr=lr)
    rng = np.random.default_rng(seed)
    losses, t0 = [], time.perf_counter()
    policy.set_training_mode(True)
    for _ in range(steps):
        idx = rng.integers(len(a), size=batch_size)
        obs = torch.as_tensor(stack(frames, index[idx])).permute(0, 3, 1, 2)                   # b (k c) y x
        loss = -policy.get_distribution(obs).log_prob(torch.as_tensor(a[idx])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    policy.set_training_mode(False)
    tail = max(1, len(losses) // 10)
    stats = {"imitated": str(data), "imitate_steps": steps, "examples": int(len(a)),
             "loss_first": float(np.mean(losses[:tail])), "loss_last": float(np.mean(losses[-tail:])),
             "seconds": round(time.perf_counter() - t0, 1)}
    save_policy(policy, out, meta["env_id"], meta["env_kwargs"], meta["meanings"], stats, frame_stack=frame_stack)
    return stats
