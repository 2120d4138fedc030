"""Tokenizer: shapes, vocabulary bounds, training, checkpoints, tokenization and its resumption."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from einops import rearrange

from envs.common.errors import CheckpointError, ConfigError, DatasetError, MaskFlowError
from worldmodel.tokenizer.config import TokenizerTrainConfig
from worldmodel.tokenizer.evaluation import code_stats, evaluate_tokenizer, spread, static_cells
from worldmodel.tokenizer.files import CONFIG_NAME, WEIGHTS_NAME, load_tokenizer, save_tokenizer
from worldmodel.tokenizer.model import build_tokenizer, tokenizer_config
from worldmodel.tokenizer.training import train_tokenizer

ACTIONS = ["noop", "forward", "turn_left"]


def synthetic_episode(length: int, seed: int) -> dict:
    """A textured world panned by a camera: noop (no motion), forward (1 px), turn (4 px) steps."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(12, 40, 3)).astype(np.float32)
    world = np.kron(coarse, np.ones((8, 8, 1)))  # blocky 96×320 texture
    world += rng.normal(0, 12, size=world.shape)
    world = np.clip(world, 0, 255).astype(np.uint8)
    actions = np.concatenate([[-1], rng.integers(0, 3, size=length - 1)]).astype(np.int16)
    x, frames = 0, []
    for a in actions:
        x += {0: 0, 1: 1, 2: 4}.get(int(a), 0)
        frames.append(world[16:80, x % 250: x % 250 + 64])
    return {"frames": np.stack(frames), "actions": actions, "rewards": rng.random(length).astype(np.float32),
            "terminated": np.arange(length) == length - 1, "truncated": np.zeros(length, bool),
            "attrs": {"seed": seed, "maze_seed": seed + 1, "layout": "*P*"}}


def tiny_train_config(**kw) -> TokenizerTrainConfig:
    base = dict(size="tiny", steps=12, batch_size=4, warmup=2, lr=2e-3, disc_start=-1, eval_every=1000,
                final_eval_frames=16, log_every=4, ckpt_every=1000, flip=True)
    base.update(kw)
    return TokenizerTrainConfig(**base)


@pytest.fixture(scope="module")
def episodes():
    return [synthetic_episode(10, s) for s in range(4)]


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, episodes):
    """A tokenizer trained for a few steps, exported to disk."""
    out = tmp_path_factory.mktemp("tok")
    train = np.concatenate([e["frames"] for e in episodes[:3]])
    train_tokenizer(tiny_train_config(steps=6), train, episodes[3:], out, action_names=ACTIONS)
    return out / "tokenizer"


@pytest.mark.parametrize("quantizer", ["fsq", "vq"])
@pytest.mark.parametrize("downsample", [4, 8])
def test_shapes_dtypes_and_vocabulary(quantizer, downsample):
    torch.manual_seed(0)
    model = build_tokenizer(tokenizer_config("tiny", downsample, quantizer=quantizer)).eval()
    side = 64 // downsample
    assert model.token_grid == (side, side)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    frames[1] = 0
    frames[2] = 255  # extreme inputs must still map into the vocabulary
    for inp in (frames, torch.from_numpy(frames)):
        ids = model.encode(inp)
        assert ids.dtype == torch.int64 and tuple(ids.shape) == (3, side, side)
        assert int(ids.min()) >= 0 and int(ids.max()) < model.vocab_size
    out = model.decode(ids)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (3, 64, 64, 3)
    # any id of the vocabulary decodes; an id outside it is a clear error
    every = torch.arange(side * side).remainder(model.vocab_size).reshape(1, side, side)
    assert model.decode(every).shape == (1, 64, 64, 3)
    with pytest.raises(ConfigError, match="vocab|\\[0, "):
        model.decode(torch.full((1, side, side), model.vocab_size))
    with pytest.raises(ConfigError, match="uint8"):
        model.encode(frames.astype(np.float32))


def test_vq_fast_inference_path_matches_library():
    torch.manual_seed(0)
    quant = build_tokenizer(tokenizer_config("tiny", 4, quantizer="vq")).quantizer
    z = torch.randn(8, quant.dim, 16, 16)
    quant.train()(z)  # k-means initialises the codebook from this batch
    with torch.no_grad():
        q_fast, ids_fast, _ = quant.eval()(z)
        q_lib, ids_lib, _ = quant.vq(rearrange(z, "b d h w -> b (h w) d"))
    # same chosen code vectors (ids may differ only between duplicate codes)
    torch.testing.assert_close(q_fast, rearrange(q_lib, "b (h w) d -> b d h w", h=16))
    assert (ids_fast == rearrange(ids_lib, "b (h w) -> b h w", h=16)).float().mean() > 0.9


