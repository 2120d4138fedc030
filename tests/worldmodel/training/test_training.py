"""World-model training: learning, action conditioning, DDP equivalence, exact resume, checkpoint errors."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket

import numpy as np
import pytest
import torch

from envs.common.errors import CheckpointError, ConfigError, DatasetError
from envs.common.files import load_weights
from envs.dataset import write_dataset
from worldmodel.model.checkpoint import load_world_model, resolve_checkpoint
from worldmodel.training.loop import TrainConfig, train

V, GRID, ACTIONS = 16, (4, 4), ["noop", "forward", "left", "right"]


def painted_episodes(n: int, length: int, seed: int, first_id: int = 0) -> list[dict]:
    """A static random background (ids 0..11); the top token row shows the last action a as id 12 + a.
    Reward 1 after action 1; the last frame terminates. The next frame is the previous one with the
    top row repainted, so it is predictable exactly when the action is known."""
    rng = np.random.default_rng(seed)
    eps = []
    for e in range(n):
        bg = rng.integers(0, 12, size=GRID)
        acts = np.concatenate([[-1], rng.integers(0, len(ACTIONS), size=length - 1)])
        frames = np.repeat(bg[None], length, axis=0)
        frames[1:, 0, :] = 12 + acts[1:, None]
        term = np.zeros(length, bool)
        term[-1] = True
        eps.append({"id": first_id + e, "tokens": frames, "actions": acts, "rewards": (acts == 1).astype(np.float32),
                    "terminated": term, "truncated": np.zeros(length, bool), "attrs": {"seed": e}})
    return eps


@pytest.fixture(scope="module")
def painted_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("painted") / "tokens"
    write_dataset(root, painted_episodes(12, 24, 0), "train", "tokens", "synthetic", ACTIONS)
    write_dataset(root, painted_episodes(4, 24, 1, first_id=100), "test", "tokens", "synthetic", ACTIONS)
    return root


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(size="tiny", clip_len=4, batch_size=8, lr=2e-3, warmup_steps=5, vocab_size=V, eval_every=0,
                ckpt_every=1000, log_every=1, device="cpu", threads=1, progress=False, tensorboard=False)
    return TrainConfig(**{**base, **kw})


def rows(out) -> list[dict]:
    import csv

    with open(out / "train_log.csv") as f:
        return [{k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f)]


@pytest.mark.slow
def test_loss_falls_and_actions_steer_the_next_frame(painted_data, tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_cfg(steps=250, lr=3e-3, ema_decay=0.95, eval_every=250, eval_clips=16), painted_data, out)
    r = rows(out)
    first = np.mean([x["masked_ce"] for x in r[:10]])
    last = np.mean([x["masked_ce"] for x in r[-20:]])
    assert first > 0.8 * math.log(V) and last < 0.6 * first, (first, last)
    ev = summary["eval"]          # held-out: the repainted row is predicted from the action alone
    assert ev["acc_next_changed"] > 0.8 and ev["acc_next"] > ev["acc_next_noaction"] + 0.1, ev
    # The exported model paints the top row with whichever action it is given.
    model, tokenizer, meta = load_world_model(out)
    assert tokenizer is None and meta["action_space"]["meanings"] == ACTIONS
    ep = painted_episodes(1, 4, 7)[0]
    tok = torch.as_tensor(ep["tokens"][None]).long()
    tok[:, -1] = model.cfg.mask_id
    t = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    top = []
    with torch.no_grad():
        for a in range(len(ACTIONS)):
            acts = torch.as_tensor(ep["actions"][None]).long()
            acts[0, -1] = a
            top.append(model(tok, t, acts).logits[0, -1, 0].argmax(-1))
    hits = sum(int((row == 12 + a).sum()) for a, row in enumerate(top))
    assert hits >= 0.75 * len(ACTIONS) * GRID[1], top
    for name in ("curves.png", "model.safetensors", "model.json", "summary.json"):
        assert (out / name).is_file()


@pytest.mark.slow
def test_resume_reproduces_the_next_steps_exactly(painted_data, tmp_path, capsys):
    """Also: extending a run (more steps) says so on resume, naming what changed."""
    full = tmp_path / "full"
    train(tiny_cfg(steps=6, ckpt_every=3, clean_context_prob=0.5), painted_data, full)
    part = tmp_path / "part"
    train(tiny_cfg(steps=3, ckpt_every=3, clean_context_prob=0.5), painted_data, part)
    assert "changed settings" not in capsys.readouterr().out
    train(tiny_cfg(steps=6, ckpt_every=3, clean_context_prob=0.5, eval_clips=8), painted_data, part)  # resumes at 3
    said = capsys.readouterr().out
    assert "resumed at step 3" in said and "with changed settings: steps 3 -> 6." in said     # eval_clips: run-only
    a, b = rows(full), rows(part)
    assert [x["step"] for x in b] == [1, 2, 3, 4, 5, 6]
    assert [x["loss"] for x in a] == [x["loss"] for x in b]
    wa = load_weights(full / "model.safetensors")
    wb = load_weights(part / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sharded_sampler_covers_each_epoch_once_with_disjoint_rank_shards():
    from worldmodel.training.data import ShardedSampler

    n, batch = 23, 6
    global_ = ShardedSampler(n, batch, seed=5)
    ranks = [ShardedSampler(n, batch, seed=5, rank=r, world_size=3) for r in range(3)]
    stream = np.concatenate([global_.global_indices(s) for s in range(8)])       # 48 draws = 2 epochs + 2
    assert sorted(stream[:n]) == list(range(n)) and sorted(stream[n: 2 * n]) == list(range(n))
    assert not np.array_equal(stream[:n], stream[n: 2 * n])                       # reshuffled per epoch
    for s in range(8):
        shards = [r.indices(s) for r in ranks]
        assert np.array_equal(np.concatenate(shards), global_.global_indices(s))
    with pytest.raises(DatasetError, match="divisible"):
        ShardedSampler(n, 7, seed=0, rank=0, world_size=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    train(tiny_cfg(steps=2, precision="fp32", clean_context_prob=0.5, token_noise=0.3), data, out)


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_one_process(painted_data, tmp_path):
    single = tmp_path / "single"
    train(tiny_cfg(steps=2, precision="fp32", clean_context_prob=0.5, token_noise=0.3), painted_data, single)
    ddp = tmp_path / "ddp"
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(painted_data), str(ddp)), nprocs=2)
    sa = load_weights(next((single / "state").glob("step-*")) / "state.safetensors")
    sb = load_weights(next((ddp / "state").glob("step-*")) / "state.safetensors")
    keys = [k for k in sa if k.startswith("model/")]
    assert keys and all(k in sb for k in keys)
    for k in keys:
        torch.testing.assert_close(sa[k], sb[k], atol=2e-6, rtol=1e-5, msg=k)
    # the clipped global gradient norm is computed after the all-reduce: the same in both runs
    assert [r["grad_norm"] for r in rows(single)] == pytest.approx([r["grad_norm"] for r in rows(ddp)], rel=1e-5)


def test_dataset_errors_are_clear(painted_data, tmp_path):
    with pytest.raises(DatasetError, match="vocabulary"):
        train(tiny_cfg(steps=1, vocab_size=8), painted_data, tmp_path / "a")
    with pytest.raises(DatasetError, match="vocab_size"):
        train(tiny_cfg(steps=1, vocab_size=0), painted_data, tmp_path / "b")
    with pytest.raises(DatasetError, match="clip_len"):
        train(tiny_cfg(steps=1, clip_len=40), painted_data, tmp_path / "c")


@pytest.mark.slow
def test_mismatched_or_corrupt_checkpoints_raise_checkpoint_errors(painted_data, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(steps=2), painted_data, out)
    with pytest.raises(CheckpointError, match="different model"):
        train(tiny_cfg(steps=4, temporal="bidirectional"), painted_data, out)
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    meta = json.loads((bad / "model.json").read_text())
    meta["model"]["dim"] = 32
    meta["model"]["heads"] = 2
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="different model config|does not match"):
        load_world_model(bad)
    (bad / "model.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_world_model(bad)
    shutil.copy(out / "model.json", bad / "model.json")
    (bad / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_world_model(bad)
    with pytest.raises(CheckpointError, match="no world model"):
        resolve_checkpoint(tmp_path / "nothing")


def _with_tokenizer(data, tmp_path, seed: int = 0):
    """A copy of ``data`` whose manifest records a (tiny, untrained) tokenizer of the same vocabulary/grid."""
    from envs.dataset import write_manifest
    from worldmodel.tokenizer.files import save_tokenizer
    from worldmodel.tokenizer.model import build_tokenizer, tokenizer_config
    from worldmodel.tokenizer.tokenize import tokenizer_record

    torch.manual_seed(seed)
    tok_dir = tmp_path / f"tokenizer{seed}"
    save_tokenizer(build_tokenizer(tokenizer_config("tiny", downsample=16, fsq_levels=(4, 4))), tok_dir)
    root = tmp_path / f"data{seed}"
    shutil.copytree(data, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["tokenizer"] = tokenizer_record(tok_dir)
    write_manifest(root, manifest)
    return root, tok_dir


@pytest.mark.slow
def test_checkpoint_dir_is_self_contained_and_guards_its_tokenizer(painted_data, tmp_path):
    from worldmodel.cli import run

    data, tok_dir = _with_tokenizer(painted_data, tmp_path)
    out = tmp_path / "run"
    run("train", [f"data={data}", f"out={out}", "size=tiny", "steps=2", "clip_len=4", "batch_size=4",
                  "threads=1", "progress=false", "tensorboard=false", "eval_every=0"])
    moved = tmp_path / "moved"
    shutil.move(str(out), moved)
    shutil.rmtree(tok_dir)                                      # the original tokenizer is gone
    model, tokenizer, meta = load_world_model(moved)
    assert tokenizer.vocab_size == model.cfg.vocab_size == V and tuple(tokenizer.token_grid) == GRID
    assert meta["env_id"] == "synthetic" and meta["action_space"]["n"] == len(ACTIONS)
    assert meta["train_config"]["size"] == "tiny" and meta["window"] == 4
    _, other = _with_tokenizer(painted_data, tmp_path, seed=1)  # same shapes, different weights
    shutil.copy(other / "tokenizer.safetensors", moved / "tokenizer" / "tokenizer.safetensors")
    with pytest.raises(CheckpointError, match="not the tokenizer"):
        load_world_model(moved)


def test_lr_schedule_warmup_stable_cooldown(tmp_path):
    from worldmodel.training.loop import TrainConfig, lr_at, train
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, steps=100, cooldown_steps=20)
    assert lr_at(0, cfg) == pytest.approx(1e-4)               # warmup: (step + 1) / 10
    assert lr_at(50, cfg) == pytest.approx(1e-3)              # stable
    assert lr_at(80, cfg) == pytest.approx(1e-3)              # cooldown starts at steps - 20
    assert lr_at(90, cfg) == pytest.approx(5e-4)
    assert lr_at(99, cfg) == pytest.approx(5e-5)
    assert lr_at(50, TrainConfig(lr=1e-3, warmup_steps=10, steps=100)) == pytest.approx(1e-3)   # no cooldown
    with pytest.raises(ConfigError, match="cooldown_steps"):
        train(TrainConfig(data=str(tmp_path), steps=10, cooldown_steps=11))


@pytest.mark.slow
def test_patch_override_is_trained_recorded_and_reloaded(painted_data, tmp_path):
    train(tiny_cfg(steps=2, patch=1), painted_data, tmp_path / "p1")
    meta = json.loads((tmp_path / "p1" / "model.json").read_text())
    assert meta["model"]["patch"] == 1
    model, _, _ = load_world_model(tmp_path / "p1")
    assert model.cfg.patch == 1 and model.cfg.positions == GRID[0] * GRID[1]
    with pytest.raises(ConfigError, match="not divisible by patch 3"):
        train(tiny_cfg(steps=1, patch=3), painted_data, tmp_path / "p3")


def test_token_noise_replaces_visible_tokens_only_and_leaves_other_draws_alone():
    from worldmodel.model.latte import Latte, model_config
    from worldmodel.objective.loss import ClipBatch, MaskFlowObjective, ObjectiveConfig, draw_step

    plain, noisy_cfg = ObjectiveConfig(), ObjectiveConfig(token_noise=0.4)
    a = draw_step(64, 4, GRID, plain, torch.Generator().manual_seed(3))
    b = draw_step(64, 4, GRID, noisy_cfg, torch.Generator().manual_seed(3), vocab_size=V)
    assert a.noise is None and all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("t", "uniform", "drop"))
    hit = b.noise >= 0
    assert b.noise.max() < V and 0.15 < hit.float().mean() < 0.25          # level ~ U(0, 0.4): mean 0.2
    with pytest.raises(ConfigError, match="token_noise"):
        ObjectiveConfig(token_noise=1.0)
    with pytest.raises(ConfigError, match="vocabulary size"):
        draw_step(2, 4, GRID, noisy_cfg, torch.Generator())

    model = Latte(model_config("tiny", vocab_size=V, token_grid=GRID, max_frames=4, num_actions=len(ACTIONS)))
    objective = MaskFlowObjective(model, noisy_cfg)
    seen, features = {}, objective.features

    def spy(tokens, t, actions, *heading):  # what the backbone is given
        seen["x"] = tokens
        return features(tokens, t, actions, *heading)

    objective.features = spy
    ep = painted_episodes(64, 4, 5)
    batch = ClipBatch(tokens=torch.as_tensor(np.stack([e["tokens"] for e in ep])).long(),
                      actions=torch.as_tensor(np.stack([e["actions"] for e in ep])).long().clamp_min(0),
                      rewards=torch.zeros(64, 4), terminated=torch.zeros(64, 4, dtype=torch.bool))
    loss, _ = objective(batch, b, objective.global_counts(b))
    x, masked = seen["x"], seen["x"] == model.cfg.mask_id
    assert torch.isfinite(loss) and masked.any()
    swapped = hit & ~masked
    assert torch.equal(x[swapped], b.noise[swapped])                         # visible + hit: the random id
    assert torch.equal(x[~hit & ~masked], batch.tokens[~hit & ~masked])      # the rest of the visible: real
    clean = draw_step(64, 4, GRID, plain, torch.Generator().manual_seed(3))
    objective(batch, clean, objective.global_counts(clean))
    assert torch.equal(seen["x"] == model.cfg.mask_id, masked)               # noise never unmasks a token


@pytest.mark.slow
def test_init_fine_tunes_from_a_checkpoint_and_checks_that_it_fits(painted_data, tmp_path):
    from envs.common.files import sha256_file

    data, _ = _with_tokenizer(painted_data, tmp_path)
    base = tmp_path / "base"
    train(tiny_cfg(steps=20), data, base)
    # lr ~ 0: one fine-tuning step keeps the checkpoint's weights, so the start really is the checkpoint
    ft = tmp_path / "ft"
    train(tiny_cfg(steps=1, init=str(base), lr=1e-12, token_noise=0.2, size="small"), data, ft)
    wa, wb = load_weights(base / "model.safetensors"), load_weights(ft / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    fresh = tmp_path / "fresh"
    train(tiny_cfg(steps=1, lr=1e-12), data, fresh)
    assert not all(torch.allclose(wa[k], w, atol=1e-3) for k, w in load_weights(fresh / "model.safetensors").items())
    meta = json.loads((ft / "model.json").read_text())
    assert meta["model"] == json.loads((base / "model.json").read_text())["model"]     # its architecture, not size=
    assert meta["init"]["weights_sha256"] == sha256_file(base / "model.safetensors")
    assert meta["init"]["train_step"] == 20
    # the fine-tune resumes like any run
    train(tiny_cfg(steps=3, init=str(base)), data, ft)
    assert [r["step"] for r in rows(ft)] == [1, 2, 3]

    with pytest.raises(ConfigError, match="fixes the architecture; drop dim="):
        train(tiny_cfg(steps=1, init=str(base), dim=32), data, tmp_path / "e1")
    with pytest.raises(ConfigError, match="window 4 frames vs clip_len=3 .a causal model's window may only grow"):
        train(tiny_cfg(steps=1, init=str(base), clip_len=3), data, tmp_path / "e2")
    # a longer window: the same weights (rotary temporal positions), recorded as the new window
    wide = tmp_path / "wide"
    train(tiny_cfg(steps=1, init=str(base), clip_len=6, lr=1e-12), data, wide)
    ww = load_weights(wide / "model.safetensors")
    assert ww.keys() == wa.keys() and all(torch.allclose(wa[k], ww[k], atol=1e-6) for k in wa)
    assert json.loads((wide / "model.json").read_text())["model"]["max_frames"] == 6
    # heading rotary on a model trained without it: no new weights, recorded with the actions' turns
    head = tmp_path / "head"
    train(tiny_cfg(steps=1, init=str(base), heading_pairs=2, lr=1e-12), data, head)
    wh = load_weights(head / "model.safetensors")
    assert wh.keys() == wa.keys() and all(torch.allclose(wa[k], wh[k], atol=1e-6) for k in wa)
    recorded = json.loads((head / "model.json").read_text())["model"]
    assert recorded["heading_pairs"] == 2 and recorded["action_yaw"] == [0.0] * len(ACTIONS)   # no turn_* names
    assert load_world_model(head)[0].cfg.heading_pairs == 2
    other, _ = _with_tokenizer(painted_data, tmp_path, seed=1)
    with pytest.raises(ConfigError, match="not the one that made this dataset"):
        train(tiny_cfg(steps=1, init=str(base)), other, tmp_path / "e3")
    # carried over to the other encoder's ids on purpose: the ids' embedding (but the [M] row) and the output
    # linear restart as at initialisation, every other weight is the init's
    moved = tmp_path / "moved"
    train(tiny_cfg(steps=1, init=str(base), new_tokenizer=True, lr=1e-12), other, moved)
    wm = load_weights(moved / "model.safetensors")
    mask = json.loads((base / "model.json").read_text())["mask_id"]
    io = {"tok_embed.weight", "final.linear.weight", "final.linear.bias"}
    assert all(torch.allclose(wa[k], wm[k], atol=1e-6) for k in wa if k not in io)
    assert torch.allclose(wa["tok_embed.weight"][mask], wm["tok_embed.weight"][mask], atol=1e-6)
    assert not torch.allclose(wa["tok_embed.weight"][:mask], wm["tok_embed.weight"][:mask], atol=1e-3)
    assert wm["final.linear.weight"].abs().max() < 1e-6 < wa["final.linear.weight"].abs().max()
    assert json.loads((moved / "model.json").read_text())["tokenizer"]["weights_sha256"] == \
        json.loads((other / "manifest.json").read_text())["tokenizer"]["weights_sha256"]
    # keep_token_io: an encoder trained on from the init's; every weight carries over
    kept = tmp_path / "kept"
    train(tiny_cfg(steps=1, init=str(base), new_tokenizer=True, keep_token_io=True, lr=1e-12), other, kept)
    wk = load_weights(kept / "model.safetensors")
    assert all(torch.allclose(wa[k], wk[k], atol=1e-6) for k in wa)
    with pytest.raises(ConfigError, match="keep_token_io=true needs new_tokenizer=true"):
        train(tiny_cfg(steps=1, init=str(base), keep_token_io=True), other, tmp_path / "e8")
    with pytest.raises(ConfigError, match="drop new_tokenizer"):
        train(tiny_cfg(steps=1, init=str(base), new_tokenizer=True), data, tmp_path / "e6")
    with pytest.raises(ConfigError, match="new_tokenizer=true needs init"):
        train(tiny_cfg(steps=1, new_tokenizer=True), other, tmp_path / "e7")
    renamed = tmp_path / "renamed"
    write_dataset(renamed, painted_episodes(4, 8, 0), "train", "tokens", "synthetic", ["noop", "a", "b", "c"])
    with pytest.raises(ConfigError, match="actions"):
        train(tiny_cfg(steps=1, init=str(base)), renamed, tmp_path / "e4")
    with pytest.raises(CheckpointError, match="no world model"):
        train(tiny_cfg(steps=1, init=str(tmp_path / "nothing")), data, tmp_path / "e5")


@pytest.mark.slow
def test_several_token_datasets_train_as_one_and_must_agree(painted_data, tmp_path):
    from worldmodel.cli import run
    from worldmodel.training.data import TokenClips

    more = tmp_path / "more"                                    # a second collection: train split only
    write_dataset(more, painted_episodes(6, 20, 2, first_id=200), "train", "tokens", "synthetic", ACTIONS)
    one, two = TokenClips(painted_data, "train", 4), TokenClips(more, "train", 4)
    both = TokenClips([painted_data, more], "train", 4)
    assert len(both) == len(one) + len(two) == 12 * 21 + 6 * 17
    assert np.array_equal(both.batch(np.array([len(one)])).tokens, two.batch(np.array([0])).tokens)
    assert len(TokenClips([painted_data, more], "test", 4)) == len(TokenClips(painted_data, "test", 4))
    out = tmp_path / "run"
    run("train", [f"data=[{painted_data},{more}]", f"out={out}", "size=tiny", "steps=2", "clip_len=4",
                  "batch_size=4", "vocab_size=16", "threads=1", "progress=false", "tensorboard=false",
                  "eval_every=1"])
    meta = json.loads((out / "model.json").read_text())
    assert meta["train_config"]["data"] == [str(painted_data), str(more)] and meta["eval"]["acc_next"] >= 0
    # resuming needs the same datasets in the same order (the batch order refers to their clips)
    for wrong in ([painted_data], [more, painted_data]):
        with pytest.raises(ConfigError, match=r"trained on \[tokens \(12 episodes, 288 frames\), more \(6 episodes"):
            train(tiny_cfg(steps=3, clip_len=4, batch_size=4, eval_every=0), wrong, out)
    assert json.loads((out / "state" / "latest.json").read_text())["step"] == 2     # nothing was overwritten
    train(tiny_cfg(steps=3, clip_len=4, batch_size=4, eval_every=0), [painted_data, more], out)
    assert json.loads((out / "state" / "latest.json").read_text())["step"] == 3
    with pytest.raises(ConfigError, match="twice"):
        train(tiny_cfg(steps=1), [painted_data, painted_data], tmp_path / "twice")
    other = tmp_path / "other_actions"
    write_dataset(other, painted_episodes(2, 20, 3), "train", "tokens", "synthetic", ["a", "b", "c", "d"])
    with pytest.raises(DatasetError, match="cannot be trained on together: actions"):
        TokenClips([painted_data, other], "train", 4)
    a, _ = _with_tokenizer(painted_data, tmp_path, seed=0)
    b, _ = _with_tokenizer(painted_data, tmp_path, seed=1)
    with pytest.raises(DatasetError, match="different tokenizers"):
        train(tiny_cfg(steps=1), [a, b], tmp_path / "mixed")


def test_heads_only_retrains_the_reward_heads_and_keeps_every_other_weight_bit_for_bit(painted_data, tmp_path):
    """A reward fine-tune that leaves the dream's frames exactly as they were (the rewards: forward moves)."""
    data, _ = _with_tokenizer(painted_data, tmp_path)
    base = tmp_path / "base"
    train(tiny_cfg(steps=20, reward_weight=0.0), data, base)          # heads untrained: nothing to keep there
    ft = tmp_path / "ft"
    cfg = dict(init=str(base), heads_only=True, reward_weight=1.0, clean_context_prob=1.0, lr=3e-3)
    train(tiny_cfg(steps=40, **cfg), data, ft)
    wa, wb = load_weights(base / "model.safetensors"), load_weights(ft / "model.safetensors")
    heads = {k for k in wa if k.startswith("frame_heads.")}
    assert heads and wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa.keys() - heads)
    assert not all(torch.equal(wa[k], wb[k]) for k in heads)
    bce = [r["reward_bce"] for r in rows(ft)]
    assert np.mean(bce[-10:]) < 0.8 * np.mean(bce[:5]), bce              # the heads learned the rewards
    train(tiny_cfg(steps=42, **cfg), data, ft)                          # resumes with its heads-only optimizer
    assert [r["step"] for r in rows(ft)][-2:] == [41, 42]
    assert all(torch.equal(wa[k], w) for k, w in load_weights(ft / "model.safetensors").items() if k not in heads)
    with pytest.raises(ConfigError, match="heads_only=true needs init="):
        train(tiny_cfg(steps=1, heads_only=True), data, tmp_path / "e")


