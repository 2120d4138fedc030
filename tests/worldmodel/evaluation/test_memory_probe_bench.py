"""benchmarks/memory_probe.py: return frames are found exactly, and only a model that sees them scores memory."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
V = 125


def _bench():
    spec = importlib.util.spec_from_file_location("bench_memory_probe", ROOT / "benchmarks" / "memory_probe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _episodes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two episodes (frames 0-11, 12-19) of distinct 8x8 token maps, except: frame 6 returns to frame 3
    (3 back), frame 8 repeats frame 7 (standing still) and frame 13 repeats frame 11 (another episode)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, V, size=(20, 8, 8)).astype(np.uint16)
    tokens[6], tokens[8], tokens[13] = tokens[3], tokens[7], tokens[11]
    first = np.array([0] * 12 + [12] * 8)
    return tokens, rng.integers(0, 9, size=20), first


class CopyOldest:
    """Predicts the oldest frame it is shown: perfect memory of what its window holds, nothing else."""

    cfg = SimpleNamespace(mask_id=V, max_frames=4)

    def __call__(self, noisy, t, actions):
        oldest = torch.nn.functional.one_hot(noisy[:, :1], V + 1).float()      # (b 1 h w v)
        return SimpleNamespace(logits=oldest.expand(-1, noisy.shape[1], -1, -1, -1))


def test_return_frames_are_found_exactly():
    bench = _bench()
    tokens, _, first = _episodes()
    rets, ords = bench.return_frames(tokens, first, history=3, short=2)
    assert rets.tolist() == [6]
    assert ords.tolist() == [3, 4, 5, 7, 9, 10, 11, 15, 16, 17, 18, 19]


def test_the_probe_credits_a_window_that_holds_the_returned_view(tiny_world_checkpoint):
    from worldmodel.model.checkpoint import load_world_model

    bench = _bench()
    tokens, actions, first = _episodes()
    r = bench.probe_arrays(CopyOldest(), tokens, actions, first, short=2, span=3)
    assert (r["return_frames"], r["ordinary_frames"]) == (1, 1)
    # the full window (3 back) holds frame 3 = frame 6; the short one (1 back) does not
    assert r["returns"]["full"] == 1.0 and r["returns"]["window2"] == 0.0
    assert r["returns"]["full_minus_window2"]["mean"] == 1.0
    assert r["returns"]["circle_ends"] == {"frames": 1, "window2": 0.0, "full": 1.0}   # no return just before it
    assert r["ordinary"]["full"] < 0.1          # no return: copying the oldest frame is wrong
    model = load_world_model(tiny_world_checkpoint)[0]              # a real model runs through the same path
    real = bench.probe_arrays(model, tokens, actions, first, short=2, span=3, context_noise=0.3, guidance=1.0)
    assert 0.0 <= real["returns"]["full"] <= 1.0 and real["returns"]["full_minus_window2"]["n"] == 1
    assert 0.0 <= real["returns"]["guided1"] <= 1.0


def test_context_noise_hides_the_remembered_view_and_guidance_keeps_what_the_window_says():
    """With half the history's tokens made random, the copying oracle recalls only the uncorrupted half of the
    returned view (the target and the changed-token mask stay real); far-history guidance adds nothing to a
    model that already copies the right frame, and takes nothing away."""
    bench = _bench()
    tokens, actions, first = _episodes()
    noisy = bench.probe_arrays(CopyOldest(), tokens, actions, first, short=2, span=3, context_noise=0.5)
    assert noisy["context_noise"] == 0.5 and 0.25 < noisy["returns"]["full"] < 0.75
    assert noisy["returns"]["window2"] < 0.1
    guided = bench.probe_arrays(CopyOldest(), tokens, actions, first, short=2, span=3, guidance=2.0)
    assert guided["returns"]["guided2"] == guided["returns"]["full"] == 1.0
    assert guided["returns"]["guided2_minus_full"]["mean"] == 0.0
    assert bench.corrupt_tokens(tokens, 0.0, V) is tokens
