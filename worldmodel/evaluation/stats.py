"""Paired statistics of `maskflow eval` rows.

Each row keeps its per-video mean PSNR over frame bands (:func:`band_means`: 1..k, k+1..4k, 4k+1..10k and
10k+1..H, the extrapolation factors 1x / 4x / 10x). Two rows scored on the same videos — a dream and
copy-the-last-frame, the main and the compare checkpoint, or the same row of two eval runs with the same
``data`` / ``seed`` / ``num_videos`` — are compared video by video (:func:`paired_margin`): the mean margin
with a percentile-bootstrap 95 % confidence interval over the videos, and the share of videos on which
the first row wins.

Why: with 16–32 videos, one sampling draw moves a band's mean by ~0.5–1 dB beyond the first window, and
means without their spread ranked changes that the next draw reversed. Pairing removes the spread of the
windows themselves (a window where the agent faces a wall favours every row alike).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from envs.common.errors import ConfigError

CONFIDENCE = 0.95
RESAMPLES = 4000
BAND_FACTORS = (1, 4, 10)        # band edges at these multiples of the window k


def frame_bands(frames: int, k: int) -> list[tuple[int, int]]:
    """1-based inclusive frame ranges ``[(1, k), (k + 1, 4k), (4k + 1, 10k), (10k + 1, frames)]`` cut at ``frames``."""
    if frames < 1 or k < 1:
        raise ValueError(f"frame_bands needs frames >= 1 and k >= 1, got frames={frames}, k={k}")
    edges = [0, *[f * k for f in BAND_FACTORS if f * k < frames], frames]
    return [(a + 1, b) for a, b in zip(edges, edges[1:], strict=False)]


def band_name(band: Sequence[int]) -> str:
    return f"{band[0]}-{band[1]}"


def band_means(psnr: np.ndarray, k: int, keep: np.ndarray | None = None) -> dict[str, list[float | None]]:
    """Per-video mean of (n f) per-frame scores over each band of :func:`frame_bands`: ``{"1-16": [n], ...}``.

    ``keep`` (n f) bool scores only the kept frames; a video with none kept in a band gets None there."""
    if psnr.ndim != 2:
        raise ValueError(f"band_means wants (videos, frames) scores, got shape {psnr.shape}")
    keep = np.ones(psnr.shape, bool) if keep is None else np.asarray(keep, bool)
    if keep.shape != psnr.shape:
        raise ValueError(f"band_means: keep has shape {keep.shape}, the scores {psnr.shape}")
    out = {}
    for a, b in frame_bands(psnr.shape[1], k):
        x, w = psnr[:, a - 1:b], keep[:, a - 1:b]
        count = w.sum(1)
        means = (x * w).sum(1) / np.maximum(count, 1)
        out[band_name((a, b))] = [round(float(m), 4) if c else None for m, c in zip(means, count, strict=True)]
    return out


def paired_margin(a: Sequence[float | None], b: Sequence[float | None], seed: int = 0,
                  resamples: int = RESAMPLES) -> dict[str, Any]:
    """Mean of ``a - b`` over paired videos, its percentile-bootstrap CI and the share of videos with ``a > b``.

    Pairs where either side is None (no frame scored) are left out; ``n`` counts the pairs used. With one
    pair the interval is its margin (no spread can be estimated from one pair); with none, every figure is NaN."""
    x = np.array([np.nan if v is None else v for v in a], np.float64)
    y = np.array([np.nan if v is None else v for v in b], np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError(f"paired_margin needs two equal-length, non-empty 1-D sequences, got {x.shape} and {y.shape}")
    d = (x - y)[np.isfinite(x) & np.isfinite(y)]
    if len(d) == 0:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "wins": math.nan, "n": 0}
    idx = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    boot = d[idx].mean(1)
    tail = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return {"mean": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "wins": float((d > 0).mean()),
            "n": int(len(d))}


def longest_rows(rows: list[dict]) -> dict[str, dict]:
    """Each row key at its longest horizon (its bands hold every shorter horizon's frames)."""
    out: dict[str, dict] = {}
    for r in rows:
        if "psnr_bands_new_view" in r and (r["key"] not in out or r["frames"] > out[r["key"]]["frames"]):
            out[r["key"]] = r
    return out


def pair_rows(a: dict, b: dict, seed: int) -> list[dict]:
    """Margins of row ``a`` over row ``b`` in every band both cover (the videos must be the same): over all
    frames, and (``new_view``) over the frames that do not repeat the last context frame."""
    out = []
    for band, x in a["psnr_bands"].items():
        if band in b["psnr_bands"]:
            new = paired_margin(a["psnr_bands_new_view"][band], b["psnr_bands_new_view"][band], seed)
            out.append({"row": a["key"], "against": b["key"], "band": band,
                        **paired_margin(x, b["psnr_bands"][band], seed), "new_view": new})
    return out


def paired_margins(rows: list[dict], seed: int = 0, earlier: list[dict] | None = None) -> list[dict]:
    """Every dreamed row against copy-the-last-frame, main rows against the compare checkpoint's same row, and
    (``earlier``: the rows of an eval of the same videos) every dreamed row against its earlier self, labelled
    ``pair_with:KEY``."""
    by = longest_rows(rows)
    before = longest_rows(earlier or [])
    out = []
    for key, r in by.items():
        if r["mode"] == "baseline":
            continue
        if "copy_last" in by:
            # the copy row reaches the longest horizon of any row, so it covers every band of this one
            out += pair_rows(r, by["copy_last"], seed)
        if f"compare:{key}" in by:
            out += pair_rows(r, by[f"compare:{key}"], seed)
        if key in before:
            out += [{**m, "against": f"pair_with:{key}"} for m in pair_rows(r, before[key], seed)]
    return out


def same_videos(a: dict, b: dict, names: tuple[str, str] = ("first", "second")) -> None:
    """Raise a :class:`ConfigError` unless two eval results scored the same clips (episode, its id, start)."""
    folders = [Path(r["settings"]["data"]).name for r in (a, b)]
    if folders[0] != folders[1]:
        raise ConfigError(f"data: {names[0]} used {a['settings']['data']!r}, {names[1]} {b['settings']['data']!r}; "
                          "paired margins need the same videos")
    clips = [[(v["episode"], v["episode_id"], v["first_dreamed_frame"]) for v in r["videos"]] for r in (a, b)]
    if clips[0] != clips[1]:
        first = next((i for i, (x, y) in enumerate(zip(*clips, strict=False)) if x != y), min(map(len, clips)))
        raise ConfigError(f"{names[0]} and {names[1]} scored different videos ({len(clips[0])} vs {len(clips[1])}, "
                          f"first difference at video {first}); run both with the same data, split, seed, num_videos "
                          "and longest horizon (the horizon sets how much of an episode a video needs)")


def format_margin(m: dict) -> str:
    """``+3.87 dB [+3.12, +4.60]``."""
    if m["n"] == 0:
        return "–"
    return f"{m['mean']:+.2f} dB [{m['ci_low']:+.2f}, {m['ci_high']:+.2f}]"


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``hits / n`` ((0, 1) when n = 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