def test_presets_parameter_counts():
    counts = {s: sum(p.numel() for p in build_tokenizer(tokenizer_config(s, 4)).parameters())
              for s in ("tiny", "small", "base")}
    assert counts["tiny"] < 200_000 < counts["small"] < counts["base"]
    assert tokenizer_config("small", 4).vocab_size == 1000
    assert tokenizer_config("small", 8, quantizer="vq", vq_codebook_size=2048).vocab_size == 2048
    with pytest.raises(ConfigError, match="size"):
        tokenizer_config("huge")
    with pytest.raises(ConfigError, match="downsample"):
        tokenizer_config("tiny", 3)


def test_code_stats_and_stability_metric(episodes):
    assert code_stats(np.array([5, 5, 0, 0])) == pytest.approx({"perplexity": 2.0, "code_usage": 0.5})
    model = build_tokenizer(tokenizer_config("tiny", 4)).eval()
    still = np.repeat(episodes[0]["frames"][:1], 4, axis=0)
    m = evaluate_tokenizer(model, [{"frames": still, "actions": np.array([-1, 0, 0, 0])}], action_names=ACTIONS)
    assert m["stability"] == 1.0 and m["stability_by_action"] == {"noop": 1.0}
    assert m["stability_static"] == 1.0 and m["static_cells"] == 1.0
    assert np.isnan(m["stability_moved"])  # no pair of frames differs
    m = evaluate_tokenizer(model, [episodes[0]], action_names=ACTIONS)
    assert 0.0 <= m["stability"] <= 1.0 and set(m["stability_by_action"]) <= set(ACTIONS)
    assert m["frames"] == len(episodes[0]["frames"]) and 0 < m["code_usage"] <= 1


def test_max_frames_spreads_over_every_episode(episodes):
    eps = [{"frames": np.full((50, 64, 64, 3), 40 * i, np.uint8)} for i in range(4)]
    picked = spread(eps, 40)
    assert [len(e["frames"]) for e in picked] == [10, 10, 10, 10]
    assert [int(e["frames"][0, 0, 0, 0]) for e in picked] == [0, 40, 80, 120]   # one share from each episode
    assert [len(e["frames"]) for e in spread(eps, 5)] == [2, 2]    # pairs kept: two episodes, not five single frames
    assert spread(eps, None) is eps and sum(len(e["frames"]) for e in spread(eps, 10_000)) == 200
    model = build_tokenizer(tokenizer_config("tiny", 4)).eval()
    assert evaluate_tokenizer(model, episodes[:2], max_frames=20)["frames"] == 20


@pytest.mark.parametrize("grid", [(16, 16), (8, 8)])
def test_static_cells_marks_only_untouched_neighbourhoods(grid):
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    frames[1, 60:, 60:] = 50  # a change in the bottom-right corner only
    frames[1, :8, :8] = 2  # below the tolerance
    static = static_cells(frames, grid)[0]
    assert static.shape == grid
    assert not static[-2:, -2:].any() and static[: grid[0] - 2].all() and static[:, : grid[1] - 2].all()


@pytest.mark.slow
def test_short_training_lowers_reconstruction_error(tmp_path, episodes):
    train = np.concatenate([e["frames"] for e in episodes[:3]])
    torch.manual_seed(0)
    before = evaluate_tokenizer(build_tokenizer(tiny_train_config().model_config()), episodes[3:])["psnr"]
    summary = train_tokenizer(tiny_train_config(steps=40), train, episodes[3:], tmp_path)
    assert summary["steps"] == 40 and summary["restores"] == 0
    assert summary["eval"]["psnr"] > before + 1.0
    for name in ("train_log.csv", "curves.png", "samples.png", "summary.json", f"tokenizer/{WEIGHTS_NAME}"):
        assert (tmp_path / name).is_file(), name
    tok = load_tokenizer(tmp_path)  # a run directory resolves to its tokenizer/
    assert tok.provenance["steps"] == 40 and tok.provenance["train_frames"] == len(train)


