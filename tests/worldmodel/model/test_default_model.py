"""The shipped default model: intact files, loads as checkpoint="default", dreams (the main job's pieces)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.json_paths import absolute_paths
from worldmodel.common.assets import DEFAULT_CHECKPOINT
from worldmodel.dream.verb import DreamConfig, dream
from worldmodel.model.checkpoint import load_world_model, resolve_checkpoint
from worldmodel.model.export import verify_release


def test_shipped_files_match_their_recorded_sha256_and_fit_the_size_limit():
    files = verify_release(DEFAULT_CHECKPOINT)
    total = sum((DEFAULT_CHECKPOINT / f).stat().st_size for f in files)
    assert total <= 25 * 2**20, f"shipped model is {total / 2**20:.1f} MiB"


def test_shipped_model_json_records_no_absolute_paths_of_the_machine_that_made_it():
    meta = json.loads((DEFAULT_CHECKPOINT / "model.json").read_text())
    assert absolute_paths(meta) == []


def test_default_loads_as_a_causal_action_conditioned_model(monkeypatch):
    monkeypatch.delenv("MASKFLOW_DEFAULT_CHECKPOINT", raising=False)
    assert resolve_checkpoint("default") == DEFAULT_CHECKPOINT
    model, tokenizer, meta = load_world_model("default")
    assert model.cfg.temporal == "causal" and tokenizer is not None
    assert meta["env_id"] == "DMLabMaze-v0" and meta["action_space"]["n"] == model.cfg.num_actions == 9
    assert list(tokenizer.token_grid) == list(model.cfg.token_grid)


@pytest.mark.slow
def test_default_dreams_eight_frames_of_a_live_held_out_maze(tmp_path, monkeypatch):
    monkeypatch.delenv("MASKFLOW_DEFAULT_CHECKPOINT", raising=False)
    torch.set_num_threads(1)
    s = dream(DreamConfig(checkpoint="default", frames=8, steps=2, out=str(tmp_path), gif=False, scale=2,
                          progress=False))
    assert s["frames"] == 8 and s["nfe"] == 8 * 3
    assert s["source"].startswith("live DMLabMaze-v0")
    assert (tmp_path / "dream.mp4").stat().st_size > 0 and (tmp_path / "psnr.png").is_file()
    assert all(p > 5.0 for p in s["per_frame"]["psnr_recon"])       # the tokenizer really sees the maze
    assert s["psnr"]["dream_mean"] == pytest.approx(sum(s["per_frame"]["psnr_dream"]) / 8, abs=0.01)


@pytest.mark.slow
def test_tokenize_with_the_default_tokenizer(tiny_frames_dataset, tmp_path, monkeypatch):
    from envs.dataset import EpisodeDataset
    from worldmodel.cli import run

    monkeypatch.delenv("MASKFLOW_DEFAULT_CHECKPOINT", raising=False)
    torch.set_num_threads(1)
    out = run("tokenize", [f"data={tiny_frames_dataset}", "checkpoint=default", f"out={tmp_path / 'tok'}"])
    _, tokenizer, _ = load_world_model("default")
    ep = EpisodeDataset(out, "test").episode(0)
    assert tuple(ep["tokens"].shape[1:]) == tuple(tokenizer.token_grid)
    assert int(ep["tokens"].max()) < tokenizer.vocab_size