def test_reward_pos_weight_scales_the_heads_loss_on_goal_frames_only():
    from worldmodel.model.latte import Latte, model_config
    from worldmodel.objective.loss import ClipBatch, MaskFlowObjective, ObjectiveConfig, draw_step

    with pytest.raises(ConfigError, match="reward_pos_weight"):
        ObjectiveConfig(reward_pos_weight=0.0)
    torch.manual_seed(0)
    model = Latte(model_config("tiny", vocab_size=V, token_grid=GRID, max_frames=4, num_actions=len(ACTIONS)))
    ep = painted_episodes(8, 4, 5)
    tokens = torch.as_tensor(np.stack([e["tokens"] for e in ep])).long()
    actions = torch.as_tensor(np.stack([e["actions"] for e in ep])).long().clamp_min(0)
    no_goal = ClipBatch(tokens, actions, torch.zeros(8, 4), torch.zeros(8, 4, dtype=torch.bool))
    goal = ClipBatch(tokens, actions, torch.zeros(8, 4).index_fill_(1, torch.tensor([3]), 1.0),
                     torch.zeros(8, 4, dtype=torch.bool))
    draws = draw_step(8, 4, GRID, ObjectiveConfig(), torch.Generator().manual_seed(1))
    draws.t[:, 3] = 1.0                                   # the goal frames are clean (t = 1): the heads learn there
    logs = {}
    for w in (1.0, 10.0):
        objective = MaskFlowObjective(model, ObjectiveConfig(reward_pos_weight=w))
        for name, batch in (("none", no_goal), ("goal", goal)):
            logs[(w, name)] = objective(batch, draws, objective.global_counts(draws), with_metrics=True)[1]
    # zero-initialised heads predict p = 0.5: a negative costs log 2 whatever the weight, a positive w log 2
    assert logs[(1.0, "none")]["reward_bce"] == pytest.approx(logs[(10.0, "none")]["reward_bce"])
    assert logs[(10.0, "goal")]["reward_bce"] > 2 * logs[(1.0, "goal")]["reward_bce"]