@pytest.mark.slow
def test_training_resumes_exactly_after_interruption(tmp_path, episodes, monkeypatch):
    from worldmodel.tokenizer import training as tt

    train = np.concatenate([e["frames"] for e in episodes[:3]])
    cfg = tiny_train_config(steps=8, disc_start=3, disc_ramp=2, quantizer="vq", quant_weight=0.25)
    train_tokenizer(cfg, train, None, tmp_path / "straight")
    original = tt.Trainer.train_step

    def interrupted(self, x):
        if self.step == 5:  # a real Ctrl-C in the middle of step 5
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, x)

    monkeypatch.setattr(tt.Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt, match="resume"):
        train_tokenizer(cfg, train, None, tmp_path / "resumed")
    assert json.loads((tmp_path / "resumed/checkpoints/latest.json").read_text())["step"] == 6
    assert not (tmp_path / "resumed/tokenizer").exists()
    monkeypatch.setattr(tt.Trainer, "train_step", original)
    summary = train_tokenizer(cfg, train, None, tmp_path / "resumed")
    assert summary["steps"] == 8
    a = load_tokenizer(tmp_path / "straight").state_dict()
    b = load_tokenizer(tmp_path / "resumed").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    with pytest.raises(CheckpointError, match="different settings"):
        train_tokenizer(tiny_train_config(steps=10, downsample=8), train, None, tmp_path / "resumed")


@pytest.mark.slow
def test_divergence_guard_restores_and_lowers_lr(tmp_path, episodes, monkeypatch):
    from worldmodel.tokenizer import training as tt

    original, calls = tt.recon_loss, {"n": 0}

    def flaky(cfg, recon, x):
        calls["n"] += 1
        loss = original(cfg, recon, x)
        return loss * float("nan") if calls["n"] == 7 else loss

    monkeypatch.setattr(tt, "recon_loss", flaky)
    train = np.concatenate([e["frames"] for e in episodes[:3]])
    summary = train_tokenizer(tiny_train_config(steps=10, guard_every=3), train, None, tmp_path)
    assert summary["restores"] == 1 and summary["steps"] == 10
    state = json.loads((tmp_path / "checkpoints/step-00000010/state.json").read_text())
    assert state["lr_scale"] == 0.5
    assert all(torch.isfinite(v).all() for v in load_tokenizer(tmp_path).state_dict().values())

    monkeypatch.setattr(tt, "recon_loss", lambda cfg, r, x: original(cfg, r, x) * float("nan"))
    with pytest.raises(MaskFlowError, match="diverged"):
        train_tokenizer(tiny_train_config(steps=10, max_restores=2), train, None, tmp_path / "nan")


@pytest.mark.slow
def test_checkpoint_mismatch_and_corruption_errors(tmp_path, trained_dir):
    tok = load_tokenizer(trained_dir, expect={"resolution": 64, "vocab_size": 1000, "token_grid": (16, 16)})
    assert tok.vocab_size == 1000 and not tok.training
    for key, bad in (("vocab_size", 4096), ("token_grid", (8, 8)), ("resolution", 96), ("quantizer", "vq")):
        with pytest.raises(CheckpointError, match=key):
            load_tokenizer(trained_dir, expect={key: bad})
    # weights of one tokenizer next to the config of another
    other = tmp_path / "other"
    save_tokenizer(build_tokenizer(tokenizer_config("tiny", 4, fsq_levels=(8, 8, 8, 5))), other)
    (other / WEIGHTS_NAME).write_bytes((trained_dir / WEIGHTS_NAME).read_bytes())
    with pytest.raises(CheckpointError, match="does not match its sha256"):   # the JSON's record of its weights
        load_tokenizer(other)
    meta = json.loads((other / CONFIG_NAME).read_text())   # a JSON without that record (older version): the
    meta.pop("integrity")                                  # config digest inside the weights still catches it
    (other / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="different tokenizer config|do not belong"):
        load_tokenizer(other)
    shape_clash = tmp_path / "shape"
    save_tokenizer(build_tokenizer(tokenizer_config("small", 4)), shape_clash)
    (shape_clash / WEIGHTS_NAME).write_bytes((trained_dir / WEIGHTS_NAME).read_bytes())
    with pytest.raises(CheckpointError):
        load_tokenizer(shape_clash)
    # corrupt and truncated files
    for name, data in ((WEIGHTS_NAME, b"\x00garbage" * 10), (CONFIG_NAME, b"{not json")):
        bad = tmp_path / f"bad_{name}"
        bad.mkdir()
        for f in (WEIGHTS_NAME, CONFIG_NAME):
            (bad / f).write_bytes((trained_dir / f).read_bytes())
        (bad / name).write_bytes(data)
        with pytest.raises(CheckpointError, match="corrupt"):
            load_tokenizer(bad)
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    (trunc / CONFIG_NAME).write_bytes((trained_dir / CONFIG_NAME).read_bytes())
    (trunc / WEIGHTS_NAME).write_bytes((trained_dir / WEIGHTS_NAME).read_bytes()[:-100])
    with pytest.raises(CheckpointError):
        load_tokenizer(trunc)
    with pytest.raises(CheckpointError, match="no tokenizer"):
        load_tokenizer(tmp_path / "missing")


