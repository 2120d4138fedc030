"""compact_dataset: a smaller copy for carrying (compressed shards, fewer episodes) that reads back the same."""

from __future__ import annotations

import numpy as np
import pytest

from envs.common.errors import DatasetError
from envs.dataset import EpisodeDataset, compact_dataset, load_manifest, write_dataset


def _episodes(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        # smooth frames, as rendered ones are: they compress
        base = rng.integers(0, 256, (1, 8, 8, 3)).repeat(11, 0).astype(np.uint8)
        frames = np.kron(base, np.ones((1, 2, 2, 1), np.uint8))
        out.append({"id": i, "frames": frames, "actions": rng.integers(-1, 3, 11).astype(np.int16),
                    "rewards": np.zeros(11, np.float32), "attrs": {"maze_seed": 100 + i}})
    return out


def test_compact_keeps_episodes_and_records_and_shrinks(tmp_path):
    src = write_dataset(tmp_path / "src", _episodes(10, 0), "train", action_meanings=("a", "b", "c"),
                        episodes_per_shard=4, config={"policy": "revisit"})
    write_dataset(src, _episodes(3, 1), "test")
    dst = compact_dataset(src, tmp_path / "dst", {"train": 6})
    m_src, m_dst = load_manifest(src), load_manifest(dst)
    assert m_dst["config"] == m_src["config"] and m_dst["compacted_from"]["episodes"] == {"train": 6}
    a, b = EpisodeDataset(src, "train"), EpisodeDataset(dst, "train")
    assert len(b) == 6
    for i in range(6):
        ea, eb = a.episode(i), b.episode(i)
        for k in ("frames", "actions", "rewards"):
            np.testing.assert_array_equal(ea[k], eb[k])
        assert eb["attrs"]["maze_seed"] == ea["attrs"]["maze_seed"]
    assert len(EpisodeDataset(dst, "test")) == 3
    src_bytes = sum(s["bytes"] for s in m_src["shards"] if s["split"] == "train") * 6 / 10
    assert sum(s["bytes"] for s in m_dst["shards"] if s["split"] == "train") < src_bytes
    with pytest.raises(DatasetError, match="exists"):
        compact_dataset(src, dst)


def test_compact_refuses_an_unknown_split_or_count_before_writing(tmp_path):
    src = write_dataset(tmp_path / "src", _episodes(2, 0), "train", action_meanings=("a", "b", "c"))
    with pytest.raises(DatasetError, match=r"'val'.*\['train'\]"):
        compact_dataset(src, tmp_path / "dst", {"val": 2})
    with pytest.raises(DatasetError, match="count >= 0"):
        compact_dataset(src, tmp_path / "dst", {"train": -1})
    assert not (tmp_path / "dst").exists()
