"""Trajectory collection: run a policy in a maze env, in parallel, into a resumable HDF5 dataset.

Episodes are planned up front (id, split, seed, maze seed), grouped into shards, and run through a
``gymnasium.vector.AsyncVectorEnv(context="spawn")`` (GL contexts do not survive a fork). Each shard
is written atomically and recorded in the manifest, so a killed collection resumes at the first
unfinished shard with no duplicate or missing episode. Maze seeds are even for train and odd for
test, so no test maze appears in training.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import ClassVar

import gymnasium as gym
import numpy as np

from envs.common.config_check import SEED, Check, CliKey, at_least, check_config, one_of, within
from envs.common.errors import ConfigError, DatasetError
from envs.common.files import check_replaceable, is_temp_name, remove_entries, write_json
from envs.dataset import (
    DATASET_ENTRIES,
    add_shard,
    is_dataset,
    load_manifest,
    new_manifest,
    shard_is_valid,
    shard_name,
    write_manifest,
    write_shard,
)
from envs.policies import POLICIES, coverage, make_policy

# what `maskflow collect` writes in out=: only these may `overwrite=true` delete
COLLECT_OUTPUTS = (*DATASET_ENTRIES, "summary.json", "contact_sheet.png", "episode_000.mp4")


@dataclasses.dataclass
class CollectConfig:
    """Settings of one collection.

    Attributes:
        env: a registered env id (``DMLabMaze-v0`` by default).
        policy: ``random_walk`` (held actions, DMLab-dataset style), ``uniform``, ``goal_seeking`` (an oracle
            that walks to the goal part of the time: data with many goal reaches for the reward head), or
            ``revisit`` (a random walk with turn-away-and-back excursions: data for memory beyond the window).
        episodes: total episodes (train + test).
        steps: steps per episode (frames per episode = steps + 1).
        workers: parallel env processes (1 = in-process).
        seed: root seed; everything (mazes, spawns, actions) follows from it.
        test_fraction: share of episodes in the test split (held-out mazes).
        episodes_per_shard: episodes per HDF5 shard (the unit of resumption).
        overwrite: replace an existing dataset with different settings.
        env_kwargs: extra keyword arguments for ``gym.make``.
    """

    out: str                        # dataset directory (resumed if it holds the same collection)
    env: str = "DMLabMaze-v0"       # any registered id: DMLabMaze-v0, DMLabMazeLarge-v0, MiniWorldMaze64-v0, ...
    policy: str = "random_walk"     # random_walk (held actions) | uniform | goal_seeking (oracle, for reward
                                    # data) | revisit (turns away and back, for memory)
    episodes: int = 16              # train + test episodes
    steps: int = 300                # steps per episode (frames = steps + 1)
    workers: int = 2                # env processes (AsyncVectorEnv, spawn); 1 = in-process
    seed: int = 0
    test_fraction: float = 0.125    # held-out test mazes, in [0, 1] (1 = a test-only evaluation set)
    episodes_per_shard: int = 8     # unit of atomic writes and resumption
    overwrite: bool = False         # replace an existing, different dataset
    env_kwargs: dict = dataclasses.field(default_factory=dict)  # extra gym.make kwargs, e.g. env_kwargs.maze=large

    # keys `maskflow collect` reads beside the fields (outputs only: not part of the dataset's identity)
    CLI_KEYS: ClassVar[dict[str, CliKey]] = {
        "video": CliKey(bool, True, "also write an mp4 of the first training episode")}
    # allowed ranges and choices (types come from the annotations above; see envs.common.config_check)
    CHECKS: ClassVar[dict[str, Check]] = {
        "policy": one_of(*POLICIES), "episodes": at_least(1), "steps": at_least(1), "workers": at_least(1),
        "seed": SEED, "test_fraction": within(0, 1, note="1 = a test-only set of held-out mazes"),
        "episodes_per_shard": at_least(1),
    }

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first key of a wrong type or out of its range."""
        check_config(self)


@dataclasses.dataclass(frozen=True)
class EpisodePlan:
    id: int
    split: str
    seed: int
    maze_seed: int


def plan_episodes(cfg: CollectConfig) -> list[EpisodePlan]:
    """Deterministic episode list: test episodes first get odd maze seeds, train ones even."""
    n_test = int(round(cfg.episodes * cfg.test_fraction))
    if cfg.episodes >= 2 and cfg.test_fraction > 0:
        n_test = max(1, n_test)
    ss = np.random.SeedSequence(cfg.seed)
    seeds = ss.generate_state(2 * cfg.episodes, dtype=np.uint32).reshape(cfg.episodes, 2)
    plans = []
    for i in range(cfg.episodes):
        split = "test" if i >= cfg.episodes - n_test else "train"
        maze = (int(seeds[i, 1]) >> 1) * 2 + (split == "test")
        plans.append(EpisodePlan(i, split, int(seeds[i, 0]), maze))
    return plans