def _frames_dataset(root, episodes):
    from envs.dataset import write_dataset

    eps = [dict(e, id=i) for i, e in enumerate(episodes)]
    write_dataset(root, eps[:3], split="train", action_meanings=ACTIONS, episodes_per_shard=1)
    write_dataset(root, eps[3:], split="test", action_meanings=ACTIONS, episodes_per_shard=1)
    return root


@pytest.mark.slow
def test_tokenize_round_trip_and_resume(tmp_path, episodes, trained_dir, monkeypatch, kill_on_call):
    from envs.dataset import EpisodeDataset, load_manifest
    from worldmodel.tokenizer import tokenize as tz

    src = _frames_dataset(tmp_path / "frames", episodes)
    model = load_tokenizer(trained_dir)
    original = kill_on_call(tz, "write_shard", 3, RuntimeError("killed"))
    with pytest.raises(RuntimeError, match="killed"):
        tz.tokenize_dataset(src, trained_dir, tmp_path / "tokens", batch_size=4, progress=False)
    m = load_manifest(tmp_path / "tokens")
    assert not m["complete"] and len(m["shards"]) == 2
    first = tmp_path / "tokens" / m["shards"][0]["file"]
    stamp = first.stat().st_mtime_ns
    monkeypatch.setattr(tz, "write_shard", original)
    tz.tokenize_dataset(src, trained_dir, tmp_path / "tokens", batch_size=4, progress=False)
    assert first.stat().st_mtime_ns == stamp  # finished shards are verified and skipped
    m = load_manifest(tmp_path / "tokens")
    assert m["complete"] and m["kind"] == "tokens" and len(m["shards"]) == 4
    assert m["tokenizer"]["weights_sha256"] and m["tokenizer"]["config"]["quantizer"] == "fsq"
    for split, idx in (("train", range(3)), ("test", [3])):
        ds = EpisodeDataset(tmp_path / "tokens", split)
        for j, i in enumerate(idx):
            ep, ref = ds.episode(j), episodes[i]
            assert ep["tokens"].dtype == np.uint16 and ep["tokens"].shape == (10, 16, 16)
            assert np.array_equal(ep["tokens"], model.encode(ref["frames"]).numpy())
            for k in ("actions", "rewards", "terminated", "truncated"):
                assert np.array_equal(ep[k], ref[k]), k
            assert ep["attrs"]["layout"] == ref["attrs"]["layout"]
            # round trip: decoding the stored tokens gives the tokenizer's reconstruction
            recon = model.decode(ep["tokens"]).numpy()
            assert np.array_equal(recon, model.decode(model.encode(ref["frames"])).numpy())
            assert np.abs(recon.astype(int) - ref["frames"]).mean() < 128
    # another tokenizer must not silently overwrite this output
    other = tmp_path / "other_tok"
    save_tokenizer(build_tokenizer(tokenizer_config("tiny", 8)), other)
    with pytest.raises(DatasetError, match="overwrite"):
        tz.tokenize_dataset(src, other, tmp_path / "tokens", progress=False)
    tz.tokenize_dataset(src, other, tmp_path / "tokens", overwrite=True, progress=False)
    assert EpisodeDataset(tmp_path / "tokens", "train").episode(0)["tokens"].shape == (10, 8, 8)
    with pytest.raises(CheckpointError, match="resolution"):
        tz.tokenize_dataset(src, _tok_96(tmp_path), tmp_path / "tokens96", progress=False)


def _tok_96(tmp_path):
    out = tmp_path / "tok96"
    save_tokenizer(build_tokenizer(tokenizer_config("tiny", 4, resolution=96)), out)
    return out