def test_reward_early_labels_the_frames_before_each_reward_within_its_episode(tmp_path):
    from worldmodel.training.data import TokenClips

    eps = painted_episodes(2, 8, 3)
    for e, at in zip(eps, ([3, 7], [0, 5])):            # a reward mid-episode, one at each episode's edge
        e["rewards"] = np.zeros(8, np.float32)
        e["rewards"][at] = 1.0
    root = tmp_path / "tokens"
    write_dataset(root, eps, "train", "tokens", "synthetic", ACTIONS)
    plain, early = TokenClips(root, "train", 4).rewards, TokenClips(root, "train", 4, reward_early=2).rewards
    assert np.flatnonzero(plain).tolist() == [3, 7, 8, 13]
    # frames 1-3 and 5-7 of episode 0; frame 0 and 3-5 of episode 1: nothing spills into episode 0's end
    assert np.flatnonzero(early).tolist() == [1, 2, 3, 5, 6, 7, 8, 11, 12, 13]
    with pytest.raises(ConfigError, match="reward_early"):
        tiny_cfg(reward_early=-1).validate()


def test_self_context_spans_are_bounded_and_leave_the_other_draws_alone():
    from worldmodel.objective.loss import ObjectiveConfig, draw_step
    from worldmodel.training.self_context import clean_span, draw_span

    g = torch.Generator().manual_seed(0)
    spans = [draw_span(8, 1.0, 3, g) for _ in range(300)]
    assert all(1 <= s and 1 <= j <= 3 and s + j <= 7 for s, j in spans)
    assert {s for s, _ in spans} == set(range(1, 7)) and {j for _, j in spans} == {1, 2, 3}
    g0, g1 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert all(draw_span(8, 0.0, 3, g0) is None for _ in range(50))
    [draw_span(8, 1.0, 3, g1) for _ in range(50)]
    assert torch.equal(torch.rand(4, generator=g0), torch.rand(4, generator=g1))   # same stream either way
    draws = draw_step(2, 6, GRID, ObjectiveConfig(), torch.Generator().manual_seed(2))
    clean = clean_span(draws, (2, 3))
    assert (clean.t[:, 2:5] == 1).all() and torch.equal(clean.t[:, :2], draws.t[:, :2])
    assert torch.equal(clean.t[:, 5:], draws.t[:, 5:]) and not (draws.t[:, 2:5] == 1).all()


