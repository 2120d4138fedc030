"""Heading recall: views that left the KV cache's window come back by heading while the camera only turns."""

from __future__ import annotations

import pytest
import torch

from envs.common.errors import MaskFlowError
from worldmodel.model.latte import Latte, model_config

V, GRID = 20, (4, 4)
YAW = (0.0, 90.0, -90.0, 180.0)          # action 0 steps forward, 1 turns left, 2 right, 3 about: 4 buckets of 90°
STAYS = (False, True, True, True)        # only action 0 moves the camera
K = 4                                    # window: 3 cached frames


def heading_model(depth: int = 1, heading_pairs: int = 4) -> Latte:
    """A tiny causal model with heading rotary, every weight perturbed (zero-initialised gates hide bugs)."""
    torch.manual_seed(0)
    m = Latte(model_config("tiny", vocab_size=V, token_grid=GRID, max_frames=K, num_actions=len(YAW), depth=depth,
                           heading_pairs=heading_pairs, action_yaw=YAW if heading_pairs else ()))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m.eval()


def frames(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (1, n, *GRID), generator=torch.Generator().manual_seed(seed))


def commit_all(m: Latte, tok: torch.Tensor, actions: list[int], stays=STAYS):
    cache = m.new_cache(1, stays=stays)
    for j, a in enumerate(actions):
        m.commit_frame(tok[:, j], torch.tensor([a]), cache)
    return cache


@torch.no_grad()
def test_a_turned_away_view_is_recalled_exactly_as_if_it_were_the_oldest_frame():
    """Frame 0 (heading 0), then three left turns: the window holds 90°, 180°, 270° and frame 0 sits in the
    bank. A fourth left turn faces 360° = frame 0's view: recall attends to frame 0 in place of the oldest
    slot. With one temporal layer a frame's keys depend on that frame only, so the exact reference is the
    uncached forward over [frame 0, 180°, 270°, new], its headings set through ``heading_actions``."""
    m = heading_model()
    tok = frames(5)
    acts = [-1, 1, 1, 1]
    cache = commit_all(m, tok, acts)
    assert cache.bank.valid[0].tolist() == [True, False, False, False]           # frame 0, in bucket 0°
    plain = commit_all(m, tok, acts, stays=None)
    q = torch.where(torch.rand(1, *GRID, generator=torch.Generator().manual_seed(1)) < 0.5, V, tok[:, 4])
    t, a = torch.tensor([0.4]), torch.tensor([1])
    recalled = m.forward_new_frame(q, t, a, cache).logits[:, 0, ..., :V]
    without = m.forward_new_frame(q, t, a, plain).logits[:, 0, ..., :V]
    seq = torch.stack([tok[:, 0], tok[:, 2], tok[:, 3], q], 1)
    ts = torch.tensor([[1.0, 1.0, 1.0, 0.4]])
    # conditioning: each frame's own action; heading: 0, +180 (action 3), +90, +90 = 0, 180, 270, 360
    ref = m.outputs(*m.features(seq, ts, torch.tensor([[-1, 1, 1, 1]]), heading_actions=torch.tensor([[-1, 3, 1, 1]])))
    torch.testing.assert_close(recalled, ref.logits[:, -1, ..., :V], atol=1e-4, rtol=0)
    assert (recalled - without).abs().max() > 1e-3                     # without recall frame 0 is gone
    # the cache itself is not modified by a pass, and committing keeps the window as before (90° slot dropped)
    m.commit_frame(q.clamp(max=V - 1), a, cache)
    assert cache.num_frames.tolist() == [3] and cache.bank.valid[0].tolist() == [True, True, False, False]


@torch.no_grad()
def test_a_frames_passes_look_up_the_bank_once_and_a_commit_clears_the_memo(monkeypatch):
    """The recall depends only on the frame's actions and the cache: its passes reuse one lookup, and the
    next frame (after the commit changed the cache) looks up afresh and still recalls exactly."""
    from worldmodel.model.cache import HeadingBank

    m = heading_model()
    tok = frames(6)
    cache = commit_all(m, tok, [-1, 1, 1, 1])
    calls, lookup = [], HeadingBank.lookup
    monkeypatch.setattr(HeadingBank, "lookup", lambda self, *a: calls.append(1) or lookup(self, *a))
    a, q = torch.tensor([1]), torch.full((1, *GRID), V)
    first = [m.forward_new_frame(q, torch.tensor([0.0]), a, cache).logits for _ in range(3)]
    assert len(calls) == 1 and all(torch.equal(first[0], f) for f in first[1:])
    m.forward_new_frame(q, torch.tensor([0.0]), torch.tensor([1]), cache)        # another actions tensor
    assert len(calls) == 2
    m.commit_frame(tok[:, 4], a, cache)                                          # the cache changes
    m.forward_new_frame(q, torch.tensor([0.0]), a, cache)
    assert len(calls) == 4 and cache.bank.memo is not None
    cache.reset()
    assert cache.bank.memo is None