@pytest.mark.slow
def test_cli_entry_points(tmp_path, tiny_frames_dataset):
    from envs.dataset import EpisodeDataset
    from worldmodel.cli import run

    out = tmp_path / "run"
    summary = run("train-tokenizer", [f"data={tiny_frames_dataset}", f"out={out}", "size=tiny", "steps=3",
                                      "batch_size=4", "warmup=1", "final_eval_frames=8", "threads=1"])
    assert summary["steps"] == 3 and (out / "tokenizer" / WEIGHTS_NAME).is_file()
    assert set(summary["eval"]["stability_by_action"]) <= set(EpisodeDataset(tiny_frames_dataset).action_meanings)
    tokens = run("tokenize", [f"data={tiny_frames_dataset}", f"checkpoint={out}", f"out={tmp_path / 'tok'}"])
    src, dst = EpisodeDataset(tiny_frames_dataset, "test"), EpisodeDataset(tokens, "test")
    assert len(src) == len(dst) and dst.episode(0)["tokens"].shape[0] == src.episode(0)["frames"].shape[0]


def test_pairs_of_consecutive_frames_and_the_stability_term():
    from worldmodel.tokenizer.data import sample_batch
    from worldmodel.tokenizer.training import stability_loss

    frames = np.stack([np.full((64, 64, 3), i, np.uint8) for i in range(50)])
    frames[:, :, :32] = 0                               # an asymmetric picture, so that a flip shows
    x = sample_batch(frames, 8, np.random.default_rng(0), True, torch.device("cpu"), pairs=True)
    first, second = x[:4], x[4:]
    # frame i + 1 after frame i, both flipped alike (the right half carries the frame's index)
    assert torch.allclose(second.amax((1, 2, 3)) - first.amax((1, 2, 3)), torch.full((4,), 1 / 127.5), atol=1e-6)
    assert torch.equal(first.argmax(-1), second.argmax(-1))
    # the pull is on where the picture barely moved, off where it changed
    z = torch.zeros(4, 4, 16, 16)
    z[2:] = 1.0                                         # every latent of the second frames moved by 1 in 4 dims
    still = torch.zeros(4, 3, 64, 64)
    assert stability_loss(z, still, 0.02).item() == pytest.approx(4.0)
    moved = still.clone()
    moved[2:] = 1.0                                     # every pixel changed by 1 (half the range)
    assert stability_loss(z, moved, 0.02).item() == pytest.approx(0.0, abs=1e-6)   # nothing barely moved: no pull
    moved[2:, :, :32] = 0.0                             # the top half still, the bottom half changed
    z[2:, :, 8:] = 5.0
    assert stability_loss(z, moved, 0.02).item() == pytest.approx(4.0, rel=1e-3)  # the changed half barely counts
    with pytest.raises(ConfigError, match="batch_size"):
        tiny_train_config(stability_weight=1.0, batch_size=5)
    with pytest.raises(ConfigError, match="freeze_encoder"):
        TokenizerTrainConfig(init="default", freeze_encoder=True, stability_weight=1.0)


@pytest.mark.slow
def test_the_stability_term_pulls_consecutive_latents_together(tmp_path, episodes):
    from worldmodel.tokenizer.training import Trainer

    train = np.concatenate([e["frames"] for e in episodes[:3]])
    val = episodes[3]["frames"]

    def latent_gap(stability_weight: float) -> tuple[float, list[str]]:
        torch.manual_seed(0)
        cfg = tiny_train_config(steps=30, batch_size=8, stability_weight=stability_weight, stability_tol=1.0)
        out = tmp_path / f"w{stability_weight}"
        train_tokenizer(cfg, train, episodes[3:], out)
        tr = Trainer(cfg, torch.device("cpu"))
        tr.resume(out, np.random.default_rng(0))
        with torch.no_grad():
            x = tr.model.frames_to_input(val)
            b = tr.model.quantizer.bounded(tr.model.encoder(x))
        columns = (out / "train_log.csv").read_text().splitlines()[0].split(",")
        return float((b[1:] - b[:-1]).pow(2).sum(1).mean()), columns

    off, cols_off = latent_gap(0.0)
    on, cols_on = latent_gap(10.0)
    assert on < 0.8 * off, (on, off)
    assert "tokenizer/train/same_ids" in cols_on and "tokenizer/train/same_ids" not in cols_off