@pytest.mark.slow
def test_self_context_dreams_the_span_and_trains_on_the_real_frames_around_it(painted_data, tmp_path):
    """dream_span replaces exactly the span, by the model's own imagination of it; a training run with
    self_context=1 takes no loss there (the span's frames are clean) and still learns."""
    from worldmodel.objective.loss import ClipBatch
    from worldmodel.training.data import TokenClips
    from worldmodel.training.self_context import dream_span

    base = tmp_path / "base"
    train(tiny_cfg(steps=40, lr=3e-3, clip_len=6), painted_data, base)
    model, _, _ = load_world_model(base)
    clips = TokenClips([painted_data], "train", 6)
    batch = clips.batch(np.arange(4))
    out = dream_span(model, batch, (2, 3), 2, torch.Generator().manual_seed(0))
    assert torch.equal(out.tokens[:, :2], batch.tokens[:, :2]) and torch.equal(out.tokens[:, 5:], batch.tokens[:, 5:])
    assert torch.equal(out.actions, batch.actions) and not torch.equal(out.tokens[:, 2:5], batch.tokens[:, 2:5])
    again = dream_span(model, batch, (2, 3), 2, torch.Generator().manual_seed(0))
    assert torch.equal(out.tokens, again.tokens)                     # seeded: the same dream
    assert isinstance(out, ClipBatch) and int(out.tokens.max()) < V
    run = tmp_path / "self"
    train(tiny_cfg(steps=30, lr=3e-3, clip_len=6, self_context=1.0, self_context_frames=3, init=str(base)),
          painted_data, run)
    assert np.isfinite([r["loss"] for r in rows(run)]).all()
    with pytest.raises(ConfigError, match="self_context=0.5 needs clip_len >= 3"):
        tiny_cfg(self_context=0.5, clip_len=2).validate()
    with pytest.raises(ConfigError, match="self_context"):
        tiny_cfg(self_context=1.5).validate()


