"""The discrete Latte backbone: presets, shapes, causality, the KV cache and input validation."""

from __future__ import annotations

import pytest
import torch

from envs.common.errors import ConfigError, MaskFlowError
from worldmodel.model.latte import PRESETS, Latte, model_config

V, GRID, K, A = 20, (4, 4), 4, 3
YAW = (0.0, 12.0, -12.0)                 # action 1 turns left, 2 right


def randomized(temporal: str = "causal", seed: int = 0, **kw) -> Latte:
    """A tiny model with every weight perturbed (zero-initialised gates would hide most bugs)."""
    torch.manual_seed(seed)
    m = Latte(model_config("tiny", vocab_size=V, token_grid=GRID, max_frames=K, num_actions=A,
                           temporal=temporal, **kw))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m.eval()


def inputs(b: int, f: int, seed: int = 0, mask_prob: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(0, V, (b, f, *GRID), generator=g)
    tok = torch.where(torch.rand(tok.shape, generator=g) < mask_prob, V, tok)
    return tok, torch.rand(b, f, generator=g), torch.randint(-1, A, (b, f), generator=g)


def test_presets_sizes_and_parameter_counts():
    counts = {}
    for size in PRESETS:
        with torch.device("meta"):          # base has ~135M parameters: count without allocating
            counts[size] = Latte(model_config(size, vocab_size=1000)).num_parameters()
    assert counts["tiny"] < 1_000_000 < counts["small"] < counts["base"]
    assert 3_000_000 < counts["small"] < 20_000_000 and 100_000_000 < counts["base"] < 200_000_000


def test_forward_shapes_and_mask_class_is_never_predicted():
    m = randomized()
    out = m(*inputs(2, K))
    assert out.logits.shape == (2, K, *GRID, V + 1)
    assert out.reward_logits.shape == (2, K) and out.done_logits.shape == (2, K)
    assert torch.isneginf(out.logits[..., V]).all() and torch.isfinite(out.logits[..., :V]).all()
    assert (out.logits.argmax(-1) < V).all()


def test_gradients_are_finite_despite_the_masked_class():
    m = randomized()
    tok, t, a = inputs(2, K)
    out = m(tok, t, a)
    target = torch.randint(0, V, tok.shape)
    loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 3), target.flatten()) + out.reward_logits.sum()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


