"""The two sides an eval compares: the checkpoints that dream, with the experiments they run, and the real
videos their dreams are scored against, cut from a dataset's held-out episodes.

Axis letters: n videos, f frames, y x pixels, c colour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from envs.common.errors import ConfigError
from worldmodel.tokenizer.codec import decode_tokens


@dataclass
class Checkpoint:
    """A loaded world model with what the rows need to describe it."""

    role: str            # "main" | "compare"
    label: str
    model: torch.nn.Module
    tokenizer: Any
    meta: dict
    masking: str         # training masking mode: frame | constant
    scheduler: str       # κ schedule the model was trained with

    @property
    def window(self) -> int:
        return int(self.model.cfg.max_frames)


@dataclass(frozen=True)
class Experiment:
    """One dreaming setting on one checkpoint, scored at ``horizons`` (dreamed frames)."""

    name: str
    role: str
    mode: str
    sampler: str
    steps: int
    context: int
    stride: int
    horizons: tuple[int, ...]
    horizon_key: str         # the config key its horizons come from (named in errors)


def load_checkpoint(path: str, device: torch.device, role: str, label: str = "") -> Checkpoint:
    """Load a checkpoint that carries its tokenizer (frames must be shown and scored)."""
    from worldmodel.model.checkpoint import load_world_model

    model, tokenizer, meta = load_world_model(path, device=device)
    key = "checkpoint" if role == "main" else "compare_checkpoint"
    if tokenizer is None:
        raise ConfigError(f"{key}: {meta['path']} carries no tokenizer, so its dreams cannot be scored as frames")
    train = meta.get("train_config", {})
    masking = str(train.get("masking", "frame"))
    return Checkpoint(role, label or f"{role} ({masking} masking)", model, tokenizer, meta, masking,
                      str(train.get("scheduler", "sigmoid")))


def describe(ck: Checkpoint) -> dict[str, Any]:
    """What the report says about a checkpoint."""
    c = ck.model.cfg
    return {"label": ck.label, "path": ck.meta["path"], "training_masking": ck.masking, "scheduler": ck.scheduler,
            "window": c.max_frames, "token_grid": list(c.token_grid), "vocab_size": c.vocab_size, "dim": c.dim,
            "depth": c.depth, "temporal": c.temporal, "parameters": sum(p.numel() for p in ck.model.parameters()),
            "train_step": ck.meta.get("train_step")}


@dataclass
class RealVideos:
    """The real side: frames (n f y x c) uint8 and actions (n f) from ``dream_start - max context`` on."""

    frames: np.ndarray
    actions: np.ndarray
    dream_start: int         # local index of the first dreamed frame (= the largest context)
    picks: list[dict]
    kind: str
    # the env the episodes were played in: (env id, gym.make kwargs), from envs.dataset.recorded_env
    env: tuple[str, dict] = field(default_factory=lambda: ("", {}))


def choose_videos(lengths: list[int], need: int, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(episode, window start) of ``n`` windows of ``need`` frames: round robin over the long-enough
    episodes in random order, at random starts (distinct within an episode while there is room)."""
    eligible = [i for i, length in enumerate(lengths) if length >= need]
    order = [eligible[j] for j in rng.permutation(len(eligible))]
    counts = {e: 0 for e in order}
    for i in range(n):
        counts[order[i % len(order)]] += 1
    picks = []
    for e in order:
        if counts[e]:
            slots = lengths[e] - need + 1
            # every start once (random order) before any repeats
            starts = np.concatenate([rng.permutation(slots) for _ in range(-(-counts[e] // slots))])[:counts[e]]
            picks += [(e, int(s)) for s in np.sort(starts)]
    return picks


def load_videos(data: str, split: str, num_videos: int, seed: int, plan: list[Experiment], k: int,
                tokenizer: Any) -> RealVideos:
    """Cut ``num_videos`` videos long enough for every experiment of ``plan`` from the ``split`` episodes of
    dataset ``data``; a clear :class:`ConfigError` naming the horizon key when episodes are too short."""
    from envs.dataset import EpisodeDataset, recorded_env

    m_max = max(e.context for e in plan)
    h_max = max(h for e in plan for h in e.horizons)
    need = m_max + h_max
    ds = EpisodeDataset(data, split=split)
    try:
        lengths = ds.lengths()
        if max(lengths) < need:
            keys = sorted({e.horizon_key for e in plan if h_max in e.horizons})
            raise ConfigError(f"{' / '.join(keys)}: the longest horizon {h_max // k}x{k} = {h_max} dreamed frames plus "
                              f"{m_max} context frames needs episodes of {need} frames, but the longest {split} "
                              f"episode in {data} has {max(lengths)}; lower {' / '.join(keys)}")
        rng = np.random.default_rng(seed)
        picks = choose_videos(lengths, need, num_videos, rng)
        frames, actions, info = [], [], []
        for e, s in picks:
            ep = ds.episode(e)
            sl = slice(s, s + need)
            obs = ep["frames"][sl] if ds.kind == "frames" else decode_tokens(tokenizer, ep["tokens"][sl])
            frames.append(np.asarray(obs, np.uint8))
            actions.append(np.asarray(ep["actions"][sl], np.int64))
            info.append({"episode": e, "episode_id": int(ep["id"]), "episode_frames": lengths[e],
                         "first_dreamed_frame": s + m_max})
    finally:
        ds.close()
    return RealVideos(np.stack(frames), np.stack(actions), m_max, info, ds.kind, recorded_env(ds.manifest))
