"""The shipped models: intact files, load as checkpoint="default" / "memory", dream (the main job's pieces),
the default's reward head fires at real goal reaches, and the memory model comes back to the view it left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from envs.common.errors import CheckpointError
from tests.json_paths import absolute_paths
from worldmodel.common.assets import ASSETS, DEFAULT_CHECKPOINT, MEMORY_CHECKPOINT, SHIPPED
from worldmodel.dream.verb import DreamConfig, dream
from worldmodel.model.checkpoint import load_world_model, resolve_checkpoint
from worldmodel.model.export import verify_release


@pytest.mark.parametrize("release", [DEFAULT_CHECKPOINT, MEMORY_CHECKPOINT], ids=["default", "memory"])
def test_shipped_files_match_their_recorded_sha256(release):
    files = verify_release(release)
    assert {"model.json", "model.safetensors", "tokenizer/tokenizer.safetensors"} <= set(files)


def test_all_shipped_models_together_fit_the_size_limit():
    total = sum((ASSETS / folder / f).stat().st_size for folder in SHIPPED.values()
                for f in verify_release(ASSETS / folder))
    assert total <= 25 * 2**20, f"shipped models are {total / 2**20:.1f} MiB"


@pytest.mark.parametrize("release", [DEFAULT_CHECKPOINT, MEMORY_CHECKPOINT], ids=["default", "memory"])
def test_shipped_model_json_records_no_absolute_paths_of_the_machine_that_made_it(release):
    meta = json.loads((release / "model.json").read_text())
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
    cal = json.loads((DEFAULT_CHECKPOINT / "reward_calibration.json").read_text())
    assert s["reward_threshold"] == cal["reward_threshold"] and len(s["per_frame"]["reward_prob"]) == 8


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


def test_memory_loads_as_the_long_window_heading_model():
    assert resolve_checkpoint("memory") == MEMORY_CHECKPOINT
    model, tokenizer, meta = load_world_model("memory")
    _, base, _ = load_world_model("default")
    assert model.cfg.max_frames == 32 and model.cfg.heading_pairs > 0 and model.cfg.temporal == "causal"
    assert meta["action_space"]["n"] == model.cfg.num_actions == 9
    assert tokenizer.cfg.to_dict() == base.cfg.to_dict()          # the same tiny tokenizer as release 1


def test_tokenizer_keys_take_a_shipped_name_or_a_path(tmp_path):
    from worldmodel.tokenizer.files import init_tokenizer_dir, named_tokenizer

    assert named_tokenizer("memory") == MEMORY_CHECKPOINT / "tokenizer"
    assert init_tokenizer_dir("memory") == MEMORY_CHECKPOINT / "tokenizer"
    assert named_tokenizer(tmp_path / "mine") == tmp_path / "mine"        # a path passes through, unchecked
    with pytest.raises(CheckpointError, match="no tokenizer found at"):
        init_tokenizer_dir(str(tmp_path / "mine"))


def test_a_folder_named_like_a_shipped_model_is_refused_as_ambiguous(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "model.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"checkpoint=memory is ambiguous.*give ./memory"):
        resolve_checkpoint("memory")
    assert resolve_checkpoint("./memory") == Path("./memory")


@pytest.mark.slow
def test_memory_comes_back_to_the_view_it_left_where_release_1_does_not():
    """15 turns left and 15 right (30 frames, beyond release 1's window) in two fresh held-out mazes."""
    from worldmodel.evaluation.loops import loop_closure

    scores = {name: loop_closure(name, loops=["turn15"], trials=2, seed=7000, threads=1)["loops"]["turn15"]
              for name in ("memory", "default")}
    mem, base = scores["memory"], scores["default"]
    assert mem["return_psnr"] - mem["far_psnr"] >= 5.0, mem
    assert mem["return_psnr"] >= base["return_psnr"] + 5.0, (mem, base)


@pytest.mark.slow
def test_default_dreams_rewards_at_real_goal_reaches_at_its_sealed_calibrated_threshold(monkeypatch):
    """Release 1 never fired (recall 0/63); its re-trained heads do, and only near the goal."""
    from worldmodel.evaluation.rewards import reward_recall
    from worldmodel.model.checkpoint import read_reward_calibration, read_world_model_meta

    monkeypatch.delenv("MASKFLOW_DEFAULT_CHECKPOINT", raising=False)
    cal = read_reward_calibration(DEFAULT_CHECKPOINT, read_world_model_meta(DEFAULT_CHECKPOINT))
    assert cal is not None and 0.05 <= cal["reward_threshold"] < 1       # sealed to these weights (read checks)
    r = reward_recall("default", trials=6, seed=910000, threads=1)      # mazes no figure was chosen on
    assert r["reward_threshold"] == pytest.approx(cal["reward_threshold"])
    assert r["reward_recall"]["count"] >= r["reward_recall"]["of"] // 2, r["reward_recall"]
    assert r["mean_peak"]["reach"] > 3 * r["mean_peak"]["no_reach"], r["mean_peak"]
