"""The world-model RL loop (``maskflow rl``), as DIAMOND and IRIS run it, on a shipped or trained world model.

Each round r (``OUT/rounds/rNN/``):

1. **collect** ``collect_steps`` real steps in training mazes (even maze seeds) with the current policy
   (round 0: the exploration random walk, as there is no policy yet) → ``frames/`` (a frames dataset) →
   ``tokens/`` (tokenized with the world model's tokenizer); ``learn_real``: from round 1 PPO learns from
   these real steps as the policy collects them (``policy_real/``), so real rewards correct what the dream
   pays wrongly, and the dream continues from that policy;
2. **update the world model**: fine-tune the previous round's model for ``wm_steps`` on every round's tokens
   plus ``wm_data`` (optional earlier token datasets, so the model does not forget) → ``world/``;
3. **train the policy in the dream**: SB3 PPO (``CnnPolicy``; ``recurrent``: sb3-contrib's ``RecurrentPPO``)
   continues from the last round's weights (round 0: a fresh policy, or with ``imitate_steps`` a clone of
   the walk's real steps, :mod:`agents.imitation`) in the batched
   :class:`~worldmodel.dream.vector_env.MaskFlowDreamVectorEnv`, ``dream_envs`` dreams started from
   real states (windows of this round's real tokens, or of ``dream_starts``; a share ``reward_starts`` of
   them end 1..``reward_lead`` frames before a real reward, where the data holds any), ``horizon`` imagined
   frames each, ``dream_steps`` frames in all;
4. **evaluate** in real held-out mazes (odd maze seeds): goal reaches per 1,000 real steps over
   ``eval_episodes`` episodes (the same mazes every round) → ``policy/`` and a row of ``rl_log.csv``.

Real steps counted are the collected ones only (N = rounds × collect_steps); held-out evaluation steps are
measurement, not experience. The run resumes at the first round without a ``done.json``; a round's parts
resume too (the dataset is rewritten, the fine-tune resumes from its own state). ``OUT/policy/`` is always
the latest round's policy (``maskflow play policy=OUT/policy``); ``OUT/curves.png`` plots real goal reaches
against real steps.

:func:`baselines` scores rows (b)–(d) of the RL issue on the same held-out mazes: PPO on the real env for
the same N real steps, the exploration random walk, and uniform random actions.

Axis letters: y x pixels, c colour.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from envs.common.config_check import SEED, THREADS, Check, above, at_least, check_config, one_of, within
from envs.common.errors import ConfigError

ROUND_FILE = "done.json"
LOG_FIELDS = ("round", "real_steps", "eval_reaches_per_1000", "eval_reaches", "eval_steps", "collect_reaches_per_1000",
              "dream_frames", "dream_return", "dream_episodes", "dream_sightings", "reward_starts", "reward_threshold",
              "collect_s",
              "world_s", "dream_s", "eval_s")


@dataclass
class RLConfig:
    """Settings of one RL run (the keys of ``configs/rl.yaml``)."""

    out: str = "runs/rl"            # run directory: rounds/, policy/, rl_log.csv, curves.png
    checkpoint: str = "default"     # world model to start from (default | DIR)
    rounds: int = 4                 # collect → update the world model → train in the dream → evaluate
    collect_steps: int = 12500      # real env steps per round (the real budget N = rounds x collect_steps)
    episode_steps: int = 300        # steps per real episode (collection and evaluation)
    wm_steps: int = 150             # world-model fine-tune steps per round (0 = keep the model as it is)
    wm_data: list[str] = field(default_factory=list)  # earlier token datasets mixed into every fine-tune
    wm_lr: float = 3e-4
    wm_goal_share: float = 0.0      # share of each fine-tune batch from clips ending where the goal comes back into
                                    # view (`maskflow train goal_share`), so the dream keeps the box it turned from
    reward_pos_weight: float = 20.0  # weight of goal-reach frames in the reward head's loss (they are rare)
    dream_steps: int = 8192         # imagined frames of PPO per round (all dreams together)
    dream_envs: int = 16            # dreams batched in one forward pass
    horizon: int = 32               # imagined frames per dream episode (DIAMOND: 15, IRIS: 20; 15-50)
    dream_starts: str = ""          # dataset whose real windows start the dreams ("" = this round's real steps)
    reward_starts: float = 0.5      # share of dreams whose real start ends 1..reward_lead frames before a real
    reward_lead: int = 16           # reward in those windows (where they hold any), so PPO meets rewards
    sight_starts: float = 0.0       # a further share whose window saw the goal and lost it (dream_starts' poses):
                                    # turning back finds it where the dream holds it, a search it can score
    reward_threshold: float | None = None   # the dream's reward threshold; null = the start checkpoint's
                                    # calibration (`maskflow calibrate`; kept through the fine-tunes), else 0.5
    end_on_reward: bool = True      # a dreamed reach ends the dream, as the real respawn starts afresh (else a
                                    # policy can learn to stand at a dreamed goal that pays frame after frame)
    steps_per_frame: int = 0        # MGM passes per dreamed frame (0 = the dream env's default)
    frame_stack: int = 1            # frames the policy sees at once (SB3 VecFrameStack; 4 as in Atari), so a
                                    # memoryless CNN sees motion and where it just came from; also for (b)
    act_temperature: float = 1.0    # the policy samples its actions in the real maze (collection, evaluation,
                                    # `maskflow play`) at this temperature; < 1 sharper; also for (b)
    action_repeat: int = 1          # the policy decides every that many frames and holds its action in between
                                    # (agents.repeat; DMLab agents hold 4), dream and real; also for (b)
    recurrent: bool = False         # an LSTM policy (sb3-contrib RecurrentPPO, CnnLstmPolicy) that remembers
                                    # the episode so far, as DIAMOND's and IRIS's actor-critics; also for (b)
    n_steps: int = 64               # PPO rollout length per dream
    batch_size: int = 256
    epochs: int = 4
    lr: float = 2.5e-4              # PPO learning rate
    ent_coef: float = 0.01          # entropy bonus: keeps the policy exploring the dream
    gamma: float = 0.97
    eval_episodes: int = 50         # held-out episodes per evaluation (the same mazes every round)
    eval_seed: int = 100000         # evaluation episode e plays the held-out maze of seed eval_seed + e
    seed: int = 0
    threads: int = 0                # torch CPU threads (0 = adapt to the cores other processes leave free)
    progress: bool = True
    first_policy: str = "random_walk"   # who collects round 0: random_walk | uniform
    imitate_steps: int = 0          # round 0: clone round 0's collector into the fresh policy for this many steps
                                    # (agents.imitation), so PPO starts from the walk's search; 0 = off
    prior_kl: float = 0.0           # with imitate_steps: PPO's loss also pays this x KL(policy || that clone) in
                                    # every update, dream and real, so the walk's search survives; 0 = off
    prior_free_in_view: bool = False  # with prior_kl and sight_reward: not on frames where the sighting probe sees
                                    # the goal, so the approach is the dream's to learn (the walk's is poor)
    learn_real: bool = False        # rounds >= 1: PPO also learns from the real steps the policy collects (their
                                    # real rewards), before the dream (Dyna, MBPO); the real budget is unchanged
    sight_reward: float = 0.0       # a search signal: this bonus on the step the goal first comes into view in an
                                    # episode (dream, and real steps PPO learns from), 0 = off (agents.sighting)
    sight_probe: str = ""           # the probe that tells it from a frame (`python -m agents.sighting`); "" = one
                                    # learnt each round from the loop's own real frames so far (rNN/sight/)

    CHECKS: ClassVar[dict[str, Check]] = {
        "rounds": at_least(1), "collect_steps": at_least(1), "episode_steps": at_least(1),
        "wm_steps": at_least(0, "0 = no world-model update"), "wm_lr": above(0),
        "wm_goal_share": within(0, 1, hi_open=True), "reward_pos_weight": above(0),
        "dream_steps": at_least(1), "dream_envs": at_least(1), "horizon": at_least(1),
        "reward_starts": within(0, 1), "reward_lead": at_least(1), "sight_starts": within(0, 1),
        "reward_threshold": within(0, 1, hi_open=True),
        "steps_per_frame": at_least(0, "0 = the dream default"), "frame_stack": at_least(1),
        "action_repeat": at_least(1),
        "act_temperature": above(0), "n_steps": at_least(2), "batch_size": at_least(2),
        "epochs": at_least(1), "lr": above(0), "ent_coef": at_least(0), "gamma": above(0),
        "eval_episodes": at_least(1), "eval_seed": SEED, "seed": SEED, "threads": THREADS,
        "first_policy": one_of("random_walk", "uniform"),
        "imitate_steps": at_least(0, "0 = off"), "prior_kl": at_least(0, "0 = off"),
        "sight_reward": at_least(0, "0 = off"),
    }

    def actor(self, policy):
        """``policy`` (SB3) as the real maze's actor with these settings' frame stack and acting temperature."""
        from agents.policy import PolicyActor

        return PolicyActor(policy, frame_stack=self.frame_stack, temperature=self.act_temperature,
                           action_repeat=self.action_repeat)

    def repeat(self, venv):
        """``venv`` with each action held for ``action_repeat`` frames (:class:`agents.repeat.ActionRepeat`), or
        ``venv`` itself."""
        if self.action_repeat == 1:
            return venv
        from agents.repeat import ActionRepeat

        return ActionRepeat(venv, self.action_repeat)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first key of a wrong type or out of its range."""
        check_config(self)
        if self.gamma > 1:
            raise ConfigError(f"gamma={self.gamma} must lie in (0, 1]")
        if self.learn_real and self.act_temperature != 1:
            raise ConfigError(f"learn_real=true collects as PPO samples (temperature 1); act_temperature="
                              f"{self.act_temperature} would collect differently: set one of them back")
        if self.imitate_steps and self.recurrent:
            raise ConfigError("imitate_steps clones the walk into a feed-forward policy; recurrent=true has an LSTM it "
                              "would not fit: set one of them back")
        if self.imitate_steps and self.action_repeat > 1:
            raise ConfigError(f"imitate_steps clones the walk frame by frame; action_repeat={self.action_repeat} "
                              "decides every few frames: set one of them back")
        if self.learn_real and self.collect_steps % self.action_repeat:
            raise ConfigError(f"learn_real=true spends collect_steps={self.collect_steps} real steps in whole "
                              f"decisions of action_repeat={self.action_repeat} frames: make it a multiple")
        if self.prior_kl > 0 and not (self.imitate_steps > 0 and self.ent_coef > 0):
            raise ConfigError(f"prior_kl={self.prior_kl} holds the policy near round 0's clone of the walk: it needs "
                              f"imitate_steps > 0 (got {self.imitate_steps}) and ent_coef > 0 (got {self.ent_coef})")
        if self.prior_free_in_view and not (self.prior_kl > 0 and self.sight_reward > 0):
            raise ConfigError(f"prior_free_in_view=true lets the prior go where the sighting probe sees the goal: it "
                              f"needs prior_kl > 0 (got {self.prior_kl}) and sight_reward > 0 for the probe (got "
                              f"{self.sight_reward})")
        if self.reward_starts + self.sight_starts > 1:
            raise ConfigError(f"reward_starts={self.reward_starts} and sight_starts={self.sight_starts} are shares of "
                              "the dreams' start windows: together at most 1")
        if self.dream_envs * self.n_steps < self.batch_size:
            raise ConfigError(f"batch_size={self.batch_size} exceeds one PPO rollout of dream_envs x n_steps = "
                              f"{self.dream_envs * self.n_steps}")
        if self.sight_reward > 0 and self.sight_probe and not (Path(self.sight_probe) / "sight.json").is_file():
            raise ConfigError(f"sight_probe={self.sight_probe!r} is not a sighting probe (no sight.json; train one "
                              "with `python -m agents.sighting`, or leave it empty to learn one from the loop's real "
                              "steps)")
        starts = [self.dream_starts] if self.dream_starts else []
        for key, paths in (("wm_data", self.wm_data), ("dream_starts", starts)):
            for d in paths:
                if not (Path(d) / "manifest.json").is_file():
                    raise ConfigError(f"{key}: {d} is not a dataset (no manifest.json)")
        if self.wm_goal_share > 0:
            if self.wm_steps == 0:
                raise ConfigError(f"wm_goal_share={self.wm_goal_share} shapes the world-model fine-tunes, but "
                                  "wm_steps=0 runs none")
            for d in self.wm_data:                  # the loop's own steps keep their poses; earlier data may not
                if not _has_poses(d):
                    raise ConfigError(f"wm_goal_share={self.wm_goal_share} needs the poses of every wm_data episode; "
                                      f"{d} has none (collect a maze env anew and tokenize it with this version)")


