"""Releases of a checkpoint: compact, loadable, verifiable; tampering and overwrites are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from envs.common.errors import CheckpointError
from envs.common.files import read_json, sha256_file
from tests.json_paths import absolute_paths
from worldmodel.dream.verb import DreamConfig, dream
from worldmodel.model.checkpoint import load_world_model, resolve_checkpoint
from worldmodel.model.export import SUMS_NAME, export_checkpoint, portable_path, verify_release


def _dream_tokens(ckpt, data, out) -> np.ndarray:
    dream(DreamConfig(checkpoint=str(ckpt), data=str(data), out=str(out), frames=3, context=2, steps=2,
                      gif=False, scale=1, progress=False))
    return np.load(out / "dream_tokens.npy")


@pytest.mark.slow
def test_fp32_release_dreams_exactly_like_the_source(tiny_world_checkpoint, tiny_frames_dataset, tmp_path):
    torch.set_num_threads(1)
    rel = export_checkpoint(tiny_world_checkpoint, tmp_path / "rel", half=False)
    assert set(verify_release(rel)) >= {"model.safetensors", "model.json", "tokenizer/tokenizer.safetensors"}
    a = _dream_tokens(tiny_world_checkpoint, tiny_frames_dataset, tmp_path / "a")
    b = _dream_tokens(rel, tiny_frames_dataset, tmp_path / "b")
    assert np.array_equal(a, b)


@pytest.mark.slow
def test_fp16_release_is_smaller_and_close(tiny_world_checkpoint, tmp_path):
    rel = export_checkpoint(tiny_world_checkpoint, tmp_path / "rel16")
    src_size = (tiny_world_checkpoint / "model.safetensors").stat().st_size
    assert (rel / "model.safetensors").stat().st_size < 0.6 * src_size
    m32, _, _ = load_world_model(tiny_world_checkpoint)
    m16, tok, meta = load_world_model(rel)
    assert meta["release"]["dtype"] == "float16" and tok is not None
    for (k, a), (_, b) in zip(m32.state_dict().items(), m16.state_dict().items()):
        assert b.dtype == a.dtype, k                          # loading casts back to the model's dtype
        assert torch.allclose(a.float(), b.float(), atol=1e-2, rtol=1e-2), k


@pytest.mark.slow
def test_tampering_and_overwrite_are_refused(tiny_world_checkpoint, tmp_path):
    rel = export_checkpoint(tiny_world_checkpoint, tmp_path / "rel")
    with pytest.raises(CheckpointError, match="--overwrite"):
        export_checkpoint(tiny_world_checkpoint, rel)
    w = rel / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its recorded sha256"):
        verify_release(rel)
    export_checkpoint(tiny_world_checkpoint, rel, overwrite=True)
    (rel / "stray.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not in " + SUMS_NAME):
        verify_release(rel)


def test_reexporting_the_shipped_release_keeps_its_weight_files_byte_for_byte(tmp_path):
    # token datasets record the tokenizer's sha256, and `init=default` checks it: a fine-tune of the
    # shipped model, exported again, must keep the tokenizer file (already float16) unchanged
    src = resolve_checkpoint("default")
    rel = export_checkpoint(src, tmp_path / "again")
    for name in ("model.safetensors", "tokenizer/tokenizer.safetensors"):
        assert sha256_file(rel / name) == sha256_file(src / name), name
    verify_release(rel)


@pytest.mark.slow
def test_release_records_no_absolute_paths_of_the_exporting_machine(tiny_world_checkpoint, tmp_path, monkeypatch):
    # a release is read on other machines: provenance paths are relative to where it was exported, or
    # bare folder names when outside it, never this machine's absolute layout
    src_meta = read_json(tiny_world_checkpoint / "model.json")
    assert absolute_paths(src_meta)                                  # the training run records absolute paths
    monkeypatch.chdir(tmp_path)
    rel = export_checkpoint(tiny_world_checkpoint, tmp_path / "releases" / "rel")
    meta = read_json(rel / "model.json")
    assert absolute_paths(meta) == []
    assert meta["release"]["source"] == tiny_world_checkpoint.name      # outside the working directory
    assert meta["tokenizer"]["source"] == Path(src_meta["tokenizer"]["source"]).name
    assert portable_path(tmp_path / "releases" / "rel") == "releases/rel"   # inside it: relative
    assert portable_path("runs/world") == "runs/world"
    load_world_model(rel)


def test_an_absolute_init_given_to_training_is_not_recorded_in_the_release():
    from worldmodel.model.export import _portable_meta

    meta = _portable_meta({"init": {"checkpoint": "/tmp/ft1", "path": "/tmp/ft1", "train_step": 183},
                           "train_config": {"init": "/tmp/ft1", "data": "runs/tokens"}})
    assert meta["init"] == {"checkpoint": "ft1", "path": "ft1", "train_step": 183}
    assert meta["train_config"] == {"init": "ft1", "data": "runs/tokens"}
    assert absolute_paths(meta) == []
