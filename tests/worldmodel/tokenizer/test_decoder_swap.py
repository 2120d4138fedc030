"""Decoder swaps: a decoder of its own size, trained on a frozen encoder, replaces the old one under a
trained world model. Token ids never change; a different encoder is refused by the swap, by
``load_world_model``, by token datasets trained together and by ``maskflow train init=``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from envs.common.errors import CheckpointError, ConfigError, DatasetError
from envs.common.files import load_weights, read_json, write_sealed_json
from envs.dataset import load_manifest
from worldmodel.common.assets import DEFAULT_CHECKPOINT
from worldmodel.model.checkpoint import CONFIG_NAME, load_world_model, sealed_files, swap_decoder
from worldmodel.tokenizer.config import TokenizerTrainConfig
from worldmodel.tokenizer.files import CONFIG_NAME as TOK_CONFIG
from worldmodel.tokenizer.files import identity_of_dir, load_tokenizer, save_tokenizer
from worldmodel.tokenizer.identity import tokenizer_identity
from worldmodel.tokenizer.model import build_tokenizer, tokenizer_config, with_decoder
from worldmodel.tokenizer.training import train_tokenizer

# release 1's tokenizer (the file its token datasets record) and its encoder: the token ids every release keeps
RELEASE_1_TOKENIZER_SHA256 = "108aae6df6c666dc93e56ee26fa9184b37ba90fa499d920e7140d1bf529f451d"
RELEASE_1_ENCODER_SHA256 = "5bc75a47ef478970bec68b9619d46d8dd283a708f579b4ff6fcd7a04eb786761"

ENCODER_SIDE = ("encoder.", "quantizer.")


def random_frames(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 64, 64, 3), dtype=np.uint8)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def decoder_cfg(init: str, **kw) -> TokenizerTrainConfig:
    base = dict(init=init, freeze_encoder=True, steps=3, batch_size=4, warmup=1, lr=2e-3, disc_start=1, disc_ramp=1,
                eval_every=1000, final_eval_frames=8, log_every=1, ckpt_every=1000)
    return TokenizerTrainConfig(**{**base, **kw})


def other_encoder(tokenizer_dir, out):
    """The same tokenizer with one encoder bias moved: same shapes and vocabulary, other token ids."""
    tok = load_tokenizer(tokenizer_dir)
    with torch.no_grad():
        tok.encoder.conv_in.bias.add_(0.5)
    return save_tokenizer(tok, out)


# ---- the decoder's own size ----------------------------------------------------------------------

@pytest.mark.parametrize("decoder_size", [None, "tiny", "small", "base"])
def test_decoder_size_round_trips_and_encode_decode_shapes(tmp_path, decoder_size):
    torch.manual_seed(0)
    cfg = tokenizer_config("tiny", 4, decoder_size=decoder_size)
    model = build_tokenizer(cfg).eval()
    save_tokenizer(model, tmp_path)
    back = load_tokenizer(tmp_path)
    assert back.cfg == cfg
    # a tokenizer without a decoder of its own writes the config it always did (old JSONs load unchanged)
    assert ("decoder_widths" in read_json(tmp_path / TOK_CONFIG)["config"]) == (decoder_size is not None)
    frames = random_frames(3, 0)
    ids = back.encode(frames)
    assert ids.dtype == torch.int64 and tuple(ids.shape) == (3, 16, 16)
    assert torch.equal(ids, model.encode(frames))
    out = back.decode(ids)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (3, 64, 64, 3)
    assert torch.equal(out, model.decode(ids))


def test_decoder_presets_parameter_counts():
    enc = n_params(build_tokenizer(tokenizer_config("tiny", 4)).encoder)
    dec = {s: build_tokenizer(tokenizer_config("tiny", 4, decoder_size=s)) for s in ("tiny", "small", "base")}
    assert all(n_params(m.encoder) == enc for m in dec.values())        # the encoder is the tiny one throughout
    counts = {s: n_params(m.decoder) for s, m in dec.items()}
    assert counts["tiny"] < 100_000 < 300_000 < counts["small"] < 1_000_000 < 2_000_000 < counts["base"] < 5_000_000
    # a decoder preset follows the token grid: 8×8 tokens upsample once more
    assert tokenizer_config("tiny", 8, decoder_size="small").decoder_widths == (32, 64, 128, 128)
    with pytest.raises(ConfigError, match="decoder_widths"):
        tokenizer_config("tiny", 4, decoder_widths=(16, 32))


def test_shipped_tokenizer_is_release_1s_encoder_with_a_small_decoder():
    tok = load_tokenizer(DEFAULT_CHECKPOINT / "tokenizer")      # the weights' config digest still matches
    assert tok.cfg.decoder_widths == tokenizer_config("tiny", 4, decoder_size="small").decoder_widths
    meta = json.loads((DEFAULT_CHECKPOINT / "model.json").read_text())
    # swapped onto release 1's tokenizer (its weights' sha256, as the token datasets of release 1 record it)
    assert meta["decoder_swap"]["old_tokenizer"]["weights_sha256"] == RELEASE_1_TOKENIZER_SHA256
    ids = identity_of_dir(DEFAULT_CHECKPOINT / "tokenizer")
    assert meta["tokenizer"]["encoder_sha256"] == ids["encoder_sha256"] == RELEASE_1_ENCODER_SHA256


# ---- identity ------------------------------------------------------------------------------------

def test_encoder_identity_follows_the_encoder_not_the_decoder_or_the_storage_dtype():
    torch.manual_seed(0)
    cfg = tokenizer_config("tiny", 4)
    state = {k: v.half().float() for k, v in build_tokenizer(cfg).state_dict().items()}
    a = tokenizer_identity(cfg.to_dict(), state)
    # an fp16 file holding the same numbers (the shipped release) is the same tokenizer
    assert tokenizer_identity(cfg.to_dict(), {k: v.half() for k, v in state.items()}) == a
    new_decoder = {**state, "decoder.conv_out.bias": state["decoder.conv_out.bias"] + 1}
    b = tokenizer_identity(cfg.to_dict(), new_decoder)
    assert b["encoder_sha256"] == a["encoder_sha256"] and b["decoder_sha256"] != a["decoder_sha256"]
    bigger = with_decoder(cfg, "small")
    encoder_side = {k: v for k, v in state.items() if k.startswith(ENCODER_SIDE)}
    big_state = {**build_tokenizer(bigger).state_dict(), **encoder_side}
    assert tokenizer_identity(bigger.to_dict(), big_state)["encoder_sha256"] == a["encoder_sha256"]
    moved = {**state, "encoder.conv_in.bias": state["encoder.conv_in.bias"] + 1e-3}
    assert tokenizer_identity(cfg.to_dict(), moved)["encoder_sha256"] != a["encoder_sha256"]
    levels = tokenizer_config("tiny", 4, fsq_levels=(8, 8, 8, 5))
    assert tokenizer_identity(levels.to_dict(), state)["encoder_sha256"] != a["encoder_sha256"]


# ---- decoder-only training -----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("decoder_size", ["", "small"])
def test_decoder_only_training_keeps_the_encoder_bit_identical(tmp_path, decoder_size):
    torch.manual_seed(0)
    init = save_tokenizer(build_tokenizer(tokenizer_config("tiny", 4)), tmp_path / "init")
    run = tmp_path / "run"
    summary = train_tokenizer(decoder_cfg(str(init), decoder_size=decoder_size), random_frames(64, 0), None, run)
    old, new = load_tokenizer(init), load_tokenizer(run)
    assert summary["trained_params"] == n_params(new.decoder) < summary["params"]
    so, sn = old.state_dict(), new.state_dict()
    enc = [k for k in so if k.startswith(ENCODER_SIDE)]
    assert enc and all(torch.equal(so[k], sn[k]) for k in enc)
    if decoder_size:
        assert new.cfg.decoder_widths == (32, 64, 128) and old.cfg.decoder_widths is None
    else:                   # the init's decoder, fine-tuned: its weights moved
        assert any(not torch.equal(so[k], sn[k]) for k in so if k.startswith("decoder."))
    frames = random_frames(16, 1)
    assert torch.equal(old.encode(frames), new.encode(frames))
    a, b = identity_of_dir(init), identity_of_dir(run)
    assert a["encoder_sha256"] == b["encoder_sha256"] and a["decoder_sha256"] != b["decoder_sha256"]
    meta = read_json(run / "tokenizer" / TOK_CONFIG)
    assert meta["encoder_sha256"] == b["encoder_sha256"] and meta["provenance"]["init"]["frozen_encoder"]
    # resumable like any run, but only with the same settings
    train_tokenizer(decoder_cfg(str(init), decoder_size=decoder_size, steps=4), random_frames(64, 0), None, run)
    assert torch.equal(load_tokenizer(run).encode(frames), old.encode(frames))
    with pytest.raises(CheckpointError, match="freeze_encoder"):
        train_tokenizer(decoder_cfg(str(init), decoder_size=decoder_size, steps=5, freeze_encoder=False),
                        random_frames(64, 0), None, run)
    with pytest.raises(ConfigError, match="freeze_encoder=true needs init"):
        TokenizerTrainConfig(freeze_encoder=True)


# ---- swapping the decoder of a world model -------------------------------------------------------

@pytest.fixture(scope="module")
def new_decoder(tiny_world_checkpoint, tiny_frames_dataset, tmp_path_factory):
    """A `small` decoder trained for 2 steps (CLI) on the frozen encoder of the tiny world model's tokenizer."""
    from worldmodel.cli import run

    out = tmp_path_factory.mktemp("decoder") / "run"
    run("train-tokenizer", [f"data={tiny_frames_dataset}", f"out={out}", f"init={tiny_world_checkpoint}",
                            "freeze_encoder=true", "decoder_size=small", "steps=2", "batch_size=4", "warmup=1",
                            "disc_start=1", "disc_ramp=1", "final_eval_frames=8", "eval_every=1000", "threads=1",
                            "seed=0"])
    return out / "tokenizer"