def _has_poses(root: str) -> bool:
    """Whether the first train episode of dataset ``root`` keeps its poses (they are kept for all or none)."""
    from envs.dataset import EpisodeDataset

    ds = EpisodeDataset(root, "train")
    try:
        return len(ds) > 0 and "poses" in ds.arrays(0, ("poses",))
    finally:
        ds.close()


# -- collection ---------------------------------------------------------------------------------------
def collect_real(actor: Any, env_id: str, env_kwargs: dict, steps: int, episode_steps: int, seed: int,
                 out: Path) -> dict[str, Any]:
    """Play ``steps`` real steps with ``actor`` in training mazes (even maze seeds) and write them to ``out``
    as a frames dataset (every episode in the train split). Returns the steps, reaches and episodes."""
    import envs  # noqa: F401  (registers the env ids)
    from envs.heldout import env_action_meanings, play_maze, training_options

    env = gym.make(env_id, **{**env_kwargs, "max_episode_steps": episode_steps})
    meanings = env_action_meanings(env)
    rng = np.random.default_rng(seed)
    episodes, done = [], 0
    try:
        while done < steps:
            ep_seed, maze = int(rng.integers(2**30)), int(rng.integers(2**29))
            if hasattr(actor, "reset"):
                actor.reset(ep_seed)
            play = play_maze(env, min(episode_steps, steps - done), ep_seed, actor, training_options(env, maze),
                             on_end="stop")
            done += len(play.frames) - 1
            attrs = {"seed": ep_seed, "maze_seed": play.maze_seed, "layout": play.layout}
            episodes.append(real_episode(play.frames, play.actions, play.rewards, play.terminated,
                                         attrs if play.goal is None else {**attrs, "goal": play.goal}, play.poses))
    finally:
        env.close()
    return write_real_steps(out, episodes, env_id, env_kwargs, meanings, {"policy": "rl", "seed": seed, "steps": steps})


