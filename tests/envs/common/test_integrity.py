"""No data loss and no silent corruption: what `overwrite=true` may delete, and checksums checked on read."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.common.errors import CheckpointError, ConfigError, DatasetError
from envs.common.files import check_replaceable, read_sealed_json, write_sealed_json
from envs.dataset import EpisodeDataset, write_dataset
from worldmodel.common.assets import DEFAULT_CHECKPOINT
from worldmodel.model.checkpoint import load_world_model, sealed_files


def flip_bytes(path: Path, n: int = 32, seed: int = 0) -> None:
    """Invert ``n`` bytes spread over the second half of a file (past headers, inside the data)."""
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for i in rng.choice(np.arange(len(data) // 2, len(data)), size=n, replace=False):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def frames_dataset(root: Path, episodes: int = 2, length: int = 6) -> Path:
    rng = np.random.default_rng(0)
    eps = [{"id": i, "frames": rng.integers(0, 255, (length, 64, 64, 3), dtype=np.uint8),
            "actions": np.r_[-1, rng.integers(0, 3, length - 1)], "rewards": np.zeros(length),
            "terminated": np.zeros(length, bool), "truncated": np.zeros(length, bool), "attrs": {"seed": i}}
           for i in range(episodes)]
    return write_dataset(root, eps, split="test", env_id="DMLabMaze-v0",
                         action_meanings=["turn_left", "turn_right", "forward"], episodes_per_shard=1)


# --- overwrite only ever replaces what the project wrote ------------------------------------------

@pytest.mark.parametrize("where", ["root", "home", "cwd", "cwd_parent"])
def test_overwrite_never_reaches_root_home_or_the_working_directory(where, tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    target = {"root": Path("/"), "home": tmp_path / "home", "cwd": Path("."), "cwd_parent": Path("..")}[where]
    with pytest.raises(ConfigError, match="overwrite"):
        check_replaceable(target, own=lambda p: True, what="x")


def test_collect_overwrite_refuses_a_folder_it_did_not_write(tmp_path):
    from envs.collect import CollectConfig, collect

    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="did not write"):
        collect(CollectConfig(out=str(out), episodes=1, steps=2, workers=1, overwrite=True), progress=False)
    assert (out / "thesis.tex").read_text() == "years of work"


def test_collect_overwrite_keeps_foreign_files_beside_a_dataset(tmp_path):
    from envs.collect import CollectConfig, collect

    out = frames_dataset(tmp_path / "data")          # a dataset of other settings ...
    (out / "notes.txt").write_text("mine")           # ... with a user's file beside it
    with pytest.raises(ConfigError, match="notes.txt"):
        collect(CollectConfig(out=str(out), episodes=1, steps=2, workers=1, overwrite=True), progress=False)
    assert (out / "notes.txt").is_file() and len(EpisodeDataset(out, "test")) == 2


def test_tokenize_refuses_to_write_over_its_own_input(tmp_path):
    from worldmodel.tokenizer.tokenize import tokenize_dataset

    data = frames_dataset(tmp_path / "data")
    shards = sorted(p.name for p in (data / "shards").iterdir())
    tok = DEFAULT_CHECKPOINT / "tokenizer"
    for out in (data, data / "tokens", tmp_path):
        with pytest.raises(ConfigError, match="overlaps the input"):
            tokenize_dataset(data, tok, out, overwrite=True, progress=False)
    assert sorted(p.name for p in (data / "shards").iterdir()) == shards
    assert len(EpisodeDataset(data, "test")) == 2


@pytest.mark.slow
def test_tokenize_overwrite_replaces_only_a_token_dataset(tmp_path):
    from worldmodel.tokenizer.tokenize import tokenize_dataset

    data = frames_dataset(tmp_path / "data")
    other = frames_dataset(tmp_path / "other_frames")       # a frames dataset is never replaced by tokens
    with pytest.raises(ConfigError, match="did not write"):
        tokenize_dataset(data, DEFAULT_CHECKPOINT / "tokenizer", other, overwrite=True, progress=False)
    assert len(EpisodeDataset(other, "test")) == 2
    out = tokenize_dataset(data, DEFAULT_CHECKPOINT / "tokenizer", tmp_path / "tokens", progress=False)
    assert EpisodeDataset(out, "test").kind == "tokens"


def test_dream_overwrite_leaves_files_of_the_same_name_it_did_not_write(tmp_path):
    from worldmodel.dream.verb import check_out

    (tmp_path / "dream.mp4").write_bytes(b"someone's video")
    with pytest.raises(ConfigError, match="not a dream this project wrote"):
        check_out(tmp_path, overwrite=True)
    (tmp_path / "dream.json").write_text("{}")
    check_out(tmp_path, overwrite=True)                     # an earlier dream: may be replaced


@pytest.mark.slow
def test_export_overwrite_replaces_a_release_but_not_a_folder_beside_it(tmp_path):
    from worldmodel.model.export import export_checkpoint

    rel = export_checkpoint(DEFAULT_CHECKPOINT, tmp_path / "rel")
    export_checkpoint(DEFAULT_CHECKPOINT, rel, overwrite=True)
    (rel / "README.txt").write_text("mine")
    with pytest.raises(ConfigError, match="README.txt"):
        export_checkpoint(DEFAULT_CHECKPOINT, rel, overwrite=True)
    with pytest.raises(ConfigError, match="did not write"):
        export_checkpoint(DEFAULT_CHECKPOINT, tmp_path, overwrite=True)


# --- checksums checked on read -----------------------------------------------------------------------

def test_flipped_bytes_in_the_shipped_weights_are_refused_naming_the_file(tmp_path):
    rel = Path(shutil.copytree(DEFAULT_CHECKPOINT, tmp_path / "default"))
    load_world_model(rel)
    flip_bytes(rel / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_world_model(rel)


@pytest.mark.slow
def test_flipped_bytes_in_trained_weights_config_or_tokenizer_are_refused(tiny_world_checkpoint, tmp_path):
    for name in ("model.safetensors", "tokenizer/tokenizer.safetensors", "model.json", "tokenizer/tokenizer.json"):
        ck = Path(shutil.copytree(tiny_world_checkpoint, tmp_path / name.replace("/", "_")))
        if name.endswith(".json"):                            # an edited value, the JSON still valid
            meta = json.loads((ck / name).read_text())
            meta["format_version"] = meta["format_version"]
            meta.setdefault("provenance", {})["edited"] = True
            (ck / name).write_text(json.dumps(meta))
        else:
            flip_bytes(ck / name)
        with pytest.raises(CheckpointError, match=Path(name).name):
            load_world_model(ck)


def test_a_checkpoint_may_not_name_a_foreign_env_id(tmp_path):
    rel = Path(shutil.copytree(DEFAULT_CHECKPOINT, tmp_path / "default"))
    (rel / "SHA256SUMS.json").unlink()                      # as if written by `maskflow train`, correctly sealed
    meta = json.loads((rel / "model.json").read_text())
    for bad in ("this:Zen-v0", "CartPole-v1", "os:system"):
        meta["env_id"] = bad
        write_sealed_json(rel / "model.json", meta, files=sealed_files(rel))
        with pytest.raises(CheckpointError, match="not one of this project's envs"):
            load_world_model(rel)
    meta["env_id"] = "DMLabMaze-v0"
    write_sealed_json(rel / "model.json", meta, files=sealed_files(rel))
    load_world_model(rel)
    meta["env_id"] = "this:Zen-v0"                          # edited by hand, not re-sealed
    (rel / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="model.json"):
        load_world_model(rel)


def test_a_checkpoint_without_checksums_loads_with_a_warning(tmp_path):
    rel = Path(shutil.copytree(DEFAULT_CHECKPOINT, tmp_path / "old"))
    (rel / "SHA256SUMS.json").unlink()                      # as written before checksums were recorded
    meta = json.loads((rel / "model.json").read_text())
    meta.pop("integrity", None)
    (rel / "model.json").write_text(json.dumps(meta))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_world_model(rel)
    assert any("records no checksums" in str(w.message) for w in caught)


def test_flipped_bytes_in_a_shard_name_the_shard(tmp_path):
    data = frames_dataset(tmp_path / "data")
    EpisodeDataset(data, "test").episode(1)
    shard = data / "shards" / "test-00001.h5"
    flip_bytes(shard)
    ds = EpisodeDataset(data, "test")
    ds.episode(0)                                           # the other shard still reads
    with pytest.raises(DatasetError, match="test-00001.h5"):
        ds.episode(1)


def test_tokenize_stops_at_a_corrupt_shard_naming_it(tmp_path):
    from worldmodel.tokenizer.tokenize import tokenize_dataset

    data = frames_dataset(tmp_path / "data")
    flip_bytes(data / "shards" / "test-00000.h5")
    with pytest.raises(DatasetError, match="test-00000.h5"):
        tokenize_dataset(data, DEFAULT_CHECKPOINT / "tokenizer", tmp_path / "tokens", progress=False)


def test_a_corrupt_token_shard_is_named_when_training(tmp_path):
    from worldmodel.training.loop import TrainConfig, train

    rng = np.random.default_rng(0)
    eps = [{"id": i, "tokens": rng.integers(0, 16, (12, 4, 4)), "actions": np.r_[-1, rng.integers(0, 3, 11)],
            "rewards": np.zeros(12), "terminated": np.zeros(12, bool), "truncated": np.zeros(12, bool)}
           for i in range(2)]
    root = tmp_path / "tokens"
    for split in ("train", "test"):
        write_dataset(root, eps, split=split, kind="tokens", env_id="synthetic", action_meanings=["a", "b", "c"])
    flip_bytes(root / "shards" / "train-00000.h5")
    with pytest.raises(DatasetError, match="train-00000.h5"):
        train(TrainConfig(data=str(root), out=str(tmp_path / "run"), size="tiny", steps=1, clip_len=4,
                          batch_size=2, vocab_size=16, progress=False, tensorboard=False, device="cpu"))


def test_edited_manifest_is_refused(tmp_path):
    data = frames_dataset(tmp_path / "data")
    m = json.loads((data / "manifest.json").read_text())
    m["action_meanings"] = ["a", "b", "c"]
    (data / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetError, match="manifest.json"):
        EpisodeDataset(data, "test")


def test_a_corrupt_resume_state_is_never_trained_on(tmp_path):
    from worldmodel.training.state import load_state, save_state

    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(model.parameters())
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    first = save_state(tmp_path, 1, model, ema, opt, {"model": {"d": 4}})
    second = save_state(tmp_path, 2, model, ema, opt, {"model": {"d": 4}})
    flip_bytes(second / "state.safetensors")
    with pytest.warns(UserWarning, match="state.safetensors"):            # falls back to the intact one
        assert load_state(tmp_path, model, ema, opt, {"d": 4})["step"] == 1
    flip_bytes(first / "state.safetensors")
    with pytest.raises(CheckpointError, match="no readable training state"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_state(tmp_path, model, ema, opt, {"d": 4})


def test_sealed_json_round_trip_and_tamper(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"weights")
    write_sealed_json(tmp_path / "a.json", {"x": (1, 2), "y": {"z": 1.5}}, files=("w.bin",))
    assert read_sealed_json(tmp_path / "a.json")["x"] == [1, 2]
    (tmp_path / "w.bin").write_bytes(b"weightz")
    with pytest.raises(CheckpointError, match="w.bin"):
        read_sealed_json(tmp_path / "a.json")


def test_files_and_folders_the_project_writes_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from envs.common.files import atomic_dir, save_weights, write_json

    umask = os.umask(0o022)
    try:
        save_weights(tmp_path / "w.safetensors", {"x": torch.zeros(2)})
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "folder") as d:
            (d / "f.txt").write_text("x")
    finally:
        os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert modes == {"w.safetensors": 0o644, "a.json": 0o644, "folder": 0o755, "f.txt": 0o644}, modes
