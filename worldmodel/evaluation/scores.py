"""Scoring dreamed frames against the real ones: the rows of `maskflow eval`.

A *row* is one experiment (or baseline) at one horizon (:func:`make_row`): NFE and seconds per video,
FVD of the last and the first clip with its N (:class:`FVDBank`), per-frame PSNR / SSIM curves
(:func:`frame_scores`) and PSNR per band of frames, over all frames and over the real frames that are
new views (:func:`new_views`). :func:`baseline_rows` scores the two baselines: copying the last context
frame (the floor) and the tokenizer's reconstruction (the ceiling).

Axis letters: n videos, f frames, h w token grid, y x pixels, c colour.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from einops import rearrange

from worldmodel.evaluation.stats import band_means
from worldmodel.evaluation.videos import Checkpoint, RealVideos
from worldmodel.metrics.quality import frechet_distance, i3d_features, psnr_per_frame
from worldmodel.metrics.quality import fvd_stats as gaussian_fit
from worldmodel.tokenizer.codec import decode_tokens

PSNR_CAP = 100.0            # identical frames: report 100 dB instead of inf


class FVDBank:
    """FVD of clips against the real clips at the same positions; I3D features are computed once per set."""

    def __init__(self, real: np.ndarray, clip: int, enabled: bool, device: torch.device, progress: bool) -> None:
        self.real, self.clip, self.enabled = real, clip, enabled
        self.device, self.progress = device, progress
        self.model = None
        self.cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def _fit(self, key: tuple, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if key not in self.cache:
            if self.model is None:
                from worldmodel.metrics.i3d_weights import load_i3d

                self.model = load_i3d(self.device)
            feats = i3d_features(np.ascontiguousarray(clips), device=self.device, model=self.model)
            self.cache[key] = gaussian_fit(feats)
        return self.cache[key]

    def score(self, source: str, pred: np.ndarray, start: int, constant: bool = False) -> dict | None:
        """FVD of ``pred[:, start:start + clip]`` (n f y x c, aligned with the real future) or None when
        the clip does not fit; ``constant`` marks a source whose clips do not depend on ``start``."""
        if not self.enabled or start < 0 or start + self.clip > pred.shape[1]:
            return None
        real = self._fit(("real", start), self.real[:, start:start + self.clip])
        fake = self._fit((source, 0 if constant else start), pred[:, start:start + self.clip])
        return {"fvd": frechet_distance(*real, *fake), "n_real": len(self.real), "n_fake": len(pred),
                "clip_len": self.clip, "first_frame": start + 1}


def frame_scores(pred: np.ndarray, real: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame PSNR (capped at 100 dB) and SSIM of (n f y x c) uint8 pairs: two (n f) arrays.

    PSNR is :func:`worldmodel.metrics.quality.psnr_per_frame`; SSIM has the definition of ``ssim_per_frame``
    (11x11 Gaussian) batched in float32: ~30x faster than its float64 per-video calls, equal to ~1e-6.
    ``chunk`` frames are scored at a time, so memory stays flat however many videos there are."""
    from worldmodel.tokenizer.evaluation import frame_quality

    a = rearrange(pred, "n f y x c -> (n f) y x c")
    b = rearrange(real, "n f y x c -> (n f) y x c")
    p, s = [], []
    for i in range(0, len(a), chunk):
        p.append(np.minimum(psnr_per_frame(a[i:i + chunk], b[i:i + chunk]), PSNR_CAP))
        s.append(frame_quality(torch.from_numpy(b[i:i + chunk]), torch.from_numpy(a[i:i + chunk]))[1].double().numpy())
    return (rearrange(np.concatenate(p), "(n f) -> n f", n=len(pred)),
            rearrange(np.concatenate(s), "(n f) -> n f", n=len(pred)))


def new_views(real: RealVideos, frames: int) -> np.ndarray:
    """(n f) bool: the real future frame is not the last context frame repeated exactly.

    With a deterministic renderer, turning back and forth (or walking into a wall) returns the very same
    view; copy-the-last-frame then scores the PSNR cap (100 dB), which no dream decoded through the
    tokenizer can."""
    start = real.dream_start
    return ~(real.frames[:, start:start + frames] == real.frames[:, start - 1:start]).all(axis=(2, 3, 4))


def make_row(base: dict, horizon: int, k: int, psnr: np.ndarray, ssim: np.ndarray, bank: FVDBank, source: str,
             pred: np.ndarray, nfe: int, seconds: float, new_view: np.ndarray, constant: bool = False,
             unit: int = 0) -> dict:
    """One table row: an experiment (or baseline) at one horizon; ``pred`` (n ≥ horizon frames); ``new_view``
    (n ≥ horizon) marks the real frames that are not the last context frame repeated (:func:`new_views`);
    the per-video bands are cut at multiples of ``unit`` frames (0: the window k)."""
    curve_p, curve_s = psnr[:, :horizon].mean(0), ssim[:, :horizon].mean(0)
    first = bank.score(source, pred, 0, constant) if horizon > bank.clip else None
    return {**base, "id": f"{base['key']}@{horizon // k}x", "horizon_factor": horizon // k, "frames": horizon,
            "nfe": int(nfe), "seconds_per_video": float(seconds),
            "fvd_last": bank.score(source, pred, horizon - bank.clip, constant), "fvd_first": first,
            "psnr_mean": float(curve_p.mean()), "ssim_mean": float(curve_s.mean()),
            "psnr_last": float(curve_p[-1]), "ssim_last": float(curve_s[-1]),
            "psnr_curve": curve_p.round(3).tolist(), "ssim_curve": curve_s.round(4).tolist(),
            "psnr_bands": band_means(psnr[:, :horizon], unit or k),
            "psnr_bands_new_view": band_means(psnr[:, :horizon], unit or k, new_view[:, :horizon])}


def baseline_rows(real: RealVideos, ckpt: Checkpoint, tokens: torch.Tensor, encode_s: float,
                  horizons: list[int], bank: FVDBank, k: int, new_view: np.ndarray, unit: int = 0) -> list[dict]:
    """Copy-the-last-context-frame and tokenizer-reconstruction rows at every horizon; ``new_view`` as in
    :func:`make_row`, over the longest horizon."""
    start, h_max, n = real.dream_start, max(horizons), len(real.frames)
    truth = real.frames[:, start:start + h_max]
    t0 = time.perf_counter()
    recon = rearrange(decode_tokens(ckpt.tokenizer, rearrange(tokens[:, start:start + h_max], "n f h w -> (n f) h w")),
                      "(n f) y x c -> n f y x c", n=n)
    per_frame_s = (time.perf_counter() - t0) / (n * h_max) + encode_s
    copy = np.repeat(real.frames[:, start - 1:start], h_max, axis=1)
    rows = []
    for key, pred, label, cost in (("copy_last", copy, "repeat the last context frame", 0.0),
                                   ("reconstruction", recon, "tokenizer encode + decode of the real frames",
                                    per_frame_s)):
        psnr, ssim = frame_scores(pred, truth)
        base = {"key": key, "experiment": key, "checkpoint": "baseline", "model": label, "training_masking": "",
                "mode": "baseline", "sampler": "", "steps": 0, "context": 1 if key == "copy_last" else 0,
                "stride": 0, "kv_cache": False, "nfe_context": 0}
        rows += [make_row(base, h, k, psnr, ssim, bank, key, pred, 0, cost * h, new_view, constant=key == "copy_last",
                          unit=unit) for h in horizons]
    return rows