def shard_plan(cfg: CollectConfig) -> list[tuple[str, list[EpisodePlan]]]:
    """[(relative shard file, its episodes)] in a fixed order."""
    out = []
    for split in ("train", "test"):
        eps = [p for p in plan_episodes(cfg) if p.split == split]
        for j, i in enumerate(range(0, len(eps), cfg.episodes_per_shard)):
            out.append((shard_name(split, j), eps[i: i + cfg.episodes_per_shard]))
    return out


def _make_env(env_id: str, kwargs: dict):
    def thunk():
        os.environ.setdefault("LP_NUM_THREADS", "1")  # llvmpipe: one thread per env process
        import envs  # noqa: F401  (registers ids inside spawned workers)

        kw = dict(kwargs)
        steps = kw.pop("max_episode_steps", None)  # gym.make would consume it for a TimeLimit wrapper
        env = gym.make(env_id, **kw).unwrapped
        if steps is not None:
            env.max_episode_steps = steps
        return env
    return thunk


def _action_meanings(env) -> tuple[str, ...]:
    m = getattr(env, "action_meanings", None)
    return tuple(m) if m is not None else tuple(str(i) for i in range(env.action_space.n))


def run_group(vec, plans: list[EpisodePlan], policy_name: str, steps: int, meanings) -> list[dict]:
    """Run one episode per sub-env (fewer plans than envs are padded and dropped)."""
    n = vec.num_envs
    padded = plans + [plans[-1]] * (n - len(plans))
    vec.set_attr("fixed_maze_seed", [p.maze_seed for p in padded])
    obs, info = vec.reset(seed=[p.seed for p in padded])
    policies = [make_policy(policy_name, meanings, seed=p.seed + 1) for p in padded]
    L = steps + 1
    frames = np.zeros((n, L, *obs.shape[1:]), np.uint8)
    frames[:, 0] = obs
    actions = np.full((n, L), -1, np.int16)
    rewards = np.zeros((n, L), np.float32)
    term = np.zeros((n, L), bool)
    trunc = np.zeros((n, L), bool)
    poses = np.zeros((n, L, 3), np.float32)
    has_pose = "pose" in info
    clear = np.asarray(info["clearance"]) if "clearance" in info else None
    if has_pose:
        poses[:, 0] = info["pose"]
    layouts = list(info["layout"]) if "layout" in info else [""] * n
    goals = np.asarray(info["goal"]) if "goal" in info else None     # fixed per episode (it respawns the agent)
    ended = np.zeros(n, bool)
    length = np.full(n, L)
    for t in range(1, L):
        a = np.array([pol.act(None, _policy_info(poses, clear, k, t - 1, has_pose, layouts, goals))
                      for k, pol in enumerate(policies)])
        obs, r, te, tr, info = vec.step(a)
        live = ~ended
        frames[live, t] = obs[live]
        actions[live, t] = a[live]
        rewards[live, t] = r[live]
        term[live, t], trunc[live, t] = te[live], tr[live]
        if has_pose:
            poses[live, t] = info["pose"][live]
        if clear is not None:
            clear = np.asarray(info["clearance"])
        newly = live & (te | tr)
        length[newly] = t + 1
        ended |= newly
        if ended.all():
            break
    out = []
    for k, p in enumerate(plans):
        n_k = int(length[k])
        ep = {"id": p.id, "frames": frames[k, :n_k], "actions": actions[k, :n_k], "rewards": rewards[k, :n_k],
              "terminated": term[k, :n_k], "truncated": trunc[k, :n_k],
              "attrs": {"seed": p.seed, "maze_seed": p.maze_seed, "layout": layouts[k], "split": p.split}}
        if goals is not None:       # (x, z): with the poses and layout, what the agent could see of the goal
            ep["attrs"]["goal"] = np.asarray(goals[k], np.float32)
        if has_pose:
            ep["poses"] = poses[k, :n_k]
        out.append(ep)
    return out


def _policy_info(poses, clear, k: int, t: int, has_pose: bool, layouts: list[str], goals) -> dict:
    info = {"pose": poses[k, t]} if has_pose else {}
    if clear is not None:
        info["clearance"] = clear[k]
    if goals is not None and layouts[k]:           # for the goal-seeking oracle
        info["goal"], info["layout"] = goals[k], layouts[k]
    return info


def _check_existing(out: Path, cfg: CollectConfig, settings: dict) -> dict | None:
    """The manifest to resume, or None for a fresh start; refuses to clobber a different dataset."""
    if not (out / "manifest.json").exists():
        if out.exists() and any(out.iterdir()) and not cfg.overwrite:
            raise DatasetError(f"{out} exists and is not a MaskFlow dataset; pick another out= "
                               "or pass overwrite=true to replace it")
        return None
    manifest = load_manifest(out)
    if manifest["config"] == settings:
        return manifest
    if not cfg.overwrite:
        raise DatasetError(f"{out} already holds a dataset collected with different settings "
                           f"({manifest['config']}); pass overwrite=true to replace it, or pick another out=")
    return None