def _random_episodes() -> list[dict]:
    """Two 24-frame episodes of distinct random frames."""
    eps = painted_episodes(2, 24, 7)
    rng = np.random.default_rng(7)
    for e in eps:
        e["tokens"] = rng.integers(0, 12, size=(24, *GRID))
    return eps


def _loop_episodes() -> list[dict]:
    """:func:`_random_episodes` with planted returns: in episode 0 frame 10 repeats frame 3 (7 back) and frame
    20 repeats frame 15 (5 back) but also frame 18 (2 back, too close); in episode 1 frame 8 repeats frame 2
    (6 back) and frame 3 is the episode-0 frame 23 (another episode: no return)."""
    eps = _random_episodes()
    t0, t1 = eps[0]["tokens"], eps[1]["tokens"]
    t0[10], t0[18], t0[20], t1[8], t1[3] = t0[3], t0[15], t0[15], t1[2], t0[23]
    return eps


def test_return_clips_end_on_the_view_they_hold_and_take_their_share_of_each_batch(tmp_path):
    from worldmodel.training.data import ClipSampler, ShardedSampler, TokenClips

    root = tmp_path / "tokens"
    write_dataset(root, _loop_episodes(), "train", "tokens", "synthetic", ACTIONS)
    clips = TokenClips(root, "train", 8)
    first = clips.return_starts(4)
    assert sorted(first.tolist()) == [3, 24 + 8 - 7]            # clips ending on frame 10 and on episode 1's frame 8
    assert clips.return_starts(7).tolist() == [3]                 # 6 back is too close for a gap of 7
    for f in first:
        b = clips.batch_at(np.array([f]))
        last = b.tokens[0, -1]
        assert any(torch.equal(last, b.tokens[0, j]) for j in range(8 - 4))   # the view is in the clip, 4+ back
    plain = ClipSampler(clips, 8, seed=3)
    assert np.array_equal(plain.starts(5), clips.starts[ShardedSampler(len(clips), 8, seed=3).indices(5)])
    mixed = ClipSampler(clips, 8, seed=3, return_share=0.25, return_gap=4)
    rows_ = np.stack([mixed.starts(s) for s in range(40)])
    assert np.isin(rows_[:, 6:], first).all() and rows_.shape == (40, 8)
    assert np.array_equal(rows_[:, :6], clips.starts[np.stack([ShardedSampler(len(clips), 6, 3).global_indices(s)
                                                               for s in range(40)])])
    ranks = [ClipSampler(clips, 8, seed=3, rank=r, world_size=2, return_share=0.25, return_gap=4) for r in (0, 1)]
    assert np.array_equal(np.concatenate([r.starts(9) for r in ranks]), mixed.starts(9))
    write_dataset(tmp_path / "plain", _random_episodes(), "train", "tokens", "synthetic", ACTIONS)
    with pytest.raises(DatasetError, match="no training clip of .*plain ends on a return frame .*policy=revisit"):
        ClipSampler(TokenClips(tmp_path / "plain", "train", 8), 8, seed=3, return_share=0.25, return_gap=4)
    with pytest.raises(DatasetError, match="return_share=0.25 needs batch_size >= 2"):
        ClipSampler(clips, 1, seed=3, return_share=0.25, return_gap=4)
    with pytest.raises(DatasetError, match="need clip_len > 8"):
        clips.return_starts(8)
    with pytest.raises(ConfigError, match="return_share=0.5 needs clip_len > return_gap=16"):
        tiny_cfg(return_share=0.5, clip_len=16).validate()


