"""Videos (moviepy) and contact sheets (PNG) of frame sequences, and plots saved as PNG.

Frames are uint8 arrays shaped (T, H, W, 3). Videos are upscaled with nearest-neighbour so 64×64
frames stay crisp, and written atomically (temp file + rename).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from envs.common.files import atomic_write


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    return frames


def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (T, H, W, 3) frames by an integer factor."""
    return frames.repeat(scale, axis=1).repeat(scale, axis=2) if scale > 1 else frames


def label(frames: np.ndarray, texts: Sequence[str], color=(255, 255, 255)) -> np.ndarray:
    """Draw one short text per frame in the top-left corner (with a dark box behind it)."""
    from PIL import Image, ImageDraw

    out = np.empty_like(frames)
    for i, (f, text) in enumerate(zip(frames, texts)):
        img = Image.fromarray(f)
        d = ImageDraw.Draw(img)
        box = d.textbbox((2, 1), text)
        d.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=(0, 0, 0))
        d.text((2, 1), text, fill=color)
        out[i] = np.asarray(img)
    return out


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 2) -> np.ndarray:
    """(T, H, W, 3) pairs → (T, H, 2W + gap, 3) with a white gap."""
    left, right = _check_frames(left), _check_frames(right)
    if left.shape != right.shape:
        raise ValueError(f"side_by_side needs equal shapes, got {left.shape} and {right.shape}")
    sep = np.full((*left.shape[:2], gap, 3), 255, np.uint8)
    return np.concatenate([left, sep, right], axis=2)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 15, scale: int = 1) -> Path:
    """Write an mp4 (libx264) or gif, chosen by the file suffix, with moviepy."""
    from moviepy import ImageSequenceClip

    frames = upscale(_check_frames(frames), scale)
    path = Path(path)
    # even sizes for yuv420p
    h, w = frames.shape[1:3]
    frames = frames[:, : h - h % 2, : w - w % 2]
    clip = ImageSequenceClip(list(frames), fps=fps)
    with atomic_write(path) as tmp:
        typed = tmp.with_suffix(path.suffix)  # moviepy picks the format from the suffix
        if path.suffix == ".gif":
            clip.write_gif(str(typed), fps=fps, logger=None)
        else:
            clip.write_videofile(str(typed), fps=fps, codec="libx264", audio=False, logger=None,
                                 ffmpeg_params=["-pix_fmt", "yuv420p"])
        os.replace(typed, tmp)
    clip.close()
    return path


def contact_sheet(frames: np.ndarray, path: str | os.PathLike, every: int = 1, cols: int = 12,
                  scale: int = 2, numbers: bool = True) -> Path:
    """A PNG grid of every ``every``-th frame, each labelled with its index."""
    from PIL import Image

    frames = _check_frames(frames)
    idx = np.arange(0, len(frames), every)
    tiles = upscale(frames[idx], scale)
    if numbers:
        tiles = label(tiles, [str(i) for i in idx])
    rows = -(-len(tiles) // cols)
    h, w = tiles.shape[1:3]
    sheet = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet[r * (h + 2): r * (h + 2) + h, c * (w + 2): c * (w + 2) + w] = t
    with atomic_write(path) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")
    return Path(path)


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Lay out a matplotlib figure, write it as a PNG atomically and close it (pyplot keeps no reference)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path)