def real_episode(frames, actions, rewards, terminated: bool, attrs: dict, poses=None) -> dict[str, Any]:
    """One real episode in the frames dataset's layout (t: the reset's frame first; its action -1, reward 0),
    ended by termination on its last frame or cut short; every one in the train split; ``poses`` (t, 3) where the
    env reports them (``sight_starts`` reads them)."""
    n = len(frames)
    ended = np.zeros(n, bool)
    ended[-1] = terminated
    return {"frames": np.stack(frames), "actions": np.asarray(actions, np.int16),
            "rewards": np.asarray(rewards, np.float32), "terminated": ended, "truncated": np.zeros(n, bool),
            "attrs": {**attrs, "split": "train"}, **({} if poses is None else {"poses": np.asarray(poses, np.float32)})}


def write_real_steps(out: Path, episodes: list[dict], env_id: str, env_kwargs: dict, meanings: tuple[str, ...],
                     config: dict) -> dict[str, Any]:
    """Write a round's real episodes (:func:`real_episode`) to ``out`` as a frames dataset, atomically; returns
    the steps, reaches and episodes."""
    from envs.common.files import atomic_dir
    from envs.dataset import write_dataset

    for i, ep in enumerate(episodes):
        ep["id"] = i
    with atomic_dir(out) as tmp:
        write_dataset(tmp, episodes, "train", "frames", env_id, meanings, episodes_per_shard=16,
                      config={"env": env_id, "env_kwargs": env_kwargs, **config})
    return {"steps": sum(len(ep["frames"]) - 1 for ep in episodes),
            "reaches": int(sum((ep["rewards"] > 0).sum() for ep in episodes)), "episodes": len(episodes)}