@pytest.mark.slow
def test_swapped_checkpoint_keeps_token_ids_loads_and_dreams_the_same_tokens(
        tiny_world_checkpoint, tiny_frames_dataset, new_decoder, tmp_path):
    from worldmodel.dream.env import MaskFlowDreamEnv
    from worldmodel.dream.verb import DreamConfig, dream

    swapped = swap_decoder(tiny_world_checkpoint, new_decoder, tmp_path / "swapped")
    m0, t0, meta0 = load_world_model(tiny_world_checkpoint)
    m1, t1, meta1 = load_world_model(swapped)
    assert all(torch.equal(a, b) for a, b in zip(m0.state_dict().values(), m1.state_dict().values()))
    assert t1.cfg.decoder_widths == (32, 64, 128, 128) and t0.cfg.decoder_widths is None
    frames = random_frames(16, 2)
    assert torch.equal(t0.encode(frames), t1.encode(frames))
    assert meta1["tokenizer"]["encoder_sha256"] == meta0["tokenizer"]["encoder_sha256"]
    assert meta1["tokenizer"]["decoder_sha256"] != meta0["tokenizer"]["decoder_sha256"]
    assert meta1["decoder_swap"]["old_tokenizer"]["weights_sha256"] == meta0["tokenizer"]["weights_sha256"]
    tokens = []
    for name, ckpt in (("a", tiny_world_checkpoint), ("b", swapped)):
        dream(DreamConfig(checkpoint=str(ckpt), data=str(tiny_frames_dataset), out=str(tmp_path / name), frames=3,
                          context=2, steps=2, gif=False, scale=1, progress=False))
        tokens.append(np.load(tmp_path / name / "dream_tokens.npy"))
    assert np.array_equal(*tokens)                       # same world model, same ids: only the pixels differ
    env = MaskFlowDreamEnv(str(swapped), data=str(tiny_frames_dataset), steps_per_frame=2)
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(env.action_space.sample())
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    env.close()
    with pytest.raises(CheckpointError, match="not empty"):
        swap_decoder(tiny_world_checkpoint, new_decoder, swapped)


