"""Shared fixtures: tiny real datasets rendered once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("PYGLET_HEADLESS", "1")
os.environ.setdefault("LP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_frames_dataset(tmp_path_factory):
    """A real DMLabMaze-v0 dataset: 4 episodes (3 train, 1 test) of 24 steps, collected in-process."""
    from envs.collect import CollectConfig, collect

    out = tmp_path_factory.mktemp("data") / "frames"
    collect(CollectConfig(out=str(out), episodes=4, steps=24, workers=1, seed=3, test_fraction=0.25,
                          episodes_per_shard=2), progress=False)
    return out
