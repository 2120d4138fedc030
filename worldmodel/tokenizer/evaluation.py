"""Measuring a frame tokenizer: reconstruction quality, codebook usage, token stability and speed.

Token stability is the fraction of token ids that stay the same between consecutive frames of an
episode. The world model must predict exact ids, so a tokenizer whose ids flip under a tiny camera
motion makes its job harder at equal reconstruction quality. It is reported overall and split by
the action that led to the second frame.

Axis letters: b batch (frames), h w token grid, y x pixel rows/columns, c channels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from envs.common.files import atomic_write
from worldmodel.tokenizer.model import FrameTokenizer

Episodes = Sequence[Mapping[str, np.ndarray]]
STATIC_TOLERANCE = 2  # intensity levels (of 255): a cell this still is "unchanged" for stability_static


def as_episodes(val: np.ndarray | Episodes) -> list[dict[str, np.ndarray]]:
    """Accept frames (n, y, x, 3) (one sequence, no actions) or a list of episode dicts with
    ``frames`` (L, y, x, 3) and optionally ``actions`` (L,)."""
    if isinstance(val, np.ndarray):
        return [{"frames": val}]
    return [dict(ep) for ep in val]


def spread(episodes: list[dict[str, np.ndarray]], max_frames: int | None) -> list[dict[str, np.ndarray]]:
    """At most ``max_frames`` frames drawn evenly from the episodes: the first max_frames // n frames of each
    (at least 2, so consecutive pairs remain for stability), from as many episodes as that allows. Taking the
    first ``max_frames`` frames in order would score only the first one or two episodes, one maze's style."""
    if max_frames is None or not episodes:
        return episodes
    quota = min(max_frames, max(2, max_frames // len(episodes)))
    return [dict(ep, frames=ep["frames"][:quota]) for ep in episodes[: max(1, max_frames // quota)]]


def code_stats(counts: np.ndarray) -> dict[str, float]:
    """Perplexity (exp of the entropy of code frequencies) and fraction of the vocabulary used."""
    total = counts.sum()
    if total == 0:
        return {"perplexity": 0.0, "code_usage": 0.0}
    p = counts[counts > 0] / total
    return {"perplexity": float(math.exp(-(p * np.log(p)).sum())), "code_usage": float((counts > 0).mean())}


def frame_quality(real: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 frames (b, y, x, 3) ×2 -> per-frame PSNR (b,) in dB and SSIM (b,)."""
    r = real.permute(0, 3, 1, 2).float() / 255.0
    f = recon.permute(0, 3, 1, 2).float() / 255.0
    psnr = peak_signal_noise_ratio(f, r, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(f, r, data_range=1.0, reduction="none")
    return psnr, ssim


@torch.no_grad()
def evaluate_tokenizer(model: FrameTokenizer, val: np.ndarray | Episodes, batch_size: int = 64,
                       max_frames: int | None = None,
                       action_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Encode and decode held-out frames; return quality, usage, stability and speed metrics.

    Returns a dict with ``psnr``, ``ssim`` (means over frames), ``perplexity``, ``code_usage``
    (fraction of the vocabulary used), ``stability`` (fraction of ids unchanged between consecutive
    frames), ``stability_moved`` (same, over pairs whose pixels changed), ``stability_by_action``
    (by the action that led to the frame, when actions are given), ``stability_static`` (over token
    cells whose pixels and neighbouring cells' pixels changed by at most ``STATIC_TOLERANCE`` levels:
    a tokenizer should never re-draw those), ``static_cells`` (their share), ``encode_fps``,
    ``decode_fps``, ``frames``.
    """
    was_training = model.training
    model.eval()
    counts = np.zeros(model.vocab_size, dtype=np.int64)
    psnrs, ssims, same_all, same_moved = [], [], [], []
    static_same = static_total = cells = 0
    by_action: dict[int, list[np.ndarray]] = {}
    enc_s = dec_s = 0.0
    n_done = 0
    for ep in spread(as_episodes(val), max_frames):
        frames = ep["frames"]
        if len(frames) == 0:
            continue
        ids_list = []
        for i in range(0, len(frames), batch_size):
            real = torch.as_tensor(np.ascontiguousarray(frames[i: i + batch_size]))
            t0 = time.perf_counter()
            ids = model.encode(real)
            t1 = time.perf_counter()
            recon = model.decode(ids).cpu()
            t2 = time.perf_counter()
            enc_s, dec_s = enc_s + t1 - t0, dec_s + t2 - t1
            p, s = frame_quality(real, recon)
            psnrs.append(p.numpy())
            ssims.append(s.numpy())
            ids_list.append(ids.cpu().numpy())
        ids = np.concatenate(ids_list)
        counts += np.bincount(ids.ravel(), minlength=model.vocab_size)
        if len(ids) > 1:
            same = (ids[1:] == ids[:-1]).mean(axis=(1, 2))
            moved = np.abs(frames[1:].astype(np.int16) - frames[:-1]).max(axis=(1, 2, 3)) > 0
            same_all.append(same)
            same_moved.append(same[moved])
            static = static_cells(frames[: len(ids)], model.token_grid)
            static_same += int((static & (ids[1:] == ids[:-1])).sum())
            static_total, cells = static_total + int(static.sum()), cells + static.size
            if "actions" in ep:
                acts = np.asarray(ep["actions"])[1: len(ids)]
                for a in np.unique(acts):
                    by_action.setdefault(int(a), []).append(same[acts == a])
        n_done += len(frames)
    names = list(action_names) if action_names is not None else None
    out: dict[str, Any] = {
        "frames": n_done,
        "psnr": float(np.concatenate(psnrs).mean()) if psnrs else float("nan"),
        "ssim": float(np.concatenate(ssims).mean()) if ssims else float("nan"),
        **code_stats(counts),
        "stability": _mean(same_all),
        "stability_moved": _mean(same_moved),
        "stability_static": static_same / static_total if static_total else float("nan"),
        "static_cells": static_total / cells if cells else float("nan"),
        "stability_by_action": {(names[a] if names and 0 <= a < len(names) else str(a)): _mean(v)
                                for a, v in sorted(by_action.items())},
        "encode_fps": n_done / enc_s if enc_s > 0 else float("nan"),
        "decode_fps": n_done / dec_s if dec_s > 0 else float("nan"),
    }
    model.train(was_training)
    return out


def static_cells(frames: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """uint8 frames (L, y, x, 3) -> bool (L-1, h, w): token cells whose own pixels and those of the 8
    neighbouring cells changed by at most ``STATIC_TOLERANCE`` levels between consecutive frames."""
    h, w = grid
    diff = np.abs(frames[1:].astype(np.int16) - frames[:-1]).max(axis=-1)
    block = diff.reshape(len(diff), h, diff.shape[1] // h, w, diff.shape[2] // w).max(axis=(2, 4))
    padded = np.pad(block, ((0, 0), (1, 1), (1, 1)))
    around = np.max([padded[:, i: i + h, j: j + w] for i in range(3) for j in range(3)], axis=0)
    return around <= STATIC_TOLERANCE


def _mean(parts: list[np.ndarray]) -> float:
    v = np.concatenate(parts) if parts else np.zeros(0)
    return float(v.mean()) if v.size else float("nan")


def preview_frames(val: np.ndarray | Episodes, n: int = 8) -> np.ndarray:
    """``n`` frames spread over the held-out set, for the real-vs-reconstruction PNG."""
    if isinstance(val, np.ndarray):
        return val[:n]
    frames = np.concatenate([ep["frames"] for ep in val[:n]])
    return frames[np.linspace(0, len(frames) - 1, n).astype(int)]


def save_recon_grid(model: FrameTokenizer, frames: np.ndarray, path: str | Path, n: int = 8) -> None:
    """PNG with real frames (top row) above their reconstructions (bottom row), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real = np.ascontiguousarray(frames[:n])
    recon = model.decode(model.encode(real)).cpu().numpy()
    fig, axes = plt.subplots(2, len(real), figsize=(1.6 * len(real), 3.4), squeeze=False)
    for i in range(len(real)):
        for row, img in ((0, real[i]), (1, recon[i])):
            axes[row, i].imshow(img)
            axes[row, i].axis("off")
    axes[0, 0].set_title("real", fontsize=8, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=8, loc="left")
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def save_curves(rows: Sequence[Mapping[str, float]], path: str | Path) -> None:
    """PNG of training curves (loss, PSNR, code usage) from CSV log rows, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("reconstruction loss", ["tokenizer/train/recon"], True),
              ("adversarial", ["tokenizer/train/gen", "tokenizer/train/disc"], False),
              ("PSNR (dB)", ["tokenizer/train/psnr", "tokenizer/val/psnr"], False),
              ("code usage", ["tokenizer/train/usage", "tokenizer/val/code_usage"], False)]
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.6))
    for ax, (title, keys, logy) in zip(axes, panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if _finite(r.get(key))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=key.split("/", 1)[1], marker="o" if "val" in key else None, ms=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        if logy and any(_finite(r.get(keys[0])) and r[keys[0]] > 0 for r in rows):
            ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)