@pytest.mark.slow
def test_a_different_encoder_is_refused_by_the_swap_and_by_load(tiny_world_checkpoint, new_decoder, tmp_path):
    bad = other_encoder(tiny_world_checkpoint / "tokenizer", tmp_path / "bad")
    with pytest.raises(CheckpointError, match="different encoder.*the token ids would mean other things"):
        swap_decoder(tiny_world_checkpoint, bad, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    swapped = swap_decoder(tiny_world_checkpoint, new_decoder, tmp_path / "swapped")
    shutil.rmtree(swapped / "tokenizer")
    shutil.copytree(bad, swapped / "tokenizer")
    with pytest.raises(CheckpointError, match="different encoder.*encoder sha256"):
        load_world_model(swapped)
    # putting in another decoder of the same encoder by hand is a legal swap
    shutil.rmtree(swapped / "tokenizer")
    shutil.copytree(tiny_world_checkpoint / "tokenizer", swapped / "tokenizer")
    load_world_model(swapped)


@pytest.mark.slow
def test_a_record_from_before_encoder_identities_is_checked_by_whole_file(tiny_world_checkpoint, new_decoder,
                                                                           tmp_path):
    old = tmp_path / "old"                  # what the shipped release records: the tokenizer file's sha256 only
    shutil.copytree(tiny_world_checkpoint, old)
    meta = read_json(old / CONFIG_NAME)
    meta.pop("integrity")
    meta["tokenizer"] = {k: v for k, v in meta["tokenizer"].items() if not k.endswith("coder_sha256")}
    write_sealed_json(old / CONFIG_NAME, meta, files=sealed_files(old))
    _, tok, loaded = load_world_model(old)
    assert loaded["tokenizer"]["encoder_sha256"] == identity_of_dir(old)["encoder_sha256"]   # filled in on load
    swapped = swap_decoder(old, new_decoder, tmp_path / "swapped")      # the old file verified, its encoder kept
    assert torch.equal(load_world_model(swapped)[1].encode(random_frames(4, 3)), tok.encode(random_frames(4, 3)))
    shutil.rmtree(old / "tokenizer")
    shutil.copytree(new_decoder, old / "tokenizer")
    with pytest.raises(CheckpointError, match="predates encoder identities"):
        load_world_model(old)
    with pytest.raises(CheckpointError, match="predates encoder identities"):
        swap_decoder(old, new_decoder, tmp_path / "again")


@pytest.mark.slow
def test_the_shipped_release_swaps_to_a_decoder_trained_on_its_frozen_encoder(tmp_path, monkeypatch):
    monkeypatch.delenv("MASKFLOW_DEFAULT_CHECKPOINT", raising=False)
    train_tokenizer(decoder_cfg("default", steps=2), random_frames(32, 4), None, tmp_path / "run")
    # the new file stores the fp16 release's encoder as fp32: same numbers, same identity
    assert load_weights(tmp_path / "run" / "tokenizer" / "tokenizer.safetensors")["encoder.conv_in.weight"].dtype \
        == torch.float32
    swapped = swap_decoder("default", tmp_path / "run", tmp_path / "swapped")
    _, t0, _ = load_world_model("default")
    _, t1, meta = load_world_model(swapped)
    frames = random_frames(16, 5)
    assert torch.equal(t0.encode(frames), t1.encode(frames))
    assert meta["decoder_swap"]["release"]["dtype"] == "float16" and "release" not in meta
    bad = other_encoder(DEFAULT_CHECKPOINT / "tokenizer", tmp_path / "bad")
    with pytest.raises(CheckpointError, match="different encoder"):
        swap_decoder("default", bad, tmp_path / "refused")


# ---- token datasets and fine-tuning follow the encoder -------------------------------------------

@pytest.mark.slow
def test_token_datasets_and_init_follow_the_encoder_not_the_decoder(tiny_world_checkpoint, tiny_frames_dataset,
                                                                    new_decoder, tmp_path):
    from worldmodel.tokenizer.tokenize import tokenize_dataset
    from worldmodel.training.data import TokenClips
    from worldmodel.training.loop import TrainConfig, train

    old_tok = tiny_world_checkpoint / "tokenizer"
    a = tokenize_dataset(tiny_frames_dataset, old_tok, tmp_path / "a", progress=False)
    b = tokenize_dataset(tiny_frames_dataset, new_decoder, tmp_path / "b", progress=False)
    ra, rb = load_manifest(a)["tokenizer"], load_manifest(b)["tokenizer"]
    assert ra["encoder_sha256"] == rb["encoder_sha256"] and ra["weights_sha256"] != rb["weights_sha256"]
    clips = TokenClips([a, b], "train", 4)
    half = len(clips.tokens) // 2
    assert np.array_equal(clips.tokens[:half], clips.tokens[half:])
    bad = other_encoder(old_tok, tmp_path / "bad")
    c = tokenize_dataset(tiny_frames_dataset, bad, tmp_path / "c", progress=False)
    with pytest.raises(DatasetError, match="different tokenizers"):
        TokenClips([a, c], "train", 4)
    # re-running tokenize with the new decoder resumes (same ids) and records it; another encoder is refused
    tokenize_dataset(tiny_frames_dataset, new_decoder, a, progress=False)
    assert load_manifest(a)["tokenizer"]["weights_sha256"] == rb["weights_sha256"]
    with pytest.raises(DatasetError, match="another tokenizer"):
        tokenize_dataset(tiny_frames_dataset, bad, a, progress=False)
    # a swapped checkpoint fine-tunes on tokens of its encoder, whichever decoder made them
    swapped = swap_decoder(tiny_world_checkpoint, new_decoder, tmp_path / "swapped")
    cfg = dict(steps=1, clip_len=4, batch_size=4, eval_every=0, threads=1, progress=False, tensorboard=False,
               init=str(swapped))
    shutil.copytree(tiny_world_checkpoint.parent / "tokens", tmp_path / "tokens_old")   # made by the old file
    train(TrainConfig(**cfg), tmp_path / "tokens_old", tmp_path / "ft")
    with pytest.raises(ConfigError, match="not the one that made this dataset"):
        train(TrainConfig(**cfg), c, tmp_path / "ft_bad")


def test_bf16_decoding_stays_within_a_grey_level_of_fp32_and_the_dream_decodes_at_its_precision(
        tiny_world_checkpoint):
    from worldmodel.dream.core import DreamCore

    shipped = load_tokenizer(DEFAULT_CHECKPOINT / "tokenizer")
    ids = torch.randint(0, shipped.vocab_size, (4, *shipped.token_grid), generator=torch.Generator().manual_seed(0))
    f32 = shipped.decode(ids).float()
    bf16 = shipped.decode(ids, dtype=torch.bfloat16).float()
    diff = (f32 - bf16).abs()
    assert diff.max() > 0                      # the bf16 path was taken
    assert diff.mean() < 1.0 and diff.max() <= 16, (diff.mean(), diff.max())
    with pytest.raises(ConfigError, match="decode dtype"):
        shipped.decode(ids, dtype=torch.float16)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        core = DreamCore(1, str(tiny_world_checkpoint), context="live", precision=precision, threads=None)
        try:
            tok = torch.randint(0, core.vocab_size, (2, *core.grid))
            assert np.array_equal(core.frames(tok), core.tokenizer.decode(tok, dtype=dtype).numpy())
        finally:
            core.close()
