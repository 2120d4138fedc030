"""Token clips for world-model training: the whole split in memory, sharded and shuffled per epoch.

A token dataset is small (16×16 uint16 per frame: 48k frames are 25 MB), so every episode of a
split is loaded once into one array and a batch is a single fancy-index — well under a millisecond,
so data loading never sits on the critical path and needs no worker processes competing for the
CPU cores the model trains on.

Sampling is DistributedSampler-style: the clip windows (every k-frame window of every episode) are
permuted with a generator seeded by (seed, epoch); the global batch of step s is positions
[s·B, (s+1)·B) of the concatenated epoch permutations, and rank r takes rows [r·B/R, (r+1)·B/R).
A batch therefore depends only on (seed, step), which makes resuming and multi-process runs exact.

With ``return_share`` > 0 (:class:`ClipSampler`) a share of each global batch comes instead from the clips
that *end on a return frame*, a view the clip already holds 16 or more frames earlier (``return_gap``):
a random window of an episode seldom holds both ends of a long loop (a 30-frame circle fits a 32-frame
window at 2 of its ~270 positions), so without them the far lookup that loops need is hardly trained.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from envs.common.errors import DatasetError
from envs.dataset import EpisodeDataset
from envs.loops import return_frames
from worldmodel.objective.loss import ClipBatch
from worldmodel.tokenizer.files import same_encoder


class TokenClips:
    """All k-frame windows of one split of one token dataset, or of several trained on as one.

    Several datasets must share what gives tokens and actions their meaning: the tokenizer's encoder
    (its decoder may differ; see tokenizer_identity), the token grid, the env and its action list; a
    mismatch is a :class:`DatasetError` naming
    both datasets. A dataset without episodes in ``split`` is skipped when others have some.

    ``reward_early`` > 0 also labels the ``reward_early`` frames before each reward of an episode with that
    reward: in respawn mode the reward frame itself is the jump to a new view, which a dream seldom draws,
    while the frame before shows the goal close up (docs/results.md, "Rewards the dream gets right").
    """

    def __init__(self, root: str | os.PathLike | Sequence[str | os.PathLike], split: str, clip_len: int,
                 reward_early: int = 0):
        roots = [Path(r) for r in ([root] if isinstance(root, (str, os.PathLike)) else root)]
        if not roots:
            raise DatasetError("no token dataset given")
        firsts = []
        for r in roots:
            try:
                ds = EpisodeDataset(r, split)                       # reads the manifest only
            except DatasetError:
                if len(roots) == 1:
                    raise
                continue                                    # no episodes in this split: others may have some
            if ds.kind != "tokens":
                raise DatasetError(f"{r} is a {ds.kind!r} dataset; `maskflow train` needs a token dataset "
                                   "(make one with `maskflow tokenize data=FRAMES checkpoint=TOKENIZER out=...`)")
            if firsts:
                _check_compatible(firsts[0], ds)                    # before any episode is read
            firsts.append(ds)
        if not firsts:
            raise DatasetError(f"none of {[str(r) for r in roots]} has episodes in split {split!r}")
        eps, self._spans = [], []                  # (dataset, its episodes, its frames) in concatenation order
        for d in firsts:
            mine = [d.episode(i) for i in range(len(d))]
            d.close()
            eps += mine
            self._spans.append((d.root.name, len(mine), sum(len(e["tokens"]) for e in mine)))
        ds = firsts[0]
        self.roots = [d.root for d in firsts]
        self.manifest = ds.manifest
        kwargs = [d.manifest.get("source", {}).get("env_kwargs", {}) for d in firsts]
        # the live maze settings a dream env should use: known only when every dataset agrees
        self.env_kwargs = dict(kwargs[0]) if all(k == kwargs[0] for k in kwargs) else {}
        self.num_actions = ds.num_actions
        self.action_meanings = ds.action_meanings
        self.clip_len = clip_len
        # what tells where each episode's goal is in view (maze token datasets keep the poses), with its raw
        # reaches (the raw reward frames, before reward_early) and id: read by goal_return_starts
        self._views = [{"attrs": e["attrs"], "id": e["id"], "reached": _field(e, "rewards", 0, np.float32) > 0,
                        **({"poses": e["poses"]} if "poses" in e else {})} for e in eps]
        self.tokens = np.concatenate([e["tokens"] for e in eps])          # uint16 on disk: kept compact
        n = len(self.tokens)
        self.actions = np.concatenate([_field(e, "actions", -1, np.int64) for e in eps])
        self.rewards = np.concatenate([_early(_field(e, "rewards", 0, np.float32), reward_early) for e in eps])
        self.terminated = np.concatenate([_field(e, "terminated", False, bool) for e in eps])
        starts = np.cumsum([0] + [len(e["tokens"]) for e in eps])
        # (n,) index of each frame's episode's first frame
        self.episode_start = np.repeat(starts[:-1], [len(e["tokens"]) for e in eps]).astype(np.int64)
        self.starts = np.concatenate([np.arange(s, s + len(e["tokens"]) - clip_len + 1)
                                      for s, e in zip(starts, eps)]).astype(np.int64)
        assert len(self.actions) == n
        if len(self.starts) == 0:
            longest = max(len(e["tokens"]) for e in eps)
            names = ", ".join(str(r) for r in self.roots)
            raise DatasetError(f"no episode of {names} ({split}) has {clip_len} frames (longest: {longest}); "
                               f"use a shorter clip_len")

    @functools.cached_property
    def fingerprint(self) -> list[dict]:
        """What identifies each dataset's split for a resumed run: folder name, size, and a sha256 of its
        tokens and actions in order (the clip indices a run's batch order refers to depend on all three).
        Computed on first use (the training set's, once per run)."""
        out, start = [], 0
        for name, episodes, frames in self._spans:
            h = hashlib.sha256(np.ascontiguousarray(self.tokens[start:start + frames]).tobytes())
            h.update(np.ascontiguousarray(self.actions[start:start + frames]).tobytes())
            out.append({"dataset": name, "episodes": episodes, "frames": frames, "sha256": h.hexdigest()})
            start += frames
        return out

    @property
    def token_grid(self) -> tuple[int, int]:
        return tuple(self.tokens.shape[1:])

    def __len__(self) -> int:
        return len(self.starts)

    def max_token(self) -> int:
        return int(self.tokens.max())

    def return_starts(self, gap: int) -> np.ndarray:
        """First frames (r,) of the clips that end on a return frame: one equal to a frame ``gap`` to
        clip_len − 1 frames earlier in its episode and to none closer, and different from the frame before
        (:func:`envs.loops.return_frames`), so the clip holds the view it returns to."""
        if not 1 <= gap < self.clip_len:
            raise DatasetError(f"return frames {gap}+ frames after their view need clip_len > {gap}, "
                               f"got clip_len={self.clip_len}")
        g, _ = return_frames(self.tokens, self.episode_start, self.clip_len - 1, gap)
        return (g - (self.clip_len - 1)).astype(np.int64)

    def goal_return_starts(self) -> np.ndarray:
        """First frames (r,) of the clips that end where the goal comes back into view: the last frame sees the
        goal's centre, and the clip's other frames end where the goal is lost (seen earlier, no reach since:
        :func:`envs.maze.dmlab.goal_lost_ends`), nor is the last frame a reach. Read off each episode's poses,
        goal and layout: the box the clip lost, drawn where it really is."""
        from envs.maze.dmlab import goal_lost_ends, goal_seen

        names = ", ".join(str(r) for r in self.roots)
        k, out = self.clip_len, []
        for start, ep in zip(np.unique(self.episode_start), self._views, strict=True):   # each episode's first frame
            seen = goal_seen(ep, f"goal_share ({names})")
            reached = ep["reached"]
            j = goal_lost_ends(seen, reached, k - 1)                    # the clip's first k - 1 frames end at j
            j = j[(j >= k - 2) & (j + 1 < len(seen))]                   # full clips only
            j = j[seen[j + 1] & ~reached[j + 1]]                        # in view again at the clip's last frame
            out.append(start + j - (k - 2))
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)

    def batch(self, windows: np.ndarray) -> ClipBatch:
        """Clips for window indices ``windows`` (b,)."""
        return self.batch_at(self.starts[windows])

    def batch_at(self, first: np.ndarray) -> ClipBatch:
        """Clips whose first frames are ``first`` (b,), indices into the concatenated frames."""
        idx = first[:, None] + np.arange(self.clip_len)[None]
        return ClipBatch(torch.from_numpy(self.tokens[idx].astype(np.int64)), torch.from_numpy(self.actions[idx]),
                         torch.from_numpy(self.rewards[idx]), torch.from_numpy(self.terminated[idx]))


def _early(rewards: np.ndarray, n: int) -> np.ndarray:
    """``rewards`` (f,) of one episode with each reward copied onto the ``n`` frames before it."""
    out = rewards.copy()
    for k in range(1, min(n, len(rewards) - 1) + 1):
        out[:-k] = np.maximum(out[:-k], rewards[k:])
    return out


def _check_compatible(a: EpisodeDataset, b: EpisodeDataset) -> None:
    """Raise :class:`DatasetError` unless token datasets ``a`` and ``b`` can be trained on together."""
    problems = []
    if a.env_id != b.env_id:
        problems.append(f"env {a.env_id!r} vs {b.env_id!r}")
    if a.action_meanings != b.action_meanings:
        problems.append(f"actions {list(a.action_meanings)} vs {list(b.action_meanings)}")
    grid_a, grid_b = (list(d.manifest.get("obs_shape") or []) for d in (a, b))
    if grid_a != grid_b:
        problems.append(f"token grid {grid_a} vs {grid_b}")
    ta, tb = (d.manifest.get("tokenizer") or {} for d in (a, b))
    if not same_encoder(ta, tb) or ta.get("vocab_size") != tb.get("vocab_size"):
        problems.append("different tokenizers (their encoders differ), so the same token id means different things")
    if problems:
        raise DatasetError(f"token datasets {a.root} and {b.root} cannot be trained on together: "
                           + "; ".join(problems))


def _field(ep: dict, key: str, fill, dtype) -> np.ndarray:
    n = len(ep["tokens"])
    return np.asarray(ep[key], dtype=dtype) if key in ep else np.full(n, fill, dtype=dtype)


class ShardedSampler:
    """Deterministic, epoch-shuffled, rank-sharded window indices for each training step."""

    def __init__(self, num_windows: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1):
        if global_batch % world_size:
            raise DatasetError(f"batch_size {global_batch} must be divisible by the {world_size} processes")
        self.n, self.global_batch, self.seed = num_windows, global_batch, seed
        self.rank, self.world_size = rank, world_size
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            # keep the current and the previous epoch: a batch may straddle the boundary
            self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def global_indices(self, step: int) -> np.ndarray:
        """The global batch of window indices for ``step`` (same on every rank)."""
        pos = step * self.global_batch + np.arange(self.global_batch)
        epochs, offs = pos // self.n, pos % self.n
        return np.array([self._perm(int(e))[o] for e, o in zip(epochs, offs)], dtype=np.int64)

    def indices(self, step: int) -> np.ndarray:
        """This rank's share of the global batch of ``step``."""
        local = self.global_batch // self.world_size
        return self.global_indices(step)[self.rank * local: (self.rank + 1) * local]


class ClipSampler:
    """Each step's clips as first-frame positions: a :class:`ShardedSampler` over every window and, with
    ``return_share`` > 0, the last round(share·B) rows (at least 1) of each global batch drawn by a second
    one over the clips that end on a return frame (:meth:`TokenClips.return_starts`); with ``goal_share`` > 0,
    round(share·B) rows (at least 1) before those from a third one over the clips that end where the goal comes
    back into view (:meth:`TokenClips.goal_return_starts`). All depend only on (seed, step), so resumed and
    multi-process runs stay exact."""

    def __init__(self, clips: TokenClips, global_batch: int, seed: int, rank: int = 0, world_size: int = 1,
                 return_share: float = 0.0, return_gap: int = 16, goal_share: float = 0.0):
        if global_batch % world_size:
            raise DatasetError(f"batch_size {global_batch} must be divisible by the {world_size} processes")
        self.clips, self.rank, self.local = clips, rank, global_batch // world_size
        for name, share in (("return_share", return_share), ("goal_share", goal_share)):
            if share > 0 and global_batch < 2:
                raise DatasetError(f"{name}={share} needs batch_size >= 2 (an ordinary clip and a chosen clip per "
                                   "batch)")
        n_goal = min(global_batch - 1, max(1, round(goal_share * global_batch))) if goal_share > 0 else 0
        self.goal = clips.goal_return_starts() if n_goal else np.zeros(0, np.int64)
        if n_goal and len(self.goal) == 0:
            names = ", ".join(str(r) for r in clips.roots)
            raise DatasetError(f"goal_share={goal_share}, but no training clip of {names} ends where the goal comes "
                               "back into view; collect with policy=goal_seeking, or set goal_share=0")
        self.goals = ShardedSampler(len(self.goal), n_goal, seed + 104729) if n_goal else None
        global_batch -= n_goal              # the goal rows come first after the ordinary ones; returns stay last
        n_ret = min(global_batch - 1, max(1, round(return_share * global_batch))) if return_share > 0 else 0
        self.ret = clips.return_starts(return_gap) if n_ret else np.zeros(0, np.int64)
        if n_ret and len(self.ret) == 0:
            names = ", ".join(str(r) for r in clips.roots)
            raise DatasetError(f"return_share={return_share}, but no training clip of {names} ends on a return "
                               f"frame (a view seen {return_gap} to {clips.clip_len - 1} frames earlier); collect "
                               "with policy=revisit, or set return_share=0")
        self.main = ShardedSampler(len(clips), global_batch - n_ret, seed)
        self.returns = ShardedSampler(len(self.ret), n_ret, seed + 7919) if n_ret else None
        # global batch rows of the return clips (the last ones)
        self.return_rows = slice(global_batch + n_goal - n_ret, global_batch + n_goal)

    def local_rows(self, rows: slice) -> slice:
        """The part of the global batch ``rows`` held by this rank, as a slice of its local batch."""
        lo, hi = self.rank * self.local, (self.rank + 1) * self.local
        a, b = max(rows.start, lo), min(rows.stop, hi)
        return slice(a - lo, b - lo) if a < b else slice(0, 0)

    def starts(self, step: int) -> np.ndarray:
        """This rank's first-frame positions (B / world,) for ``step``."""
        first = self.clips.starts[self.main.global_indices(step)]
        if self.goals is not None:
            first = np.concatenate([first, self.goal[self.goals.global_indices(step)]])
        if self.returns is not None:
            first = np.concatenate([first, self.ret[self.returns.global_indices(step)]])
        return first[self.rank * self.local: (self.rank + 1) * self.local]
