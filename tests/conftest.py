"""Shared fixtures: one torch thread per test, tiny real datasets rendered once per session, and a way to
kill a run in the middle of a write.

Tests marked ``slow`` render a maze, collect, train a tokenizer or world model for real steps, run I3D on
real videos or take more than about a second; ``pytest -m "not slow"`` leaves them out (``make test`` runs
everything). A test that uses ``tiny_frames_dataset`` or ``tiny_world_checkpoint`` is slow whether or not
it says so (see :func:`pytest_collection_modifyitems`).
"""

from __future__ import annotations

import contextlib
import os
import sys

import pytest

os.environ.setdefault("PYGLET_HEADLESS", "1")
os.environ.setdefault("LP_NUM_THREADS", "1")

# session fixtures below that render and train: every test that uses one (directly or through another
# fixture) is slow
SLOW_FIXTURES = frozenset({"tiny_frames_dataset", "tiny_world_checkpoint"})


@pytest.hookimpl(tryfirst=True)                        # before -m deselects by mark
def pytest_collection_modifyitems(config, items):
    """Mark every test that uses a rendering/training session fixture ``slow``, so that a new test which
    forgets the mark cannot pull a maze collection and three training runs into ``-m "not slow"``."""
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """Run on ``n`` torch threads; afterwards restore the previous count and forget any thread governor
    (``worldmodel.common.threads``) that was started meanwhile, so its ``tick()`` cannot change the count
    of later tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        threads = sys.modules.get("worldmodel.common.threads")     # not imported: no governor was started
        if threads is not None:
            threads._CURRENT = None


@pytest.fixture(autouse=True)
def one_thread():
    """Every test runs on one torch thread: the models under test are tiny, and on a shared 2-core machine
    extra OpenMP threads only spin (even the real I3D is no faster on two). A verb a test runs may start the
    adaptive governor (``threads=0``) and change the count; it is restored after each test either way."""
    with torch_threads(1):
        yield


@pytest.fixture
def kill_on_call(monkeypatch):
    """``kill_on_call(module, name, n, error)`` makes the ``n``-th call of ``module.name`` raise ``error`` (a
    run killed in the middle of writing) and returns the original function, to be patched back in."""

    def patch(module, name: str, n: int, error: BaseException):
        real = getattr(module, name)
        calls = {"n": 0}

        def dying(*a, **k):
            calls["n"] += 1
            if calls["n"] == n:
                raise error
            return real(*a, **k)

        monkeypatch.setattr(module, name, dying)
        return real

    return patch


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
    from worldmodel.cli import run

    with torch_threads(1):          # (a session fixture: set up before any test's one_thread)
        root = tmp_path_factory.mktemp("pipeline")
        run("train-tokenizer", [f"data={tiny_frames_dataset}", f"out={root / 'tok'}", "size=tiny", "downsample=8",
                                "fsq_levels=[5,5,5]", "steps=6", "batch_size=4", "warmup=1", "final_eval_frames=8",
                                "eval_every=1000", "threads=1", "seed=0"])
        run("tokenize", [f"data={tiny_frames_dataset}", f"checkpoint={root / 'tok'}", f"out={root / 'tokens'}"])
        run("train", [f"data={root / 'tokens'}", f"out={root / 'world'}", "size=tiny", "steps=6", "clip_len=4",
                      "batch_size=4", "eval_every=0", "threads=1", "progress=false", "tensorboard=false",
                      "device=cpu", "seed=0"])
    return root / "world"