def _goal_episodes() -> list[dict]:
    """:func:`_loop_episodes` in a corridor with the goal ahead of heading 0 (behind heading pi), facing it at
    episode 0's frames 5-7, 12 and 20 and episode 1's frames 2-3, 7, 10-11 and 16, with one reach (episode 1's
    frame 5). The goal comes back into view after the 8-frame clip lost it at episode 0's frame 12 and episode
    1's frame 16 (also at episode 1's frames 7 and 10, but a reach lies between)."""
    eps = _loop_episodes()
    for e, facing in zip(eps, ([5, 6, 7, 12, 20], [2, 3, 7, 10, 11, 16]), strict=True):
        heading = np.full(24, np.pi, np.float32)
        heading[facing] = 0.0
        e["poses"] = np.stack([np.full(24, 1.5), np.full(24, 1.5), heading], 1).astype(np.float32)
        e["rewards"] = np.zeros(24, np.float32)
        e["attrs"] = {**e["attrs"], "layout": "*****\n*   *\n*****", "goal": np.array([3.5, 1.5], np.float32)}
    eps[1]["rewards"][5] = 1.0
    return eps


def test_goal_clips_end_where_the_goal_comes_back_and_take_their_share_of_each_batch(tmp_path):
    from worldmodel.training.data import ClipSampler, ShardedSampler, TokenClips

    root = tmp_path / "goal"
    write_dataset(root, _goal_episodes(), "train", "tokens", "synthetic", ACTIONS)
    clips = TokenClips(root, "train", 8)
    first = clips.goal_return_starts()
    assert sorted(first.tolist()) == [12 - 7, 24 + 16 - 7]
    # a reach just after the return frame does not hide it, whatever reward_early labels the frames before it
    early = _goal_episodes()
    early[0]["rewards"][13] = 1.0
    write_dataset(tmp_path / "early", early, "train", "tokens", "synthetic", ACTIONS)
    assert np.array_equal(TokenClips(tmp_path / "early", "train", 8, reward_early=2).goal_return_starts(), first)
    mixed = ClipSampler(clips, 8, seed=3, goal_share=0.25)
    rows_ = np.stack([mixed.starts(s) for s in range(20)])
    assert np.isin(rows_[:, 6:], first).all() and mixed.return_rows == slice(8, 8)
    assert np.array_equal(rows_[:, :6], clips.starts[np.stack([ShardedSampler(len(clips), 6, 3).global_indices(s)
                                                               for s in range(20)])])
    # with return clips too: the ordinary rows, then the goal rows, then the return rows (last, as before)
    both = ClipSampler(clips, 8, seed=3, goal_share=0.25, return_share=0.25, return_gap=4)
    assert both.return_rows == slice(6, 8) and np.isin(both.starts(4)[4:6], first).all()
    assert np.isin(both.starts(4)[6:], clips.return_starts(4)).all()
    ranks = [ClipSampler(clips, 8, seed=3, rank=r, world_size=2, goal_share=0.25) for r in (0, 1)]
    assert np.array_equal(np.concatenate([r.starts(9) for r in ranks]), mixed.starts(9))
    write_dataset(tmp_path / "plain", _random_episodes(), "train", "tokens", "synthetic", ACTIONS)
    with pytest.raises(DatasetError, match="goal_share .*plain.* needs every episode's poses"):
        ClipSampler(TokenClips(tmp_path / "plain", "train", 8), 8, seed=3, goal_share=0.25)
    blind = _goal_episodes()
    for e in blind:
        e["poses"][:, 2] = np.pi                                 # never facing the goal
    write_dataset(tmp_path / "blind", blind, "train", "tokens", "synthetic", ACTIONS)
    with pytest.raises(DatasetError, match="no training clip of .*blind ends where the goal comes back"):
        ClipSampler(TokenClips(tmp_path / "blind", "train", 8), 8, seed=3, goal_share=0.25)
    with pytest.raises(DatasetError, match="goal_share=0.25 needs batch_size >= 2"):
        ClipSampler(clips, 1, seed=3, goal_share=0.25)
    with pytest.raises(ConfigError, match="goal_share"):
        tiny_cfg(goal_share=1.0).validate()
    with pytest.raises(ConfigError, match="return_share"):
        tiny_cfg(return_share=1.0).validate()
    out = tmp_path / "run"
    train(tiny_cfg(steps=3, clip_len=8, return_share=0.25, return_gap=4), root, out)
    assert len(rows(out)) == 3 and np.isfinite([r["loss"] for r in rows(out)]).all()


