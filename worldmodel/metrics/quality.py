"""Video metrics: standard FVD (Kinetics-400 I3D, StyleGAN-V protocol) and per-frame PSNR / SSIM.

FVD protocol (StyleGAN-V ``fvd2048_16f``): uint8 clips -> bilinear resize to 224x224
(``align_corners=False``) -> scale to [-1, 1] -> I3D's 400 pre-softmax logits averaged over time
-> Fréchet distance between the Gaussian fits of the real and generated feature sets
(``scipy.linalg.sqrtm``, real part). Headline numbers use 2048 clips of 16 frames per side; small N
is strongly biased upward, so every result carries the N it was computed with. Compute FVD on
raw uint8 arrays, never on re-encoded mp4s. I3D barely notices frame order, so pair FVD with the
per-frame metrics against ground truth.

Axis letters (einops): b batch, f frames, h w pixels, c colour channels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from einops import rearrange

from envs.common.errors import MaskFlowError
from envs.common.files import load_weights, read_json, save_weights, write_json
from worldmodel.metrics.i3d import I3D, INPUT_SIZE, MIN_FRAMES

PROTOCOL = "fvd-stylegan-v: i3d kinetics-400 logits, bilinear 224 (align_corners=False), [-1, 1]"
SSIM_MIN_SIZE = 11  # the 11x11 Gaussian window of SSIM


class MetricInputError(MaskFlowError):
    """Videos or frames handed to a metric have the wrong type, shape or count."""


@dataclass(frozen=True)
class FVDStats:
    """Gaussian fit of an I3D feature set: ``mu`` (400,), ``sigma`` (400, 400), from ``n`` clips."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    clip_len: int


@dataclass(frozen=True)
class FVDResult:
    """An FVD value with the set sizes and clip length it was computed from (always report N)."""

    fvd: float
    n_real: int
    n_fake: int
    clip_len: int

    def __str__(self) -> str:
        return f"FVD {self.fvd:.2f} (N={self.n_real} real / {self.n_fake} generated, {self.clip_len} frames)"


# ---------------------------------------------------------------------------------------- validation
def check_videos(videos: object, name: str = "videos", min_videos: int = 2) -> np.ndarray:
    """Check a uint8 (N, T, H, W, 3) array with N >= ``min_videos`` and T >= 9; return it."""
    if not isinstance(videos, np.ndarray):
        raise MetricInputError(f"{name} must be a numpy uint8 array (N, T, H, W, 3), "
                               f"got {type(videos).__name__}")
    if videos.dtype != np.uint8:
        raise MetricInputError(f"{name} must be uint8 in [0, 255] (raw frames, not floats or re-encoded "
                               f"video), got dtype {videos.dtype}; for floats in [0, 1] use "
                               "np.clip(np.round(x * 255), 0, 255).astype(np.uint8)")
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise MetricInputError(f"{name} must have shape (N, T, H, W, 3), got {videos.shape}")
    n, t = videos.shape[:2]
    if n < min_videos:
        raise MetricInputError(f"{name} holds {n} video(s); FVD needs at least {min_videos} to estimate a "
                               "covariance (headline numbers use 2048)")
    if t < MIN_FRAMES:
        raise MetricInputError(f"{name} clips have {t} frames; I3D needs at least {MIN_FRAMES} "
                               "(the standard protocol uses 16)")
    return videos