@torch.no_grad()
def test_recall_needs_the_same_place_a_view_missing_from_the_window_and_keeps_the_first_view():
    m = heading_model()
    tok = frames(9)

    def lookup(actions: list[int], new: int) -> bool:
        cache = commit_all(m, tok, actions)
        heading = cache.headings + torch.tensor([YAW[new]], dtype=torch.float64)
        return bool(cache.bank.lookup(heading, torch.tensor([new]), cache.valid)[0][0])

    assert lookup([-1, 1, 1, 1], 1)                       # back to 0° after three turns: recalled
    assert not lookup([-1, 1, 1, 1], 0)                   # a step forward: a new place, nothing to recall
    # frame 0 (0°) was seen before the step forward (frame 3): facing 0° again at the new place recalls nothing
    assert not lookup([-1, 1, 1, 0, 1], 1)
    # a step forward, then a full turn: the 0° view of the new place (frame 1) replaced the old one and comes back
    assert lookup([-1, 0, 1, 1, 1], 1)
    # the view is still in the window (left, right, right: 0° is 2 frames back): the window's own copy wins
    assert not lookup([-1, 1, 2, 2], 1)
    # the first view of a heading at a place stays in its bucket: frame 0, not the later frame 4 at 0° too
    cache = commit_all(m, tok, [-1, 1, 1, 1, 1, 1, 1, 1])    # headings 0, 90, ..., 630: two circles
    assert cache.bank.positions[0].tolist() == [0, 1, 2, 3] and cache.bank.valid.all()
    with pytest.raises(MaskFlowError, match="heading recall needs a model with heading rotary"):
        heading_model(heading_pairs=0).new_cache(1, stays=STAYS)
    with pytest.raises(MaskFlowError, match="stays has 2 entries for the model's 4 actions"):
        m.new_cache(1, stays=(True, False))


@torch.no_grad()
def test_recall_keeps_memory_constant_and_resets_per_rollout():
    m = heading_model(depth=2)
    cache = m.new_cache(2, stays=STAYS)
    tok = torch.randint(0, V, (2, 40, *GRID), generator=torch.Generator().manual_seed(3))
    sizes = []
    for j in range(40):
        m.commit_frame(tok[:, j], torch.tensor([1, 1]) if j else torch.tensor([-1, -1]), cache)
        sizes.append(cache.nbytes())
    assert len(set(sizes)) == 1 and cache.bank.valid.all()
    copy = cache.clone()
    cache.reset(torch.tensor([True, False]))
    assert cache.bank.valid.tolist() == [[False] * 4, [True] * 4] and copy.bank.valid.all()
    cache.splice(torch.tensor([True, False]), copy.clone().__class__(
        [k[:1] for k in copy.keys], [v[:1] for v in copy.values], copy.valid[:1], copy.positions[:1],
        copy.headings[:1], _rows(copy.bank, 1)))
    assert cache.bank.valid.all() and torch.equal(cache.bank.keys[0][0], copy.bank.keys[0][0])


def _rows(bank, n: int):
    """The first ``n`` rollouts of a bank."""
    from worldmodel.model.cache import HeadingBank

    return HeadingBank([k[:n] for k in bank.keys], [v[:n] for v in bank.values], bank.valid[:n],
                       bank.positions[:n], bank.places[:n], bank.slot_headings[:n], bank.slot_places[:n],
                       bank.place[:n], bank.stays, bank.width)


def test_the_cached_rollout_recalls_while_turning_and_its_short_history_pass_does_not():
    from worldmodel.sampling import SamplerConfig
    from worldmodel.sampling.rollout import CachedRollout

    m = heading_model(depth=2)
    sc = SamplerConfig("mgm", steps=2, history_guidance=1.0, history_guidance_recent=1)
    tok = frames(4)
    outs = {}
    for stays in (STAYS, None):
        ro = CachedRollout(m, sc, batch_size=1, stays=stays)
        ro.reset(tok[:, :1], torch.tensor([[-1]]))
        assert (ro.cache.bank is not None) == (stays is not None) and ro._short_history().bank is None
        g = torch.Generator().manual_seed(0)
        outs[stays is None] = torch.stack([ro.step(torch.tensor([1]), g).tokens for _ in range(6)])
        assert ro.memory_bytes() == ro.cache.nbytes()
    # the first three turns face new headings (nothing to recall: the same dream); the fourth faces 0° again
    assert torch.equal(outs[True][:3], outs[False][:3])
    assert not torch.equal(outs[True][3:], outs[False][3:])