def collect(cfg: CollectConfig, progress: bool = True) -> dict:
    """Collect (or resume) a dataset into ``cfg.out``; returns a summary dict (also in summary.json)."""
    from tqdm.auto import tqdm

    import envs  # noqa: F401

    cfg.validate()
    if cfg.env not in gym.registry:
        raise ConfigError(f"unknown env {cfg.env!r}; registered maze envs: {', '.join(envs.ENV_IDS)}")
    out = Path(cfg.out)
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "workers", "overwrite")}
    manifest = _check_existing(out, cfg, settings)
    if manifest is None and out.exists() and cfg.overwrite:     # replace only a dataset collect wrote
        check_replaceable(out, own=lambda p: is_dataset(p, "frames"), what="a frames dataset (manifest.json)",
                          allowed=lambda name: name in COLLECT_OUTPUTS or is_temp_name(name))
        remove_entries(out, [e.name for e in out.iterdir()])
    kwargs = {"max_episode_steps": cfg.steps, **cfg.env_kwargs}
    probe = _make_env(cfg.env, kwargs)()
    meanings, obs_shape = _action_meanings(probe), probe.observation_space.shape
    probe.close()
    if manifest is None:
        manifest = new_manifest("frames", cfg.env, meanings, obs_shape, settings)
    todo = [(rel, plans) for rel, plans in shard_plan(cfg)
            if not any(s["file"] == rel and shard_is_valid(out, s) for s in manifest["shards"])]
    total = cfg.episodes * (cfg.steps + 1)
    done_frames = total - sum(len(p) for _, p in todo) * (cfg.steps + 1)
    t0 = time.time()
    new_frames = 0
    cov = []
    if todo:
        fns = [_make_env(cfg.env, kwargs) for _ in range(cfg.workers)]
        vec = (gym.vector.AsyncVectorEnv(fns, context="spawn") if cfg.workers > 1
               else gym.vector.SyncVectorEnv(fns))
        bar = tqdm(total=total, initial=done_frames, unit="frame", desc="collect", disable=not progress)
        try:
            for rel, plans in todo:
                episodes = []
                for i in range(0, len(plans), cfg.workers):
                    group = run_group(vec, plans[i: i + cfg.workers], cfg.policy, cfg.steps, meanings)
                    episodes += group
                    n = sum(len(e["frames"]) for e in group)
                    new_frames += n
                    bar.update(n)
                write_shard(out / rel, episodes, "frames", cfg.env, meanings)
                add_shard(out, manifest, rel, plans[0].split, episodes)
                cov += [episode_coverage(e) for e in episodes if e["attrs"]["layout"]]
        finally:
            bar.close()
            vec.close()
    manifest["complete"] = True
    write_manifest(out, manifest)
    seconds = time.time() - t0
    summary = {"out": str(out), "episodes": cfg.episodes, "frames": total,
               "new_frames": new_frames, "seconds": round(seconds, 2),
               "frames_per_s": round(new_frames / seconds, 1) if new_frames else None,
               "mean_coverage_new_episodes": round(float(np.mean(cov)), 3) if cov else None}
    write_json(out / "summary.json", summary)
    return summary


def episode_coverage(ep: dict) -> float:
    """Fraction of the maze's free cells visited by the episode's poses."""
    grid = ep["attrs"]["layout"].split("\n")
    free = [(r, c) for r, row in enumerate(grid) for c, ch in enumerate(row) if ch != "*"]
    cells = [(int(z), int(x)) for x, z, _ in ep["poses"]]
    return coverage(free, cells)


def run_collect(cfg) -> dict:
    """CLI entry: ``maskflow collect env=... episodes=N steps=300 workers=W seed=S out=DIR``."""
    from omegaconf import OmegaConf

    from envs.common.video import contact_sheet, write_video
    from envs.dataset import EpisodeDataset, load_manifest

    c = CollectConfig(out=cfg.out, env=cfg.env, policy=cfg.policy, episodes=cfg.episodes, steps=cfg.steps,
                      workers=cfg.workers, seed=cfg.seed, test_fraction=cfg.test_fraction,
                      episodes_per_shard=cfg.episodes_per_shard, overwrite=cfg.overwrite,
                      env_kwargs=OmegaConf.to_container(cfg.env_kwargs) if cfg.env_kwargs else {})
    summary = collect(c)
    splits = {sh["split"] for sh in load_manifest(c.out)["shards"]}
    ep = EpisodeDataset(c.out, "train" if "train" in splits else "test").episode(0)   # test_fraction=1: all test
    contact_sheet(ep["frames"], Path(c.out) / "contact_sheet.png", every=max(1, len(ep["frames"]) // 48))
    if cfg.video:
        write_video(Path(c.out) / "episode_000.mp4", ep["frames"], fps=15, scale=4)
    speed = f"{summary['frames_per_s']} frames/s" if summary["new_frames"] else "already complete, nothing new"
    print(f"collected {summary['episodes']} episodes ({summary['frames']} frames) into {c.out}; "
          f"{speed}; contact sheet: {Path(c.out) / 'contact_sheet.png'}")
    return summary