def _check_frames(pred: object, target: object, min_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Check two same-shaped uint8 (T, H, W, 3) arrays with H, W >= ``min_size``."""
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            shape = getattr(x, "shape", None)
            dtype = getattr(x, "dtype", type(x).__name__)
            raise MetricInputError(f"{name} must be a uint8 numpy array (T, H, W, 3), got {dtype} {shape}")
        if min(x.shape[1:3]) < min_size:
            raise MetricInputError(f"{name} frames are {x.shape[1]}x{x.shape[2]}; "
                                   f"need at least {min_size}x{min_size}")
    assert isinstance(pred, np.ndarray) and isinstance(target, np.ndarray)
    if pred.shape != target.shape:
        raise MetricInputError(f"pred {pred.shape} and target {target.shape} must have the same shape")
    return pred, target


# ---------------------------------------------------------------------------------------------- FVD
def preprocess(videos: torch.Tensor) -> torch.Tensor:
    """uint8 (b, f, h, w, c) -> float (b, c, f, 224, 224) in [-1, 1], bilinear, align_corners=False."""
    b = videos.shape[0]
    x = rearrange(videos, "b f h w c -> (b f) c h w").float()
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    x = x / 127.5 - 1.0
    return rearrange(x, "(b f) c h w -> b c f h w", b=b)


def i3d_features(videos: np.ndarray, batch_size: int = 4, device: str | torch.device = "cpu",
                 model: I3D | None = None, progress: bool = False) -> np.ndarray:
    """I3D Kinetics-400 logits (time-averaged) of uint8 (N, T, H, W, 3) clips -> float32 (N, 400).

    ``model`` defaults to :func:`worldmodel.metrics.i3d_weights.load_i3d` on ``device`` (run the set-up
    step first); a given model is used on its own device and switched to channels-last in place.
    On 2 idle CPU cores this costs ~0.2-0.35 s per 16-frame clip at batch size >= 2.
    """
    check_videos(videos, min_videos=1)
    if model is None:
        from worldmodel.metrics.i3d_weights import load_i3d

        model = load_i3d(device)
    device = next(model.parameters()).device
    # channels-last lets oneDNN pick faster 3D conv kernels on CPU
    model = model.to(memory_format=torch.channels_last_3d)
    starts = range(0, len(videos), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="I3D features", unit="batch")
    out = []
    with torch.inference_mode():
        for start in starts:
            batch = torch.from_numpy(np.ascontiguousarray(videos[start:start + batch_size])).to(device)
            x = preprocess(batch).contiguous(memory_format=torch.channels_last_3d)
            out.append(model(x).float().cpu())
    return torch.cat(out).numpy()


def fvd_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> (mu (D,), sigma (D, D)) in float64; sigma is the unbiased covariance."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise MetricInputError(f"features must be (N >= 2, D), got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance ``|mu1 - mu2|^2 + tr(s1 + s2 - 2 sqrtm(s1 s2))`` between two Gaussians."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise MetricInputError(f"need mu (D,) and sigma (D, D) for both sets, got {mu1.shape}, "
                               f"{sigma1.shape}, {mu2.shape}, {sigma2.shape}")
    with warnings.catch_warnings():
        # With N <= D clips the covariances are singular; sqrtm still returns the right root.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():  # rare numerical failure: nudge the diagonal (as pytorch-fid)
            offset = np.eye(d) * 1e-6
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2.0 * covmean))


def video_stats(videos: np.ndarray, batch_size: int = 4, device: str | torch.device = "cpu",
                model: I3D | None = None, progress: bool = False) -> FVDStats:
    """I3D feature statistics of a uint8 (N >= 2, T, H, W, 3) clip set."""
    check_videos(videos)
    mu, sigma = fvd_stats(i3d_features(videos, batch_size, device, model, progress))
    return FVDStats(mu, sigma, n=len(videos), clip_len=videos.shape[1])


def compute_fvd(real: np.ndarray | FVDStats, fake: np.ndarray, batch_size: int = 4,
                device: str | torch.device = "cpu", model: I3D | None = None,
                progress: bool = False) -> FVDResult:
    """FVD between real clips (or their cached :class:`FVDStats`) and generated clips, with N.

    Both sets are uint8 (N, T, H, W, 3) with the same T (any H, W; resized to 224).
    """
    check_videos(fake, "fake")
    real_len = real.clip_len if isinstance(real, FVDStats) else check_videos(real, "real").shape[1]
    if real_len != fake.shape[1]:
        raise MetricInputError(f"real clips have {real_len} frames but generated clips {fake.shape[1]}; "
                               "FVD compares clips of one length")
    if model is None:  # load once for both sets
        from worldmodel.metrics.i3d_weights import load_i3d

        model = load_i3d(device)
    if not isinstance(real, FVDStats):
        real = video_stats(real, batch_size, device, model, progress)
    gen = video_stats(fake, batch_size, device, model, progress)
    value = frechet_distance(real.mu, real.sigma, gen.mu, gen.sigma)
    return FVDResult(value, n_real=real.n, n_fake=gen.n, clip_len=gen.clip_len)


def frechet_video_distance(real: np.ndarray | FVDStats, fake: np.ndarray, batch_size: int = 4,
                           device: str | torch.device = "cpu", model: I3D | None = None) -> float:
    """FVD as a float; see :func:`compute_fvd` (which also returns the N used)."""
    return compute_fvd(real, fake, batch_size, device, model).fvd


# -------------------------------------------------------------------------------- cached real stats
def save_fvd_stats(path: str | Path, stats: FVDStats) -> None:
    """Write ``mu``/``sigma`` as float64 safetensors at ``path`` and N / clip length as JSON beside it."""
    path = Path(path)
    save_weights(path, {"mu": torch.from_numpy(stats.mu), "sigma": torch.from_numpy(stats.sigma)})
    write_json(path.with_suffix(".json"), {"n": stats.n, "clip_len": stats.clip_len, "protocol": PROTOCOL})


def load_fvd_stats(path: str | Path) -> FVDStats:
    """Read statistics written by :func:`save_fvd_stats`."""
    path = Path(path)
    meta = read_json(path.with_suffix(".json"), "FVD statistics metadata")
    tensors = load_weights(path)
    return FVDStats(tensors["mu"].numpy(), tensors["sigma"].numpy(), n=int(meta["n"]),
                    clip_len=int(meta["clip_len"]))


def cached_fvd_stats(path: str | Path, make_videos: Callable[[], np.ndarray], n: int | None = None,
                     clip_len: int | None = None, batch_size: int = 4, device: str | torch.device = "cpu",
                     model: I3D | None = None, progress: bool = False) -> FVDStats:
    """Real-set statistics from the cache at ``path``, or computed from ``make_videos()`` and cached.

    The cache is reused only if its N and clip length match ``n`` / ``clip_len`` (when given), so
    changing the protocol never silently reuses stale statistics.
    """
    path = Path(path)
    if path.is_file() and path.with_suffix(".json").is_file():
        stats = load_fvd_stats(path)
        if (n is None or stats.n == n) and (clip_len is None or stats.clip_len == clip_len):
            return stats
    videos = check_videos(make_videos(), "real")
    if (n is not None and len(videos) != n) or (clip_len is not None and videos.shape[1] != clip_len):
        raise MetricInputError(f"make_videos() gave {videos.shape[:2]} (N, T), expected ({n}, {clip_len})")
    stats = video_stats(videos, batch_size, device, model, progress)
    save_fvd_stats(path, stats)
    return stats


def random_clips(videos: Sequence[np.ndarray], clip_len: int, rng: np.random.Generator) -> np.ndarray:
    """One uniformly placed clip per video: N arrays (T_i, H, W, 3) -> (N, clip_len, H, W, 3)."""
    clips = []
    for i, video in enumerate(videos):
        if len(video) < clip_len:
            raise MetricInputError(f"video {i} has {len(video)} frames, shorter than clip_len={clip_len}")
        start = int(rng.integers(0, len(video) - clip_len + 1))
        clips.append(video[start:start + clip_len])
    return np.stack(clips)


# ------------------------------------------------------------------------------------ per-frame metrics
def _to_unit_float(x: np.ndarray) -> torch.Tensor:
    """uint8 (f, h, w, c) -> float64 (f, c, h, w) in [0, 1]."""
    return rearrange(torch.from_numpy(np.ascontiguousarray(x)), "f h w c -> f c h w").double() / 255.0


def psnr_per_frame(pred: np.ndarray, target: np.ndarray, identical: float = math.inf) -> np.ndarray:
    """PSNR in dB of each frame of uint8 (T, H, W, 3) arrays -> (T,) float64: 10·log10(255² / MSE).

    The one PSNR of the project. Identical frames have no finite PSNR: they get ``identical`` (inf;
    ``maskflow dream`` passes 100 so its JSON stays finite)."""
    pred, target = _check_frames(pred, target)
    mse = ((pred.astype(np.float64) - target.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return np.where(mse > 0, 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12)), identical)


def ssim_per_frame(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """SSIM (11x11 Gaussian window, sigma 1.5) of each frame of uint8 (T, H, W, 3) arrays -> (T,)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    pred, target = _check_frames(pred, target, min_size=SSIM_MIN_SIZE)
    values = structural_similarity_index_measure(_to_unit_float(pred), _to_unit_float(target),
                                                 data_range=1.0, reduction="none")
    return values.numpy()

