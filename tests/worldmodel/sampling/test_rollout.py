"""Cached frame-by-frame rollout of a causal Latte: same logits and frames as recomputing the window,
constant memory over 10,000 frames, per-rollout resets, seeding, NFE per frame and settings errors."""

from __future__ import annotations

import resource

import pytest
import torch

from envs.common.errors import SamplerSettingsError
from worldmodel.model.latte import Latte, model_config
from worldmodel.sampling import SamplerConfig
from worldmodel.sampling.rollout import CachedRollout, WindowRollout

V = 16


def tiny_model(window: int = 4, grid: tuple[int, int] = (4, 4), temporal: str = "causal", seed: int = 0,
               heading: int = 0) -> Latte:
    """A tiny Latte with random (not zero-initialised) weights, so every path carries signal; ``heading`` > 0
    turns on heading rotary (action 1 turns left, 2 right)."""
    torch.manual_seed(seed)
    turns = {"heading_pairs": heading, "action_yaw": (0.0, 12.0, -12.0)} if heading else {}
    model = Latte(model_config("tiny", vocab_size=V, token_grid=grid, max_frames=window, num_actions=3,
                               temporal=temporal, **turns)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def pair(model: Latte, sampler: SamplerConfig, b: int, context: torch.Tensor, actions: torch.Tensor):
    cached, window = CachedRollout(model, sampler, b), WindowRollout(model, sampler, b)
    cached.reset(context, actions)
    window.reset(context, actions)
    return cached, window


@pytest.mark.parametrize("name,guidance,heading", [
    ("mgm", (0, 0), 0), ("mgm_tfree", (0, 0), 0), ("fm", (0, 0), 0), ("df", (0, 0), 0), ("mgm", (1.5, 0), 0),
    ("mgm", (0, 0.7), 0), ("fm", (0.5, 2.0), 0), ("mgm", (0, 0.7, 1), 0), ("mgm", (0.5, 1.0, 2), 0),
    ("mgm", (0, 0), 3), ("fm", (0.5, 1.0, 2), 3)])
def test_cached_equals_uncached(name, guidance, heading):
    """Same logits (1e-4) for arbitrary probe frames, same frames and heads from the same seed, through
    cache eviction (3 × the window) and a partial reset; with and without guidance and heading rotary."""
    model, b, k = tiny_model(window=4, heading=heading), 3, 4
    g = torch.Generator().manual_seed(0)
    ctx, ctx_a = torch.randint(0, V, (b, 2, 4, 4), generator=g), torch.randint(-1, 3, (b, 2), generator=g)
    sc = SamplerConfig(name=name, steps=3, action_guidance=guidance[0], history_guidance=guidance[1],
                       history_guidance_recent=guidance[2] if len(guidance) > 2 else 0)
    cached, window = pair(model, sc, b, ctx, ctx_a)
    gc, gw = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for i in range(3 * k):
        a = torch.randint(0, 3, (b,), generator=g)
        probe = torch.randint(0, V + 1, (b, 4, 4), generator=g)
        t = torch.rand(b, generator=g)
        lc, lw = cached.frame_logits(probe, t, a), window.frame_logits(probe, t, a)
        assert torch.allclose(lc[..., :V], lw[..., :V], atol=1e-4), float((lc[..., :V] - lw[..., :V]).abs().max())
        oc, ow = cached.step(a, gc), window.step(a, gw)
        assert torch.equal(oc.tokens, ow.tokens)
        assert torch.allclose(oc.reward_logits, ow.reward_logits, atol=1e-4)
        assert torch.allclose(oc.done_logits, ow.done_logits, atol=1e-4)
        assert int(oc.tokens.max()) < V
        if i == k:                                  # restart rollouts 0 and 2 with a 1-frame context
            rows = torch.tensor([True, False, True])
            new = torch.randint(0, V, (2, 1, 4, 4), generator=g)
            cached.reset(new, None, rows)
            window.reset(new, None, rows)
    assert cached.nfe == window.nfe


def test_logits_depend_on_history_so_the_comparison_means_something():
    model = tiny_model()
    sc = SamplerConfig(steps=2)
    a, b = CachedRollout(model, sc, 1), CachedRollout(model, sc, 1)
    a.reset(torch.zeros(1, 2, 4, 4, dtype=torch.long))
    b.reset(torch.full((1, 2, 4, 4), 7, dtype=torch.long))
    probe, t, act = torch.full((1, 4, 4), V), torch.zeros(1), torch.zeros(1, dtype=torch.long)
    assert (a.frame_logits(probe, t, act) - b.frame_logits(probe, t, act))[..., :V].abs().max() > 1e-3


def test_partial_reset_leaves_other_rollouts_untouched():
    model = tiny_model()
    sc = SamplerConfig(steps=2)
    ctx = torch.randint(0, V, (2, 3, 4, 4), generator=torch.Generator().manual_seed(1))
    ref, ro = CachedRollout(model, sc, 2), CachedRollout(model, sc, 2)
    ref.reset(ctx)
    ro.reset(ctx)
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    acts = torch.tensor([1, 2])
    for i in range(6):
        if i == 2:
            ro.reset(torch.full((1, 1, 4, 4), 3), torch.tensor([[0]]), torch.tensor([False, True]))
        x, y = ref.step(acts, g1).tokens, ro.step(acts, g2).tokens
        assert torch.equal(x[0], y[0]), "rollout 0 was not reset and must not change"
    assert int(ro.cache.num_frames[1]) == 3 and int(ro.cache.num_frames[0]) == 3


@pytest.mark.parametrize("steps", [1, 4])
def test_nfe_per_frame_and_seeded_reproducibility(steps):
    model = tiny_model()
    sc = SamplerConfig(steps=steps)
    ctx = torch.randint(0, V, (2, 2, 4, 4), generator=torch.Generator().manual_seed(0))

    def roll(seed):
        ro = CachedRollout(model, sc, 2)
        ro.reset(ctx)
        g = torch.Generator().manual_seed(seed)
        frames = [ro.step(torch.tensor([0, 1]), g) for _ in range(5)]
        assert all(f.nfe == steps + 1 for f in frames) and ro.nfe == 5 * (steps + 1)
        return torch.stack([f.tokens for f in frames])

    assert torch.equal(roll(0), roll(0))
    assert not torch.equal(roll(0), roll(1))


@pytest.mark.slow
def test_memory_is_constant_over_10000_frames():
    model = tiny_model(window=4, grid=(2, 2))
    ro = CachedRollout(model, SamplerConfig("mgm_tfree", steps=1), 1)
    ro.reset(torch.zeros(1, 1, 2, 2, dtype=torch.long))
    g = torch.Generator().manual_seed(0)
    a = torch.zeros(1, dtype=torch.long)
    for _ in range(100):
        ro.step(a, g)
    cache_bytes, rss = ro.memory_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(9900):
        ro.step(a, g)
    assert ro.memory_bytes() == cache_bytes
    assert int(ro.cache.num_frames[0]) == 3 and ro.nfe == 10000 * 2
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    assert grown_mb < 50, f"peak RSS grew by {grown_mb:.1f} MB over 9,900 frames"


def test_settings_errors():
    with pytest.raises(SamplerSettingsError, match="causal"):
        CachedRollout(tiny_model(temporal="bidirectional"), SamplerConfig(), 1)
    with pytest.raises(SamplerSettingsError, match="rolling"):
        CachedRollout(tiny_model(), SamplerConfig("rolling"), 1)
    ro = CachedRollout(tiny_model(), SamplerConfig(steps=1), 2)
    with pytest.raises(SamplerSettingsError, match="one action per rollout"):
        ro.step(torch.zeros(3, dtype=torch.long), torch.Generator())
    with pytest.raises(SamplerSettingsError, match="mask tokens"):
        ro.reset(torch.full((2, 1, 4, 4), V))
    with pytest.raises(SamplerSettingsError, match="context must be"):
        ro.reset(torch.zeros(2, 1, 3, 3, dtype=torch.long))
    with pytest.raises(SamplerSettingsError, match="rows"):
        ro.reset(torch.zeros(1, 1, 4, 4, dtype=torch.long), rows=torch.tensor([1, 0]))


def test_long_context_keeps_only_the_last_window_minus_one_frames():
    model = tiny_model(window=4)
    sc = SamplerConfig(steps=1)
    g = torch.Generator().manual_seed(0)
    ctx = torch.randint(0, V, (1, 9, 4, 4), generator=g)
    long, short = CachedRollout(model, sc, 1), CachedRollout(model, sc, 1)
    long.reset(ctx)
    short.reset(ctx[:, -3:])
    probe, t, a = torch.full((1, 4, 4), V), torch.zeros(1), torch.zeros(1, dtype=torch.long)
    assert torch.equal(long.frame_logits(probe, t, a), short.frame_logits(probe, t, a))
    assert int(long.cache.num_frames[0]) == 3


def test_benchmark_smoke():
    """benchmarks/rollout.py runs end to end on a tiny model, and its saturation rule picks the knee."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "rollout.py"
    spec = importlib.util.spec_from_file_location("bench_rollout", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--size", "tiny", "--window", "3", "--batches", "1", "--frames", "1", "--steps", "2",
                      "--dream-frames", "3", "--dream-window", "3"])
    cached, uncached = res["speed"][0], res["speed"][1]
    assert cached["path"] == "cached" and uncached["path"] == "uncached"
    assert cached["nfe_per_frame"] == uncached["nfe_per_frame"] == 3
    assert res["dream"][0]["frames"] == 3 and res["dream"][0]["seconds"] > 0
    assert [r["batch"] for r in res["guidance_cost"]] == [1, 8]
    assert all(r["slowdown"] > 0 and r["slowdown_batched"] > 0 for r in res["guidance_cost"])
    # the benchmark's batched alternative samples what the shipped rollout samples
    sc = SamplerConfig(steps=2, history_guidance=1.0, action_guidance=0.5)
    ctx = torch.randint(0, V, (2, 2, 4, 4), generator=torch.Generator().manual_seed(4))
    separate, batched = CachedRollout(model := tiny_model(window=3), sc, 2), bench.BatchedPassRollout(model, sc, 2)
    for ro in (batched, separate):
        ro.reset(ctx)
    a = torch.tensor([0, 1])
    assert torch.equal(batched.step(a, torch.Generator().manual_seed(1)).tokens,
                       separate.step(a, torch.Generator().manual_seed(1)).tokens)
    rows = [{"steps": 1, "accuracy": 0.30, "psnr": 20.0}, {"steps": 2, "accuracy": 0.40, "psnr": 21.0},
            {"steps": 4, "accuracy": 0.449, "psnr": 21.95}, {"steps": 8, "accuracy": 0.452, "psnr": 22.0}]
    assert bench.saturation_steps(rows, 0.005, 0.1) == 4
    assert bench.saturation_steps(rows, 0.0, 0.0) == 8
    # the quality sweep itself, on random episodes without a tokenizer (accuracy only)
    eps = [{"tokens": torch.randint(0, V, (6, 4, 4)).numpy(), "actions": torch.randint(0, 3, (6,)).numpy()}
           for _ in range(2)]
    cases = bench.teacher_forced_cases(eps, 2, 5, seed=0)
    out = bench.quality_vs_steps(model, None, cases, [1, 3], batch=4)
    assert [r["steps"] for r in out] == [1, 3] and all(0.0 <= r["accuracy"] <= 1.0 for r in out)


def test_bf16_rollout_follows_fp32_and_leaves_the_callers_model_alone():
    """precision="bf16" runs a bf16 copy (cache included) whose logits track fp32's to bf16 precision; the
    model passed in keeps its fp32 weights; frames stay valid tokens and the heads come back as fp32."""
    model, b = tiny_model(window=4), 3
    g = torch.Generator().manual_seed(5)
    ctx, ctx_a = torch.randint(0, V, (b, 3, 4, 4), generator=g), torch.randint(0, 3, (b, 3), generator=g)
    ros = {p: CachedRollout(model, SamplerConfig("mgm", steps=3), b, precision=p) for p in ("fp32", "bf16")}
    for ro in ros.values():
        ro.reset(ctx, ctx_a)
    assert ros["bf16"].cache.keys[0].dtype == torch.bfloat16 and ros["fp32"].cache.keys[0].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    probe = torch.randint(0, V + 1, (b, 4, 4), generator=g)
    t, a = torch.full((b,), 0.4), torch.tensor([0, 1, 2])
    lo, hi = (ros[p].frame_logits(probe, t, a)[..., :V].float() for p in ("bf16", "fp32"))
    assert (lo - hi).abs().max() < 0.05 * hi.abs().max() + 0.02
    assert (lo - hi).abs().max() > 0                     # it really ran in bf16
    out = ros["bf16"].step(a, torch.Generator().manual_seed(0))
    assert out.tokens.dtype == torch.long and int(out.tokens.max()) < V
    assert out.reward_logits.dtype == torch.float32 and out.done_logits.dtype == torch.float32
    # weights changed in place after the rollout was made (fine-tuning between dreams) reach the bf16 copy
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    again = ros["bf16"].frame_logits(probe, t, a)[..., :V].float()
    assert (again - ros["fp32"].frame_logits(probe, t, a)[..., :V]).abs().max() < 0.05 * hi.abs().max() * 3 + 0.05
    assert (again - lo).abs().max() > 0.1


def test_unset_steps_mean_the_per_frame_default():
    from worldmodel.sampling.rollout import DEFAULT_FRAME_STEPS

    ro = CachedRollout(tiny_model(), SamplerConfig("mgm"), 1)
    ro.reset(torch.zeros(1, 1, 4, 4, dtype=torch.long))
    assert ro.step(torch.zeros(1, dtype=torch.long), torch.Generator()).nfe == DEFAULT_FRAME_STEPS + 1


@pytest.mark.slow
def test_benchmark_quality_sweep_on_a_saved_checkpoint(tmp_path):
    """The --checkpoint/--data path: a saved tiny world model and a token dataset, accuracy vs steps."""
    import importlib.util
    from pathlib import Path

    import numpy as np

    from envs.dataset import write_dataset
    from worldmodel.model.checkpoint import save_world_model

    model = tiny_model(window=3)
    ckpt = save_world_model(tmp_path / "model", model.cfg, model.state_dict(), action_meanings=["a", "b", "c"],
                            env_id="synthetic", tokenizer_dir=None)
    rng = np.random.default_rng(0)
    eps = [{"id": i, "tokens": rng.integers(0, V, (7, 4, 4)), "actions": np.r_[-1, rng.integers(0, 3, 6)]}
           for i in range(2)]
    data = write_dataset(tmp_path / "tokens", eps, split="test", kind="tokens", action_meanings=["a", "b", "c"])
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "rollout.py"
    spec = importlib.util.spec_from_file_location("bench_rollout", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--skip-speed", "--checkpoint", str(ckpt), "--data", str(data), "--dream-frames", "2",
                      "--quality-steps", "1", "2", "--quality-samples", "6", "--quality-samplers", "mgm",
                      "--quality-schedules", "cosine", "--out", str(tmp_path / "bench.json")])
    assert [r["steps"] for r in res["quality"]] == [1, 2]
    assert res["saturation_steps"]["mgm/cosine"] in (1, 2)
    assert (tmp_path / "bench.json").is_file()


def test_guidance_mixes_the_conditional_action_free_and_history_free_predictions():
    """Guided log-probabilities are exactly log p + γa (log p − log p_none) + γh (log p − log p_alone), built
    here from three unguided rollouts; guidance changes the frames; each term costs one pass per step."""
    model, b, steps = tiny_model(window=4), 2, 3
    g = torch.Generator().manual_seed(3)
    ctx, ctx_a = torch.randint(0, V, (b, 3, 4, 4), generator=g), torch.randint(0, 3, (b, 3), generator=g)
    plain = CachedRollout(model, SamplerConfig(steps=steps), b)
    alone = CachedRollout(model, SamplerConfig(steps=steps), b)          # no history: never reset with context
    guided = CachedRollout(model, SamplerConfig(steps=steps, action_guidance=1.5, history_guidance=0.5), b)
    plain.reset(ctx, ctx_a)
    guided.reset(ctx, ctx_a)
    probe, t = torch.randint(0, V + 1, (b, 4, 4), generator=g), torch.rand(b, generator=g)
    a = torch.tensor([0, 2])

    def logp(ro, act):
        return torch.log_softmax(ro.frame_logits(probe, t, act)[..., :V].float(), dim=-1)

    cond, none, solo = logp(plain, a), logp(plain, torch.full_like(a, -1)), logp(alone, a)
    assert (cond - none).abs().max() > 1e-3 and (cond - solo).abs().max() > 1e-3    # both terms carry signal
    want = cond + 1.5 * (cond - none) + 0.5 * (cond - solo)
    got = guided.frame_logits(probe, t, a)
    assert torch.allclose(got[..., :V], want, atol=1e-4)
    assert bool(torch.isneginf(got[..., V]).all())                                # the mask class is never drawn

    out_plain = plain.step(a, torch.Generator().manual_seed(9))
    out_guided = guided.step(a, torch.Generator().manual_seed(9))
    assert out_plain.nfe == steps + 1 and out_guided.nfe == 3 * steps + 1
    assert guided.nfe == out_guided.nfe
    assert not torch.equal(out_plain.tokens, out_guided.tokens)
    only_action = CachedRollout(model, SamplerConfig(steps=steps, action_guidance=1.0), b)
    only_action.reset(ctx, ctx_a)
    assert only_action.step(a, torch.Generator().manual_seed(9)).nfe == 2 * steps + 1


def test_far_history_guidance_pushes_against_the_prediction_from_the_recent_frames_only():
    """history_guidance_recent = n: the second pass is the prediction from the last n frames alone (here built
    from a rollout reset with only those frames; rotary attention depends on distances, so their absolute
    positions do not matter), so the guided log-probabilities are log p + γ (log p − log p_last-n). It
    differs from plain history guidance, and n must stay below the frames the model remembers."""
    model, b, steps, n = tiny_model(window=6), 2, 2, 2
    g = torch.Generator().manual_seed(11)
    ctx, ctx_a = torch.randint(0, V, (b, 5, 4, 4), generator=g), torch.randint(0, 3, (b, 5), generator=g)
    plain, recent = (CachedRollout(model, SamplerConfig(steps=steps), b) for _ in range(2))
    far = CachedRollout(model, SamplerConfig(steps=steps, history_guidance=2.0, history_guidance_recent=n), b)
    vanilla = CachedRollout(model, SamplerConfig(steps=steps, history_guidance=2.0), b)
    for ro in (plain, far, vanilla):
        ro.reset(ctx, ctx_a)
    recent.reset(ctx[:, -n:], ctx_a[:, -n:])
    probe, t, a = torch.randint(0, V + 1, (b, 4, 4), generator=g), torch.rand(b, generator=g), torch.tensor([1, 0])

    def logp(ro):
        return torch.log_softmax(ro.frame_logits(probe, t, a)[..., :V].float(), dim=-1)

    cond, short = logp(plain), logp(recent)
    assert (cond - short).abs().max() > 1e-3                          # the older frames carry signal
    assert torch.allclose(far.frame_logits(probe, t, a)[..., :V], cond + 2.0 * (cond - short), atol=1e-4)
    assert (far.frame_logits(probe, t, a) - vanilla.frame_logits(probe, t, a))[..., :V].abs().max() > 1e-3
    assert far.step(a, torch.Generator().manual_seed(0)).nfe == 2 * steps + 1
    with pytest.raises(SamplerSettingsError, match="history_guidance_recent=5 must be below the 5 frames"):
        CachedRollout(model, SamplerConfig(steps=2, history_guidance=1.0, history_guidance_recent=5), 1)
    with pytest.raises(SamplerSettingsError, match="history_guidance_recent must be an integer >= 0"):
        SamplerConfig(history_guidance_recent=-1)


def test_guidance_settings_are_checked():
    with pytest.raises(SamplerSettingsError, match="action_guidance must be >= 0"):
        SamplerConfig(action_guidance=-1.0)
    with pytest.raises(SamplerSettingsError, match="history_guidance must be >= 0"):
        SamplerConfig(history_guidance=float("nan"))
    free = Latte(model_config("tiny", vocab_size=V, token_grid=(4, 4), max_frames=4, num_actions=0,
                              temporal="causal")).eval()
    with pytest.raises(SamplerSettingsError, match="action-conditioned"):
        CachedRollout(free, SamplerConfig(steps=2, action_guidance=1.0), 1)
    CachedRollout(free, SamplerConfig(steps=2, history_guidance=1.0), 1)     # history guidance needs no actions


def test_a_longer_window_keeps_a_constant_cache_of_window_minus_one_frames():
    """Release 2's memory candidate widens the window (k = 32): the cache still holds k - 1 frames at most, its
    bytes fixed from the first frame on, and twice the window costs about twice the cache, no more."""
    sizes = {}
    for window in (16, 32):
        ro = CachedRollout(tiny_model(window=window, grid=(2, 2)), SamplerConfig("mgm_tfree", steps=1), 1)
        ro.reset(torch.zeros(1, 1, 2, 2, dtype=torch.long))
        g, a = torch.Generator().manual_seed(0), torch.zeros(1, dtype=torch.long)
        first = ro.memory_bytes()
        for _ in range(3 * window):
            ro.step(a, g)
            assert ro.memory_bytes() == first
        assert int(ro.cache.num_frames[0]) == window - 1
        sizes[window] = first
    assert sizes[32] / sizes[16] == pytest.approx(31 / 15, rel=0.05)


def test_compiled_rollout_without_a_compiler_is_refused_at_construction(monkeypatch):
    import shutil

    from envs.common.errors import ConfigError

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match=r"C\+\+ compiler"):     # not at the first frame, minutes later
        CachedRollout(tiny_model(), SamplerConfig("mgm", steps=2), 1, compile=True)
    assert CachedRollout(tiny_model(), SamplerConfig("mgm", steps=2), 1).compile is False