@pytest.mark.parametrize("seed", range(4))
def test_causal_frame_output_ignores_later_frames(seed):
    m = randomized("causal", seed)
    tok, t, a = inputs(2, K, seed)
    f = seed % (K - 1)
    tok2, t2, a2 = tok.clone(), t.clone(), a.clone()
    tok2[:, f + 1:] = torch.randint(0, V + 1, tok2[:, f + 1:].shape)
    t2[:, f + 1:] = torch.rand(t2[:, f + 1:].shape)
    a2[:, f + 1:] = (a2[:, f + 1:] + 2) % A
    o1, o2 = m(tok, t, a), m(tok2, t2, a2)
    torch.testing.assert_close(o1.logits[:, : f + 1], o2.logits[:, : f + 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(o1.reward_logits[:, : f + 1], o2.reward_logits[:, : f + 1], atol=1e-5, rtol=0)
    assert (o1.logits[:, f + 1:, ..., :V] - o2.logits[:, f + 1:, ..., :V]).abs().max() > 1e-3


def test_bidirectional_frame_output_sees_later_frames():
    m = randomized("bidirectional")
    tok, t, a = inputs(2, K)
    tok2 = tok.clone()
    tok2[:, -1] = (tok2[:, -1] + 1) % V
    assert (m(tok, t, a).logits[:, 0, ..., :V] - m(tok2, t, a).logits[:, 0, ..., :V]).abs().max() > 1e-3


def test_actions_and_times_condition_the_output():
    m = randomized()
    tok, t, a = inputs(1, K)
    base = m(tok, t, a).logits[..., :V]
    a2 = a.clone()
    a2[:, 0] = (a2[:, 0] + 2) % A
    t2 = t.clone()
    t2[:, 0] = 1 - t2[:, 0]
    assert (m(tok, t, a2).logits[:, 0, ..., :V] - base[:, 0]).abs().max() > 1e-3
    assert (m(tok, t2, a).logits[:, 0, ..., :V] - base[:, 0]).abs().max() > 1e-3


def test_masked_logits_equal_the_full_head_at_selected_tokens():
    m = randomized()
    tok, t, a = inputs(2, K)
    masked = tok == V
    rows, index = m.masked_logits(*m.features(tok, t, a), masked)
    full = m(tok, t, a).logits.reshape(-1, V + 1)[index, :V]
    torch.testing.assert_close(rows, full, atol=1e-5, rtol=0)
    assert sorted(index.tolist()) == masked.flatten().nonzero().flatten().tolist()


@pytest.mark.parametrize("heading", [0, 4])
@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("frames", [K, 3 * K + 1])
def test_kv_cache_matches_uncached_forward(frames, depth, heading):
    """Frame by frame with the cache = one forward over the sequence. Past K frames both use a sliding
    window of K frames per temporal layer (so with depth > 1 the receptive field spans several windows).
    With heading rotary the cache carries each rollout's heading across evictions."""
    m = randomized(depth=depth, **({"heading_pairs": heading, "action_yaw": YAW} if heading else {}))
    tok, _, a = inputs(2, frames, mask_prob=0.0)
    clean = m(tok, torch.ones(2, frames), a)
    cache = m.new_cache(2)
    for f in range(frames):
        # a partly masked query frame at some t < 1 against the clean history
        q = torch.where(torch.rand(2, *GRID) < 0.5, V, tok[:, f])
        t_new = torch.full((2,), 0.3)
        seq, ts = tok[:, : f + 1].clone(), torch.ones(2, f + 1)
        seq[:, -1], ts[:, -1] = q, t_new
        ref = m(seq, ts, a[:, : f + 1])
        out = m.forward_new_frame(q, t_new, a[:, f], cache)
        torch.testing.assert_close(out.logits[:, 0, ..., :V], ref.logits[:, -1, ..., :V], atol=1e-4, rtol=0)
        committed = m.commit_frame(tok[:, f], a[:, f], cache)
        torch.testing.assert_close(committed.logits[:, 0, ..., :V], clean.logits[:, f, ..., :V], atol=1e-4, rtol=0)
        torch.testing.assert_close(committed.reward_logits[:, 0], clean.reward_logits[:, f], atol=1e-4, rtol=0)
    assert cache.num_frames.tolist() == [min(frames, K - 1)] * 2


@pytest.mark.slow
def test_forward_new_frame_leaves_cache_untouched_and_memory_is_constant():
    m = randomized()
    tok, _, a = inputs(1, 1, mask_prob=0.0)
    cache = m.new_cache(1)
    m.commit_frame(tok[:, 0], a[:, 0], cache)
    before = [k.clone() for k in cache.keys], cache.valid.clone()
    m.forward_new_frame(tok[:, 0], torch.zeros(1), a[:, 0], cache)
    assert all(torch.equal(x, y) for x, y in zip(before[0], cache.keys)) and torch.equal(before[1], cache.valid)
    size = cache.nbytes()
    with torch.no_grad():
        for _ in range(2000):
            m.commit_frame(tok[:, 0], a[:, 0], cache)
    assert cache.nbytes() == size and cache.num_frames.item() == K - 1


def test_cache_reset_of_one_rollout_matches_a_fresh_cache():
    m = randomized()
    tok, _, a = inputs(2, 3, mask_prob=0.0)
    cache = m.new_cache(2)
    for f in range(3):
        m.commit_frame(tok[:, f], a[:, f], cache)
    before = m.forward_new_frame(tok[:, 0], torch.ones(2), a[:, 0], cache).logits
    cache.reset(torch.tensor([True, False]))
    after = m.forward_new_frame(tok[:, 0], torch.ones(2), a[:, 0], cache).logits
    fresh = m.forward_new_frame(tok[:, 0], torch.ones(2), a[:, 0], m.new_cache(2)).logits
    torch.testing.assert_close(after[0, ..., :V], fresh[0, ..., :V], atol=1e-5, rtol=0)
    torch.testing.assert_close(after[1, ..., :V], before[1, ..., :V], atol=1e-5, rtol=0)
    assert (after[0, ..., :V] - before[0, ..., :V]).abs().max() > 1e-3
    assert cache.num_frames.tolist() == [0, 3]
    # a cache without slots is a history-free one: the same logits as an emptied cache, and it stays empty
    none = m.new_cache(2, slots=0)
    alone = m.forward_new_frame(tok[:, 0], torch.ones(2), a[:, 0], none).logits
    torch.testing.assert_close(alone[..., :V], fresh[..., :V], atol=1e-5, rtol=0)
    m.commit_frame(tok[:, 1], a[:, 1], none)
    assert none.slots == 0 and sum(k.numel() for k in none.keys + none.values) == 0
    with pytest.raises(MaskFlowError, match=r"slots must lie in \[0, 3\]"):
        m.new_cache(1, slots=K)


@pytest.mark.parametrize("bad, match", [
    (lambda tok, t, a: (tok.clamp(max=V - 1) + (tok == 0) * (V + 1), t, a), r"\[0, 20\]"),
    (lambda tok, t, a: (tok - 1, t, a), r"\[0, 20\]"),
    (lambda tok, t, a: (tok[..., :3], t, a), "shape"),
    (lambda tok, t, a: (tok.float(), t, a), "integer"),
    (lambda tok, t, a: (tok, t[:, :2], a), "t and actions"),
    (lambda tok, t, a: (tok, t, a + A), "actions"),
])
def test_bad_inputs_raise_clear_errors(bad, match):
    m = randomized()
    tok, t, a = inputs(2, K, mask_prob=0.0)
    with pytest.raises(MaskFlowError, match=match):
        m(*bad(tok, t, a))


def test_window_and_cache_limits_of_bidirectional_models():
    m = randomized("bidirectional")
    with pytest.raises(MaskFlowError, match="window"):
        m(*inputs(1, K + 1))
    with pytest.raises(MaskFlowError, match="causal"):
        m.new_cache(1)
    with pytest.raises(ConfigError):
        model_config("tiny", temporal="sideways")
    with pytest.raises(ConfigError, match="size"):
        model_config("huge")


def test_heading_rotary_matches_views_by_angle_not_by_turn_count():
    """Scores of the heading pairs depend only on the heading difference, are the same 360° apart, and one
    12° turn away fall below a tenth of the same-heading score (8 pairs: odd harmonics 1..15)."""
    from worldmodel.model.latte import Rotary

    rot, e = Rotary(32, 10000.0, heading_pairs=8), 32
    q = torch.zeros(e)
    q[8:16], q[24:32] = 1.0, 0.0                  # only the heading pairs' first halves: a pure heading probe
    headings = torch.tensor([0.0, 12.0, 24.0, 180.0, 360.0, 372.0])
    cos, sin = rot.tables(torch.zeros(6, dtype=torch.long), torch.float64, headings)
    x = q.double().expand(6, e)
    r = x * cos + torch.cat([-x[:, 16:], x[:, :16]], -1) * sin      # rotate-half, as layers.rotate
    s = (r @ r.T).tolist()                                          # (6, 6) scores between headings
    assert s[0][0] == pytest.approx(8.0) and s[0][4] == pytest.approx(8.0)          # 360° = same view
    assert s[0][1] == pytest.approx(s[1][2]) and s[0][1] == pytest.approx(s[4][5])  # only differences count
    assert abs(s[0][1]) < 0.1 * s[0][0] and abs(s[0][2]) < 0.1 * s[0][0]
    # the time pairs are untouched by the heading: the same tables as without heading rotary there
    plain = Rotary(32, 10000.0).tables(torch.arange(6), torch.float64)[0]
    assert torch.equal(rot.tables(torch.arange(6), torch.float64, headings)[0][:, :8], plain[:, :8])


def test_heading_rotary_hears_the_turns_and_its_config_is_checked():
    """With every action embedded alike, only heading rotary tells apart the same frames after a left and
    after a right turn; models without it keep the config keys (and weight digests) they always had."""
    tok, t, _ = inputs(1, K, mask_prob=0.3)
    left, right = torch.tensor([[-1, 1, 1, 1]]), torch.tensor([[-1, 1, 2, 1]])
    for heading, differs in ((0, False), (4, True)):
        m = randomized(**({"heading_pairs": heading, "action_yaw": YAW} if heading else {}))
        m.act_embed.weight.data[:] = m.act_embed.weight.data[1]         # every action embeds alike: only the
        a, b = m(tok, t, left).logits, m(tok, t, right).logits          # heading can tell the clips apart
        assert (not torch.allclose(a, b, atol=1e-5)) == differs
        assert ("heading_pairs" in m.cfg.to_dict()) == ("action_yaw" in m.cfg.to_dict()) == bool(heading)
    with pytest.raises(ConfigError, match="heading_pairs=16 must lie in .0, 15."):
        model_config("tiny", vocab_size=V, token_grid=GRID, num_actions=A, heading_pairs=16, action_yaw=YAW)
    with pytest.raises(ConfigError, match="needs action_yaw"):
        model_config("tiny", vocab_size=V, token_grid=GRID, num_actions=A, heading_pairs=2)
