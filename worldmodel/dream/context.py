"""Real context for dreams: what really happened, from a dataset's held-out episodes or played live.

Two shapes of it. A :class:`RealEpisode` is a whole real stream in frames, for ``maskflow dream`` and the
action check to compare a dream against (:func:`dataset_episode`, :func:`live_episode`). A
:class:`Context` is the start of one dream in tokens, drawn at every reset of the dream envs by
:class:`DatasetContext` (random windows of a dataset's episodes) or :class:`LiveContext` (a held-out
maze played by a collection policy, :func:`envs.heldout.play_heldout`).

Axis letters: f frames, m context frames, h w token grid, y x pixels, c colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from envs.common.errors import CheckpointError, ConfigError, DatasetError
from envs.heldout import env_action_meanings, play_heldout
from worldmodel.tokenizer.codec import decode_tokens, encode_frames


@dataclass
class RealEpisode:
    """The real side: frames (f y x c) uint8, the action that led to each frame (f,) (-1 = none)."""

    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    source: str


@dataclass
class Context:
    """Real context of one dream: tokens (m h w) long, the actions that led to them (m,) long (-1 = none)."""

    tokens: torch.Tensor
    actions: torch.Tensor
    source: str


def open_live_env(env_id: str, env_kwargs: dict, what: str = "live env") -> gym.Env:
    """``gymnasium.make(env_id, **env_kwargs)`` (ids registered by :mod:`envs`), or a :class:`ConfigError`."""
    import envs  # noqa: F401  (registers the env ids)

    try:
        return gym.make(env_id, **env_kwargs)
    except gym.error.Error as e:
        raise ConfigError(f"cannot open the {what} {env_id!r} with {env_kwargs}: {e}") from e


def live_episode(env_id: str, env_kwargs: dict, length: int, seed: int, policy: str) -> RealEpisode:
    """Play ``length`` frames of a fresh test-maze episode (odd maze seed) with an exploration policy."""
    if env_id.startswith("DMLabMaze") and "max_episode_steps" not in env_kwargs:
        env_kwargs = {**env_kwargs, "max_episode_steps": length}      # one unbroken episode in one maze
    env = open_live_env(env_id, env_kwargs)
    try:
        # at an episode's end the stream goes on in the same maze: the dream has no episode end
        play = play_heldout(env, length - 1, seed, policy, on_end="reset")
    finally:
        env.close()
    return RealEpisode(play.frames, play.actions, play.rewards.astype(np.float32),
                       f"live {env_id} maze_seed={play.maze_seed} seed={seed} policy={policy}")


def dataset_episode(root: str, split: str, index: int, tokenizer) -> RealEpisode:
    """Episode ``index`` of a frames dataset (or a token dataset, decoded by the tokenizer)."""
    from envs.dataset import EpisodeDataset

    ds = EpisodeDataset(root, split=split)
    try:
        if not 0 <= index < len(ds):
            raise ConfigError(f"episode={index} is out of range: {root} has {len(ds)} {split} episodes")
        ep = ds.episode(index)
    finally:
        ds.close()
    if "frames" in ep:
        frames = np.asarray(ep["frames"])
    else:
        frames = decode_tokens(tokenizer, np.asarray(ep["tokens"]))
    return RealEpisode(frames, np.asarray(ep["actions"], np.int64), np.asarray(ep["rewards"], np.float32),
                       f"{root} {split} episode {index}")


class DatasetContext:
    """Context windows cut at random from the episodes of a frames or token dataset.

    With ``reward_starts`` = p > 0, a share p of the windows end 1 … ``reward_lead`` frames before a real
    reward in the data (a goal reach), so that a dream started there can reach it within a short horizon:
    RL in the dream then sees rewards often enough to learn the approach (prioritised start states).
    With ``sight_starts`` = q > 0, a further share q end where the goal was in view earlier in the window but
    is not at its last frame (from the episodes' poses, goal and layout; no reach inside the window). The
    model holds what its window saw, so a dream that turns back shows the goal where it really was: search
    that the dream can score, where a view it never saw could only be made up.
    """

    def __init__(self, root: str, split: str, length: int, meanings: tuple[str, ...], tokenizer,
                 grid: tuple[int, int], reward_starts: float = 0.0, reward_lead: int = 16,
                 sight_starts: float = 0.0):
        from envs.dataset import EpisodeDataset

        if isinstance(reward_starts, bool) or not (isinstance(reward_starts, (int, float)) and 0 <= reward_starts <= 1):
            raise ConfigError(f"reward_starts={reward_starts!r} must be a share in [0, 1] (0 = uniform windows)")
        if isinstance(reward_lead, bool) or not (isinstance(reward_lead, (int, np.integer)) and reward_lead >= 1):
            raise ConfigError(f"reward_lead={reward_lead!r} must be an integer >= 1 (frames before a reward)")
        if isinstance(sight_starts, bool) or not (isinstance(sight_starts, (int, float))
                                                  and 0 <= sight_starts <= 1 - reward_starts):
            raise ConfigError(f"sight_starts={sight_starts!r} must be a share in [0, 1 - reward_starts = "
                              f"{1 - reward_starts:g}] (0 = none; the two shares of start windows add up)")
        self.ds = EpisodeDataset(root, split=split)
        if self.ds.action_meanings != tuple(meanings):
            self.ds.close()
            raise CheckpointError(f"the checkpoint was trained on actions {list(meanings)} but dataset {root} "
                                  f"uses {list(self.ds.action_meanings)}; dream from a dataset of the same env")
        self.root, self.split, self.length, self.tokenizer, self.grid = root, split, length, tokenizer, grid
        self.reward_starts, self.reward_lead = float(reward_starts), int(reward_lead)
        # (episode, frame) of every reward with at least one frame before it to end a window on
        self.rewarded: list[tuple[int, int]] = []
        if self.reward_starts > 0:
            self.rewarded = [(i, j) for i, j in self.ds.reward_frames() if j >= 1]
            if not self.rewarded:
                self.ds.close()
                raise ConfigError(f"reward_starts={reward_starts}: dataset {root} ({split}) holds no rewards "
                                  "to start dreams before; use a dataset with goal reaches or reward_starts=0")
        self.sight_starts = float(sight_starts)
        # (episode, last context frame) of every window that saw the goal but does not at its end
        self.sighted: list[tuple[int, int]] = self._sighted_ends() if self.sight_starts > 0 else []
        if self.sight_starts > 0 and not self.sighted:
            self.ds.close()
            raise ConfigError(f"sight_starts={sight_starts}: no window of dataset {root} ({split}) sees the goal and "
                              "then loses it; use a dataset whose agent turns away from the goal, or sight_starts=0")

    def _sighted_ends(self) -> list[tuple[int, int]]:
        """(episode, frame) of every frame without the goal in view whose window (``length`` frames up to it) saw
        the goal before and holds no reach (:func:`envs.maze.dmlab.goal_lost_ends`); reads poses and rewards only."""
        from envs.maze.dmlab import goal_lost_ends, goal_seen

        ends = []
        try:
            for i in range(len(self.ds)):
                ep = self.ds.arrays(i, ("poses", "rewards"))
                seen = goal_seen(ep, f"sight_starts (dataset {self.root}, {self.split})")
                reached = np.asarray(ep["rewards"]) > 0 if "rewards" in ep else np.zeros(len(seen), bool)
                ends += [(i, int(j)) for j in goal_lost_ends(seen, reached, self.length)]
        except DatasetError:
            self.ds.close()
            raise
        return ends

    def draw(self, rng: np.random.Generator) -> Context:
        """A random window of ``length`` frames (shorter only when the episode is) of a random episode, or
        (a share ``reward_starts`` of draws) one ending 1 … ``reward_lead`` frames before a reward, or (a share
        ``sight_starts``) one that saw the goal and has lost it."""
        u = rng.random() if self.reward_starts > 0 or self.sight_starts > 0 else 1.0
        if u < self.reward_starts + self.sight_starts:
            if u < self.reward_starts:
                i, j = self.rewarded[int(rng.integers(len(self.rewarded)))]
                end = j - int(rng.integers(1, min(self.reward_lead, j) + 1))     # last context frame, >= 0
            else:
                i, end = self.sighted[int(rng.integers(len(self.sighted)))]
            ep = self.ds.episode(i)
            obs = ep[self.ds.kind]
            m = min(self.length, end + 1)
            s = end + 1 - m
        else:
            i = int(rng.integers(len(self.ds)))
            ep = self.ds.episode(i)
            obs = ep[self.ds.kind]
            m = min(self.length, len(obs))
            s = int(rng.integers(len(obs) - m + 1))
        if self.ds.kind == "frames":
            tokens = encode_frames(self.tokenizer, np.asarray(obs[s:s + m]))
        else:
            tokens = torch.as_tensor(np.asarray(obs[s:s + m], np.int64))
            if tuple(tokens.shape[1:]) != self.grid:
                raise CheckpointError(f"token dataset {self.root} has {tuple(tokens.shape[1:])} grids but the model "
                                      f"dreams {self.grid}; it was tokenized with another tokenizer")
        actions = torch.as_tensor(np.asarray(ep["actions"][s:s + m], np.int64))
        return Context(tokens, actions, f"{self.root} {self.split} episode {i} frames {s}..{s + m - 1}")

    def close(self) -> None:
        self.ds.close()


class LiveContext:
    """Context played live in the real env (one instance kept open): a held-out maze (odd maze seed,
    as in :func:`live_episode`) explored by a collection policy for m frames."""

    def __init__(self, env_id: str, env_kwargs: dict, length: int, meanings: tuple[str, ...], policy: str,
                 tokenizer):
        from envs.policies import make_policy

        if env_id.startswith("DMLabMaze"):          # one unbroken episode must fit the context
            limit = max(length + 1, int(env_kwargs.get("max_episode_steps", 0)))
            env_kwargs = {**env_kwargs, "max_episode_steps": limit}
        self.env = open_live_env(env_id, env_kwargs, "live context env")
        real = env_action_meanings(self.env)
        if getattr(self.env.action_space, "n", None) != len(meanings) or real != tuple(meanings):
            self.env.close()
            raise CheckpointError(f"the checkpoint was trained on actions {list(meanings)} but the live env {env_id} "
                                  f"has {self.env.action_space} {list(real)}; use a checkpoint of that env")
        self.env_id, self.length, self.tokenizer, self.policy = env_id, length, tokenizer, policy
        make_policy(policy, real)                   # fail now on an unknown policy name

    def draw(self, rng: np.random.Generator) -> Context:
        """``length`` frames of a new held-out maze (fewer if its episode ends: two are never spliced)."""
        seed = int(rng.integers(2**30))
        play = play_heldout(self.env, self.length - 1, seed, self.policy, on_end="stop")
        return Context(encode_frames(self.tokenizer, play.frames), torch.as_tensor(play.actions, dtype=torch.long),
                       f"live {self.env_id} maze_seed={play.maze_seed} seed={seed}")

    def close(self) -> None:
        self.env.close()