def test_dreamed_returns_replace_the_frames_before_each_return_frame_of_the_return_rows_only(tmp_path):
    """return_dream: the return rows' last j frames before the return frame become the model's dream, their
    context is clean and only the return frame keeps its drawn t; ordinary rows and the return frame itself
    stay real; the key is refused without return clips or with a span reaching the view returned to."""
    from worldmodel.objective.loss import ObjectiveConfig, draw_step
    from worldmodel.training.data import ClipSampler, TokenClips
    from worldmodel.training.self_context import clean_returns, draw_return_span, dream_returns

    root = tmp_path / "tokens"
    write_dataset(root, _loop_episodes(), "train", "tokens", "synthetic", ACTIONS)
    clips = TokenClips(root, "train", 8)
    ranks = [ClipSampler(clips, 8, seed=3, rank=r, world_size=2, return_share=0.25, return_gap=4) for r in (0, 1)]
    assert ranks[0].return_rows == slice(6, 8)
    assert [r.local_rows(r.return_rows) for r in ranks] == [slice(0, 0), slice(2, 4)]   # all on rank 1
    g = torch.Generator().manual_seed(0)
    assert {draw_return_span(3, g) for _ in range(200)} == {1, 2, 3}
    draws = draw_step(8, 8, GRID, ObjectiveConfig(), torch.Generator().manual_seed(2))
    clean = clean_returns(draws, slice(6, 8))
    assert (clean.t[6:, :-1] == 1).all() and torch.equal(clean.t[6:, -1], draws.t[6:, -1])
    assert torch.equal(clean.t[:6], draws.t[:6]) and not (draws.t[6:, :-1] == 1).all()
    out = tmp_path / "run"
    train(tiny_cfg(steps=3, clip_len=8, return_share=0.25, return_gap=4, return_dream=3), root, out)
    assert len(rows(out)) == 3 and np.isfinite([r["loss"] for r in rows(out)]).all()
    model, _, _ = load_world_model(out)
    batch = clips.batch_at(ranks[1].starts(0))
    dreamed = dream_returns(model, batch, slice(2, 4), 3, 2, torch.Generator().manual_seed(0))
    assert torch.equal(dreamed.tokens[:2], batch.tokens[:2])                        # ordinary rows: real
    assert torch.equal(dreamed.tokens[2:, :4], batch.tokens[2:, :4])                # the far past: real
    assert torch.equal(dreamed.tokens[2:, -1], batch.tokens[2:, -1])                # the return frame: real
    assert not torch.equal(dreamed.tokens[2:, 4:7], batch.tokens[2:, 4:7])          # frames 4..6: dreamed
    again = dream_returns(model, batch, slice(2, 4), 3, 2, torch.Generator().manual_seed(0))
    assert torch.equal(dreamed.tokens, again.tokens)
    assert dream_returns(model, batch, slice(0, 0), 3, 2, g) is batch
    with pytest.raises(ConfigError, match="return_dream=3 needs return_share > 0"):
        tiny_cfg(clip_len=8, return_dream=3).validate()
    with pytest.raises(ConfigError, match="return_dream < return_gap=4"):
        tiny_cfg(clip_len=8, return_share=0.25, return_gap=4, return_dream=4).validate()


def test_a_fine_tune_keeps_the_inits_decoder_swap_record_only_with_its_tokenizer(tmp_path):
    from worldmodel.model.checkpoint import read_world_model_meta
    from worldmodel.training.setup import init_record

    meta = read_world_model_meta(resolve_checkpoint("default"))     # the shipped default had its decoder swapped
    assert "decoder_swap" in meta
    kept = init_record("default", resolve_checkpoint("default") / "tokenizer")
    assert kept["decoder_swap"] == meta["decoder_swap"] and kept["init"]["checkpoint"] == "default"
    assert "decoder_swap" not in init_record("default", tmp_path)     # another tokenizer: not its history
    assert "decoder_swap" not in init_record("default")
