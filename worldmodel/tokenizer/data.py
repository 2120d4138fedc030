"""Frames for tokenizer training: a frames dataset read into memory, and random batches from it.

Axis letters: n frames, b batch, c channels, y x pixel rows/columns.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from envs.common.errors import DatasetError


def load_frames_for_training(root: str | os.PathLike, max_train_frames: int = 0, holdout_episodes: int = 4
                             ) -> tuple[np.ndarray, list[dict[str, np.ndarray]], list[str] | None, dict[str, Any]]:
    """Read a frames dataset: all train frames into one uint8 array (n, y, x, 3); test episodes as held-out
    episodes (frames + actions). Without a test split the last ``holdout_episodes`` train episodes are held out.
    Returns (train frames, held-out episodes, action names, provenance)."""
    from envs.dataset import EpisodeDataset

    train_ds = EpisodeDataset(root, "train")
    if getattr(train_ds, "kind", "frames") != "frames":
        raise DatasetError(f"{root} is a {train_ds.kind!r} dataset; train-tokenizer needs a frames dataset")
    try:
        test_ds = EpisodeDataset(root, "test")
        test_eps = [test_ds.episode(i) for i in range(len(test_ds))]
        held = 0
    except (DatasetError, FileNotFoundError):
        held = min(holdout_episodes, len(train_ds) - 1)
        if held < 1:
            raise DatasetError(f"{root} has no test split and too few train episodes to hold one out") from None
        warnings.warn(f"{root} has no test split; holding out the last {held} train episodes", stacklevel=2)
        test_eps = [train_ds.episode(i) for i in range(len(train_ds) - held, len(train_ds))]
    n_train = len(train_ds) - held
    parts, total = [], 0
    for i in range(n_train):
        f = train_ds.episode(i)["frames"]
        if max_train_frames:
            f = f[: max(0, max_train_frames - total)]
        if len(f):
            parts.append(np.asarray(f, dtype=np.uint8))
            total += len(f)
    if not parts:
        raise DatasetError(f"{root} has no training frames")
    frames = np.concatenate(parts)
    val = [{"frames": np.asarray(e["frames"]), "actions": np.asarray(e["actions"])} for e in test_eps]
    prov = {"data": str(Path(root).resolve()), "train_episodes": n_train, "test_episodes": len(val)}
    return frames, val, list(getattr(train_ds, "action_meanings", None) or []) or None, prov


def sample_batch(frames: np.ndarray, batch: int, rng: np.random.Generator, flip: bool,
                 device: torch.device, pairs: bool = False) -> torch.Tensor:
    """Random uint8 frames (n, y, x, 3) -> float batch (b, 3, y, x) in [-1, 1], channels-last.

    ``pairs``: the batch is b // 2 frames i and then their successors i + 1, in the same order (frame i + 1 of
    the concatenated episodes; the few pairs across an episode boundary differ everywhere, which the stability
    term's pixel weighting ignores), each pair flipped alike; b must be even."""
    if pairs:
        first = np.sort(rng.integers(0, len(frames) - 1, size=batch // 2))
        idx = np.concatenate([first, first + 1])
    else:
        idx = np.sort(rng.integers(0, len(frames), size=batch))
    x = np.ascontiguousarray(frames[idx])
    if flip:
        m = rng.random(batch // 2 if pairs else batch) < 0.5
        if pairs:
            m = np.concatenate([m, m])
        x[m] = x[m, :, ::-1]
    t = rearrange(torch.from_numpy(x).to(device), "b y x c -> b c y x")
    return t.float().div(127.5).sub(1.0)