def real_rollouts(steps: int) -> tuple[int, int, int]:
    """(envs, n_steps, updates) with envs x n_steps x updates == ``steps`` exactly, so PPO learning from the real
    steps spends the round's budget to the step: envs 4 where it divides (else 8, 5, ..., 1), n_steps nearest 256."""
    for envs in (4, 8, 5, 2, 6, 3, 7, 1):
        if steps % envs == 0 and steps // envs >= 2:
            q = steps // envs
            n = min((d for d in range(2, q + 1) if q % d == 0), key=lambda d: abs(np.log(d / 256)))
            return envs, n, q // n
    raise ConfigError(f"collect_steps={steps} must be >= 2 to learn from real steps")


class EpisodeRecorder(gym.Wrapper):
    """Appends every episode the wrapped env plays to ``episodes`` (:func:`real_episode`; seed -1 where the vector
    env reset it without one), when the next reset or :meth:`flush` comes."""

    def __init__(self, env: gym.Env, episodes: list[dict]):
        super().__init__(env)
        self.episodes = episodes
        self._ep: dict | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.flush()
        obs, info = self.env.reset(seed=seed, options=options)
        self._ep = {"frames": [obs], "actions": [-1], "rewards": [0.0], "terminated": False,
                    "poses": [info.get("pose")],
                    "attrs": {"seed": -1 if seed is None else int(seed), "maze_seed": int(info.get("maze_seed", -1)),
                              "layout": str(info.get("layout", ""))}}
        if "goal" in info:
            self._ep["attrs"]["goal"] = np.asarray(info["goal"], np.float32)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        ep = self._ep
        ep["frames"].append(obs)
        ep["actions"].append(int(action))
        ep["rewards"].append(float(reward))
        ep["poses"].append(info.get("pose"))
        ep["terminated"] = bool(terminated)
        return obs, reward, terminated, truncated, info

    def flush(self) -> None:
        """Keep the episode in progress (if it took a step) and start none."""
        from envs.heldout import stack_poses

        ep, self._ep = self._ep, None
        if ep is not None and len(ep["frames"]) >= 2:
            self.episodes.append(real_episode(ep["frames"], ep["actions"], ep["rewards"], ep["terminated"],
                                              ep["attrs"], stack_poses(ep["poses"])))


