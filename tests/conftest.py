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


@pytest.fixture(scope="session")
def tiny_world_checkpoint(tmp_path_factory, tiny_frames_dataset):
    """A real end-to-end checkpoint on the tiny maze dataset, made by the CLI's own functions:
    train-tokenizer (tiny, 8×8 tokens) → tokenize → train (tiny causal Latte, window 4)."""
    import torch

    from worldmodel.cli import run

    n = torch.get_num_threads()
    torch.set_num_threads(1)       # tiny models: extra OpenMP threads only spin on a shared 2-core machine
    try:
        root = tmp_path_factory.mktemp("pipeline")
        run("train-tokenizer", [f"data={tiny_frames_dataset}", f"out={root / 'tok'}", "size=tiny", "downsample=8",
                                "fsq_levels=[5,5,5]", "steps=6", "batch_size=4", "warmup=1", "final_eval_frames=8",
                                "eval_every=1000", "threads=1", "seed=0"])
        run("tokenize", [f"data={tiny_frames_dataset}", f"checkpoint={root / 'tok'}", f"out={root / 'tokens'}"])
        run("train", [f"data={root / 'tokens'}", f"out={root / 'world'}", "size=tiny", "steps=6", "clip_len=4",
                      "batch_size=4", "eval_every=0", "threads=1", "progress=false", "tensorboard=false",
                      "device=cpu", "seed=0"])
    finally:
        torch.set_num_threads(n)
    return root / "world"
