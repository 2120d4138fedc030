"""Paired statistics of eval rows: frame bands, per-video band means, bootstrap margins."""

from __future__ import annotations

import numpy as np
import pytest

from envs.common.errors import ConfigError
from worldmodel.evaluation.stats import band_means, format_margin, frame_bands, paired_margin, same_videos


@pytest.mark.parametrize("frames,k,want", [
    (16, 16, [(1, 16)]),
    (10, 16, [(1, 10)]),
    (64, 16, [(1, 16), (17, 64)]),
    (368, 16, [(1, 16), (17, 64), (65, 160), (161, 368)]),
    (160, 16, [(1, 16), (17, 64), (65, 160)]),
    (12, 4, [(1, 4), (5, 12)]),
])
def test_frame_bands(frames, k, want):
    assert frame_bands(frames, k) == want


def test_band_means_are_per_video_means_of_each_band():
    psnr = np.arange(2 * 20, dtype=float).reshape(2, 20)
    got = band_means(psnr, 4)
    assert list(got) == ["1-4", "5-16", "17-20"]
    assert got["1-4"] == [1.5, 21.5] and got["17-20"] == [17.5, 37.5]
    with pytest.raises(ValueError, match="videos, frames"):
        band_means(psnr[0], 4)
    keep = np.ones((2, 20), bool)
    keep[0, 1:4] = False                                  # video 0 keeps only frame 1 of band 1-4
    keep[1, 0:4] = False                                  # video 1 keeps none of it
    kept = band_means(psnr, 4, keep)
    assert kept["1-4"] == [0.0, None] and kept["5-16"] == got["5-16"]
    with pytest.raises(ValueError, match="keep has shape"):
        band_means(psnr, 4, keep[:, :5])


def test_new_views_marks_exact_repeats_of_the_last_context_frame():
    from worldmodel.evaluation.scores import new_views
    from worldmodel.evaluation.videos import RealVideos

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 6, 4, 4, 3), dtype=np.uint8)
    frames[0, 4] = frames[0, 2]                            # video 0 looks back at its last context frame (index 2)
    frames[1, 5] = frames[1, 2]
    frames[1, 3] = frames[1, 2]
    frames[1, 3, 0, 0, 0] ^= 1                             # one value off: a new view, however slight
    real = RealVideos(frames, np.zeros((2, 6), np.int64), 3, [], "frames")
    np.testing.assert_array_equal(new_views(real, 3), [[True, False, True], [True, True, False]])


def test_paired_margin_mean_interval_and_wins():
    rng = np.random.default_rng(1)
    base = rng.normal(15, 3, 400)                     # window-to-window spread, shared by both rows
    a = base + 1.0 + rng.normal(0, 0.5, 400)
    m = paired_margin(a, base, seed=0)
    assert m["n"] == 400 and m["mean"] == pytest.approx((a - base).mean())
    # the bootstrap interval matches the normal one (mean ± 1.96 sd / sqrt(n)) and ignores the shared spread
    half = 1.96 * (a - base).std() / np.sqrt(400)
    assert m["ci_low"] == pytest.approx(m["mean"] - half, abs=0.01)
    assert m["ci_high"] == pytest.approx(m["mean"] + half, abs=0.01)
    assert m["wins"] == pytest.approx(np.mean(a > base))
    assert paired_margin(a, base, seed=0) == m                        # seeded: reproducible
    flat = paired_margin([3.0, 4.0], [1.0, 2.0])                       # a constant margin has no spread
    assert (flat["mean"], flat["ci_low"], flat["ci_high"], flat["wins"]) == (2.0, 2.0, 2.0, 1.0)
    assert format_margin(flat) == "+2.00 dB [+2.00, +2.00]"
    with pytest.raises(ValueError, match="equal-length"):
        paired_margin([1.0, 2.0], [1.0])
    part = paired_margin([3.0, None, 5.0], [1.0, 2.0, None])           # pairs with a missing side drop out
    assert (part["mean"], part["n"]) == (2.0, 1)
    none = paired_margin([None], [1.0])
    assert none["n"] == 0 and np.isnan(none["mean"]) and format_margin(none) == "–"


def test_same_videos_names_the_difference():
    def res(data, clips):
        return {"settings": {"data": data}, "videos": [{"episode": e, "episode_id": i, "first_dreamed_frame": s}
                                                       for e, i, s in clips]}

    a = res("runs/data_long2", [(0, 5, 20), (1, 9, 40)])
    same_videos(a, res("/abs/path/data_long2", [(0, 5, 20), (1, 9, 40)]))    # the same folder, named otherwise
    with pytest.raises(ConfigError, match="data: first used 'runs/data_long2'"):
        same_videos(a, res("runs/data_fix", [(0, 5, 20), (1, 9, 40)]))
    with pytest.raises(ConfigError, match="first difference at video 1"):
        same_videos(a, res("runs/data_long2", [(0, 5, 20), (1, 9, 41)]))
    with pytest.raises(ConfigError, match="2 vs 1"):
        same_videos(a, res("runs/data_long2", [(0, 5, 20)]))