def learn_real(cfg: RLConfig, meta: dict, policy_dir: str, seed: int, out: Path, policy_out: Path,
               probe: str | None = None, prior: str | None = None) -> dict[str, Any]:
    """PPO continues from ``policy_dir`` on ``cfg.collect_steps`` real steps in training mazes (``cfg``'s PPO
    settings, rollouts from :func:`real_rollouts`), and those very steps, which the policy collected as it learnt,
    are written to ``out`` as :func:`collect_real` writes its own; the policy goes to ``policy_out``; with the
    sighting bonus on, ``probe`` pays it here as in the dream; ``prior``: :func:`make_ppo`'s. Returns the steps,
    reaches and episodes."""
    from agents.policy import save_policy

    n_envs, n_steps, updates = real_rollouts(cfg.collect_steps // cfg.action_repeat)   # in decisions
    episodes: list[dict] = []
    recorders: list[EpisodeRecorder] = []

    def record(env: gym.Env) -> gym.Env:
        recorders.append(EpisodeRecorder(env, episodes))
        return recorders[-1]

    venv = cfg.repeat(with_sight_bonus(real_vec_env(meta["env_id"], meta["env_kwargs"], cfg.episode_steps, n_envs,
                                                     seed, record), cfg, probe))
    try:
        c = dataclasses.replace(cfg, n_steps=n_steps, batch_size=min(cfg.batch_size, n_envs * n_steps), seed=seed)
        model = make_ppo(venv, c, policy_dir, prior=prior, probe=probe)
        model.learn(total_timesteps=n_envs * n_steps * updates)
        for rec in recorders:
            rec.flush()
    finally:
        venv.close()
    done = write_real_steps(out, episodes, meta["env_id"], meta["env_kwargs"], meta["meanings"],
                            {"policy": "rl+ppo", "seed": seed, "steps": cfg.collect_steps})
    save_policy(model.policy, policy_out, meta["env_id"], meta["env_kwargs"], meta["meanings"],
                {"real_steps": done["steps"], "reaches": done["reaches"], "rollouts": [n_envs, n_steps, updates]},
                frame_stack=cfg.frame_stack, temperature=cfg.act_temperature, action_repeat=cfg.action_repeat)
    return done


# -- one round ----------------------------------------------------------------------------------------
def world_meta(checkpoint: str) -> dict[str, Any]:
    """The checkpoint's env (id, kwargs, action meanings), its tokenizer folder and its reward threshold."""
    from worldmodel.common.assets import SHIPPED_TOKENIZER
    from worldmodel.model.checkpoint import (
        calibrated_threshold,
        read_reward_calibration,
        read_world_model_meta,
        resolve_checkpoint,
    )

    path = resolve_checkpoint(checkpoint)
    meta = read_world_model_meta(path)
    cal = read_reward_calibration(path, meta)
    return {"path": str(path), "env_id": meta.get("env_id") or "DMLabMaze-v0",
            "env_kwargs": dict(meta.get("env_kwargs") or {}), "meanings": tuple(meta["action_space"]["meanings"]),
            "tokenizer": str(path / SHIPPED_TOKENIZER),
            "reward_threshold": calibrated_threshold(cal)}


def with_sight_bonus(venv, cfg: RLConfig, probe: str | None):
    """``venv`` paying ``cfg.sight_reward`` when the goal first comes into view (as ``probe`` sees it), or ``venv``
    itself when the bonus is off."""
    if cfg.sight_reward <= 0 or probe is None:
        return venv
    from agents.sighting import sight_bonus

    return sight_bonus(venv, probe, cfg.sight_reward)


def round_probe(cfg: RLConfig, out: Path, r: int) -> str | None:
    """The sighting probe of round ``r`` (None when the bonus is off): ``cfg.sight_probe``, or one learnt from the
    real frames of rounds 0..r (their poses, goals and layouts say where the goal was in view), kept in
    ``rounds/rNN/sight/`` and reused when the round resumes; None while those frames never show the goal."""
    if cfg.sight_reward <= 0:
        return None
    if cfg.sight_probe:
        return cfg.sight_probe
    from agents.sighting import NothingInView, train_sight_probe

    probe = out / "rounds" / f"r{r:02d}" / "sight"
    if not (probe / "sight.json").is_file():
        try:
            train_sight_probe([str(out / "rounds" / f"r{i:02d}" / "frames") for i in range(r + 1)], str(probe),
                              seed=cfg.seed * 1000 + r, threads=None, progress=False)
        except NothingInView:
            return None
    return str(probe)


def make_ppo(env, cfg: RLConfig, init_policy: str | None, device: str = "cpu", prior: str | None = None,
             probe: str | None = None):
    """SB3 PPO over ``env`` (its frames stacked ``cfg.frame_stack`` deep) with ``cfg``'s settings, starting from
    the policy folder ``init_policy`` if any; ``cfg.recurrent``: sb3-contrib's RecurrentPPO (CnnLstmPolicy);
    ``prior`` (a policy folder): its loss also pays ``cfg.prior_kl`` x KL(policy || prior), with
    ``cfg.prior_free_in_view`` not where the sighting probe ``probe`` sees the goal."""
    from stable_baselines3.common.vec_env import VecFrameStack

    from envs.common.files import load_state_dict_strict

    if cfg.frame_stack > 1:                         # y x (k c), oldest first; zeros before an episode's first
        env = VecFrameStack(env, cfg.frame_stack, channels_order="last")
    if cfg.recurrent:
        from sb3_contrib import RecurrentPPO as PPO

        kind = "CnnLstmPolicy"
    else:
        from stable_baselines3 import PPO

        kind = "CnnPolicy"
        if prior is not None:
            from agents.imitation import PriorKLPolicy

            kind = PriorKLPolicy
    model = PPO(kind, env, n_steps=cfg.n_steps, batch_size=cfg.batch_size, n_epochs=cfg.epochs,
                learning_rate=cfg.lr, ent_coef=cfg.ent_coef, gamma=cfg.gamma, seed=cfg.seed, device=device,
                verbose=0)
    if init_policy is not None:
        from agents.policy import load_policy

        policy, _ = load_policy(init_policy)
        load_state_dict_strict(model.policy, policy.state_dict(), f"{init_policy}/policy.safetensors")
    if prior is not None:
        from agents.imitation import with_prior

        with_prior(model, prior, cfg.prior_kl, cfg.ent_coef, probe if cfg.prior_free_in_view else None)
    return model


def count_rewards(data: str, split: str) -> int:
    """Frames with a reward in ``data``'s ``split`` (a round's own real steps may hold none)."""
    from envs.dataset import EpisodeDataset

    ds = EpisodeDataset(data, split=split)
    try:
        return len(ds.reward_frames())
    finally:
        ds.close()


def train_in_dream(cfg: RLConfig, world: str, context_tokens: str, init_policy: str | None,
                   reward_threshold: float, probe: str | None = None, prior: str | None = None) -> tuple[Any, dict]:
    """PPO for ``cfg.dream_steps`` imagined frames in the batched dream of ``world``, dreams started from
    windows of ``context_tokens``, a reward where the head's probability exceeds ``reward_threshold`` (and the
    sighting bonus where ``probe`` first sees the goal, if on; ``prior``: :func:`make_ppo`'s); returns (the SB3
    model, stats)."""
    from agents.ppo_dream import make_dream_vec_env
    from agents.sighting import SightBonus

    reward_starts = cfg.reward_starts if count_rewards(context_tokens, "train") else 0.0
    env = make_dream_vec_env(world, cfg.dream_envs, vector=True, data=context_tokens, split="train",
                             max_episode_steps=cfg.horizon, steps_per_frame=cfg.steps_per_frame or None,
                             end_on_reward=cfg.end_on_reward, reward_starts=reward_starts,
                             reward_threshold=reward_threshold,
                             reward_lead=cfg.reward_lead, sight_starts=cfg.sight_starts, threads=None)
    bonus = with_sight_bonus(env, cfg, probe)
    env = cfg.repeat(bonus)
    try:
        model = make_ppo(env, cfg, init_policy, prior=prior, probe=probe)
        t0 = time.perf_counter()
        model.learn(total_timesteps=max(cfg.dream_steps // cfg.action_repeat, 1))   # decisions of k frames each
        seconds = time.perf_counter() - t0
        eps = list(model.ep_info_buffer)
        return model, {"dream_frames": int(model.num_timesteps) * cfg.action_repeat, "dream_seconds": round(seconds, 1),
                       "reward_starts": reward_starts, "reward_threshold": reward_threshold,
                       "dream_return": float(np.mean([e["r"] for e in eps])) if eps else 0.0,
                       "dream_episodes": len(eps),
                       **({"dream_sightings": int(bonus.sightings)} if isinstance(bonus, SightBonus) else {})}
    finally:
        env.close()


def finetune_world(cfg: RLConfig, init: str, data: list[str], out: Path, seed: int) -> str:
    """Fine-tune ``init`` on ``data`` for ``cfg.wm_steps`` (resumable in ``out``); returns the new checkpoint.
    The reward head learns from clean frames only, which plain frame-level masking hardly ever shows, so half
    the clips keep a clean past (as the dream queries the head: a clean context and a committed frame).
    The head keeps the reward labelling its starting weights learnt (``reward_early``): its meaning stays."""
    from worldmodel.model.checkpoint import read_world_model_meta
    from worldmodel.training.loop import TrainConfig, train

    early = int((read_world_model_meta(init).get("train_config") or {}).get("reward_early", 0))

    tc = TrainConfig(data=data, out=str(out), init=init, steps=cfg.wm_steps, lr=cfg.wm_lr,
                     warmup_steps=min(20, cfg.wm_steps // 4), cooldown_steps=cfg.wm_steps // 3, eval_every=0,
                     ckpt_every=max(25, cfg.wm_steps // 4), reward_weight=0.5, reward_pos_weight=cfg.reward_pos_weight,
                     reward_early=early, clean_context_prob=0.5, goal_share=cfg.wm_goal_share,
                     seed=seed, threads=cfg.threads, tensorboard=False, progress=False)
    train(tc)
    return str(out)


def run_round(cfg: RLConfig, r: int, out: Path, world: str, policy_dir: str | None, meta: dict) -> dict[str, Any]:
    """Round ``r``: collect, fine-tune, train in the dream, evaluate; returns its log row."""
    from agents.imitation import imitate
    from agents.policy import goal_rate, policy_actor, save_policy
    from envs.policies import make_policy
    from worldmodel.tokenizer.tokenize import tokenize_dataset

    rdir = out / "rounds" / f"r{r:02d}"
    prior = str(out / "rounds" / "r00" / "policy_imitated") if cfg.prior_kl > 0 else None
    t0 = time.perf_counter()
    if policy_dir is not None and cfg.learn_real:
        collected = learn_real(cfg, meta, policy_dir, cfg.seed * 1000 + r, rdir / "frames", rdir / "policy_real",
                               round_probe(cfg, out, r - 1), prior)
        policy_dir = str(rdir / "policy_real")      # the dream continues from what the real steps taught
    else:
        actor: Any = (make_policy(cfg.first_policy, meta["meanings"], seed=cfg.seed) if policy_dir is None
                      else policy_actor(policy_dir)[0])
        collected = collect_real(actor, meta["env_id"], meta["env_kwargs"], cfg.collect_steps, cfg.episode_steps,
                                 cfg.seed * 1000 + r, rdir / "frames")
    tokenize_dataset(rdir / "frames", meta["tokenizer"], rdir / "tokens", overwrite=True, progress=False)
    t1 = time.perf_counter()
    if cfg.wm_steps > 0:
        data = [*cfg.wm_data, *(str(out / "rounds" / f"r{i:02d}" / "tokens") for i in range(r + 1))]
        world = finetune_world(cfg, world, data, rdir / "world", cfg.seed * 1000 + r)
    t2 = time.perf_counter()
    # a fine-tune's weights carry no calibration of their own: the start checkpoint's threshold holds throughout
    threshold = cfg.reward_threshold if cfg.reward_threshold is not None else meta["reward_threshold"]
    if policy_dir is None and cfg.imitate_steps > 0:  # the exploration prior: PPO starts from a clone of the walk
        if not (rdir / "policy_imitated" / "policy.json").is_file():
            imitate(rdir / "frames", rdir / "policy_imitated", meta, cfg.imitate_steps, cfg.frame_stack,
                    seed=cfg.seed * 1000 + r)
        policy_dir = str(rdir / "policy_imitated")
    model, dream = train_in_dream(cfg, world, cfg.dream_starts or str(rdir / "tokens"), policy_dir, threshold,
                                  round_probe(cfg, out, r), prior)
    t3 = time.perf_counter()
    real = goal_rate(cfg.actor(model.policy), meta["env_id"], meta["env_kwargs"], cfg.eval_episodes, cfg.eval_seed,
                     cfg.episode_steps, actor_seed=cfg.seed)
    row = {"round": r, "real_steps": (r + 1) * cfg.collect_steps, "eval_reaches_per_1000": real["reaches_per_1000"],
           "eval_reaches": real["reaches"], "eval_steps": real["steps"],
           "collect_reaches_per_1000": 1000.0 * collected["reaches"] / max(collected["steps"], 1),
           **dream, "collect_s": round(t1 - t0, 1), "world_s": round(t2 - t1, 1), "dream_s": round(t3 - t2, 1),
           "eval_s": round(time.perf_counter() - t3, 1)}
    save_policy(model.policy, rdir / "policy", meta["env_id"], meta["env_kwargs"], meta["meanings"],
                {**row, "world": world}, frame_stack=cfg.frame_stack, temperature=cfg.act_temperature,
                action_repeat=cfg.action_repeat)
    return {**row, "world": world}


def rl_curves(path: Path, rows: list[dict[str, Any]]) -> None:
    """Real goal reaches per 1,000 steps (held-out mazes) against real steps."""
    import matplotlib.pyplot as plt

    from envs.common.video import save_figure

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([x["real_steps"] for x in rows], [x["eval_reaches_per_1000"] for x in rows], "o-", label="dream-trained")
    ax.set_xlabel("real env steps")
    ax.set_ylabel("goal reaches / 1000 steps (held-out)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def check_out(cfg: RLConfig) -> None:
    """Refuse ``cfg.out`` if it holds anything but an RL run with the same settings (only rounds, threads and
    progress may change when resuming); a setting newer than the run's ``rl.json`` held its default there."""
    from envs.common.files import read_json

    out = Path(cfg.out)
    if (out / "rl.json").exists():
        settings = dataclasses.asdict(cfg)
        before = {**dataclasses.asdict(RLConfig()), **read_json(out / "rl.json", "RL run settings")["settings"]}
        differ = {k for k in settings if k not in ("rounds", "progress", "threads") and before[k] != settings[k]}
        if differ:
            raise ConfigError(f"{out} holds an RL run with other settings ({', '.join(sorted(differ))}); pick another "
                              "out= (only rounds, threads and progress may change when resuming)")
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"out={out} exists and is not an RL run; pick another out=")


def run_rl(cfg: RLConfig) -> dict[str, Any]:
    """Run (or resume) the loop; returns the per-round rows (also in ``OUT/rl_log.csv``) and the paths."""
    import shutil

    from tqdm.auto import tqdm

    from envs.common.files import read_json, write_json
    from worldmodel.common.runlog import write_csv
    from worldmodel.common.threads import governor

    cfg.validate()
    try:
        import stable_baselines3  # noqa: F401
        if cfg.recurrent:
            import sb3_contrib  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"maskflow rl trains PPO with {e.name}, which is not installed: "
                          "pip install -e '.[rl]' (make install does)") from None
    governor(cfg.threads)
    meta = world_meta(cfg.checkpoint)               # a bad checkpoint fails before any work
    check_out(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "rl.json", {"format": "maskflow-rl-run", "settings": dataclasses.asdict(cfg),
                                 "world_model": meta["path"]})
    rows, world, policy_dir = [], meta["path"], None
    bar = tqdm(range(cfg.rounds), desc="rl rounds", disable=not cfg.progress, dynamic_ncols=True)
    for r in bar:
        marker = out / "rounds" / f"r{r:02d}" / ROUND_FILE
        if marker.exists():
            row = read_json(marker, "RL round record")
        else:
            row = run_round(cfg, r, out, world, policy_dir, meta)
            write_json(marker, row)
        rows.append(row)
        world, policy_dir = row["world"], str(out / "rounds" / f"r{r:02d}" / "policy")
        bar.set_postfix(real_steps=row["real_steps"], reaches=f"{row['eval_reaches_per_1000']:.2f}/1k")
        write_csv(out / "rl_log.csv", rows, LOG_FIELDS)
        rl_curves(out / "curves.png", rows)
    if policy_dir is not None:                      # OUT/policy: the latest round's, for `maskflow play`
        tmp = out / "policy.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(policy_dir, tmp)
        shutil.rmtree(out / "policy", ignore_errors=True)
        tmp.rename(out / "policy")
    return {"out": str(out), "rounds": rows, "policy": str(out / "policy"), "curves": str(out / "curves.png")}


def run_rl_cli(cfg: Any) -> dict[str, Any]:
    """CLI entry (``maskflow rl``): compose → :class:`RLConfig` → :func:`run_rl`; prints a summary."""
    from omegaconf import OmegaConf

    result = run_rl(RLConfig(**OmegaConf.to_container(cfg, resolve=True)))
    last = result["rounds"][-1]
    print(json.dumps({"out": result["out"], "policy": result["policy"], "real_steps": last["real_steps"],
                      "eval_reaches_per_1000": round(last["eval_reaches_per_1000"], 2)}, indent=1))
    return result


# -- baselines (rows (b)-(d) of the RL issue) ---------------------------------------------------------
def ppo_real(env_id: str, env_kwargs: dict, steps: int, cfg: RLConfig, envs_n: int = 8, episode_steps: int = 300,
             marks: tuple[int, ...] = (), on_mark: Callable[[int, Any], None] | None = None):
    """SB3 PPO trained on the real env (training mazes) for ``steps`` real steps, ``cfg``'s PPO settings.
    ``on_mark(n, model)`` is called at each of ``marks`` (and at ``steps``) with the model as one run of
    ``steps = n`` would have left it: learning continues in pieces that collect and train exactly as one
    ``learn`` would (constant learning rate and clip range), and the global RNGs are restored after each call."""
    venv = cfg.repeat(real_vec_env(env_id, env_kwargs, episode_steps, envs_n, cfg.seed))
    k = cfg.action_repeat                           # PPO counts decisions, the budget frames
    try:
        c = dataclasses.replace(cfg, n_steps=max(cfg.n_steps, 128), batch_size=min(cfg.batch_size, envs_n * 128))
        model = make_ppo(venv, c, None)
        for mark in sorted({*(m for m in marks if 0 < m < steps), steps}):
            if mark // k > model.num_timesteps:     # learn() runs until num_timesteps >= its total: the same rollouts
                model.learn(total_timesteps=mark // k - model.num_timesteps,
                            reset_num_timesteps=model.num_timesteps == 0)
            if on_mark is not None:
                with rngs_kept():
                    on_mark(mark, model)
        return model
    finally:
        venv.close()


@contextlib.contextmanager
def rngs_kept():
    """Restore Python's, NumPy's and torch's global RNG states on exit (SB3 draws from all three)."""
    import random

    import torch

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def real_vec_env(env_id: str, env_kwargs: dict, episode_steps: int, n: int, seed: int,
                 wrap: Callable[[gym.Env], gym.Env] | None = None):
    """SB3's VecMonitor(DummyVecEnv) over ``n`` real envs of training mazes (env i draws its mazes from seed
    ``seed * 7919 + i``), each optionally wrapped by ``wrap``: where PPO learns from real steps."""
    from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

    import envs  # noqa: F401  (registers the env ids)

    def make(i: int):
        def thunk():
            env = TrainingMazes(gym.make(env_id, **{**env_kwargs, "max_episode_steps": episode_steps}),
                                seed * 7919 + i)
            return wrap(env) if wrap is not None else env
        return thunk

    return VecMonitor(DummyVecEnv([make(i) for i in range(n)]))


class TrainingMazes(gym.Wrapper):
    """A real maze env whose every reset draws a training maze (even maze seed), never a held-out one."""

    def __init__(self, env: gym.Env, seed: int):
        super().__init__(env)
        self.rng = np.random.default_rng(seed)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        options = {**dict(options or {}), "maze_seed": 2 * int(self.rng.integers(2**29))}
        return self.env.reset(seed=seed, options=options)


def baselines(checkpoint: str = "default", steps: int = 50000, seeds: tuple[int, ...] = (0, 1, 2),
              eval_episodes: int = 50, eval_seed: int = 100000, cfg: RLConfig | None = None,
              marks: tuple[int, ...] = ()) -> dict[str, Any]:
    """Rows (b) PPO on the real env for ``steps`` real steps, (c) the exploration random walk and (d) uniform
    random actions, scored like the loop (goal reaches per 1,000 steps on the same held-out mazes for every row
    and seed: paired), per seed. (b) is also scored at each of ``marks`` (its learning curve, ``curve``: the
    policy as a run of that many real steps would have left it)."""
    from agents.policy import goal_rate
    from envs.policies import make_policy

    meta = world_meta(checkpoint)
    cfg = cfg or RLConfig()
    rows: dict[str, list[dict]] = {"ppo_real": [], "random_walk": [], "uniform": []}
    for s in seeds:
        for name in ("random_walk", "uniform"):
            actor = make_policy(name, meta["meanings"], seed=s)
            rows[name].append({"seed": s, **goal_rate(actor, meta["env_id"], meta["env_kwargs"], eval_episodes,
                                                       eval_seed, cfg.episode_steps, actor_seed=s)})
        rows["ppo_real"].append(scored_ppo_real(meta, steps, dataclasses.replace(cfg, seed=s), marks,
                                                eval_episodes, eval_seed))
    return rows


def scored_ppo_real(meta: dict, steps: int, cfg: RLConfig, marks: tuple[int, ...], eval_episodes: int,
                    eval_seed: int) -> dict[str, Any]:
    """Row (b) for seed ``cfg.seed``: PPO on the real env for ``steps`` real steps, scored in the held-out mazes
    at ``steps`` and at each of ``marks`` (``curve``); ``train_s`` leaves the scoring out."""
    from agents.policy import goal_rate

    curve: list[dict] = []
    t0 = time.perf_counter()
    scoring = [0.0]

    def score(n: int, model: Any) -> None:
        t = time.perf_counter()
        curve.append({"real_steps": n, **goal_rate(cfg.actor(model.policy), meta["env_id"], meta["env_kwargs"],
                                                    eval_episodes, eval_seed, cfg.episode_steps,
                                                    actor_seed=cfg.seed)})
        scoring[0] += time.perf_counter() - t

    ppo_real(meta["env_id"], meta["env_kwargs"], steps, cfg, marks=marks, on_mark=score)
    return {"seed": cfg.seed, "train_s": round(time.perf_counter() - t0 - scoring[0], 1), **curve[-1],
            "curve": [{"real_steps": c["real_steps"], "reaches_per_1000": c["reaches_per_1000"]} for c in curve]}
