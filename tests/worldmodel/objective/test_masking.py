"""Per-frame times, corruption statistics, fused-SNR weights and the masked loss
(docs/algorithm.md#frame-level-masking)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from envs.common.errors import ConfigError
from worldmodel.objective.masking import (
    MaskingConfig,
    corrupt,
    frame_weights,
    fused_snr_weights,
    masked_cross_entropy,
    min_snr_weights,
    sample_times,
)
from worldmodel.objective.schedules import get_scheduler


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_frame_level_times_are_independent_per_frame_and_in_range():
    cfg = MaskingConfig(mode="frame")
    t = sample_times(4000, 8, cfg, gen())
    assert t.shape == (4000, 8)
    assert t.min() >= cfg.eps and t.max() <= 1.0
    assert t.mean().item() == pytest.approx(0.5, abs=0.01)
    assert t.std(dim=1).mean() > 0.2                               # frames of one clip differ
    corr = torch.corrcoef(t[:, :2].T)[0, 1]
    assert abs(corr.item()) < 0.05                                 # and are uncorrelated


def test_constant_masking_shares_one_time_per_clip():
    t = sample_times(500, 6, MaskingConfig(mode="constant"), gen())
    assert (t == t[:, :1]).all()
    assert t.std(dim=0).min() > 0.2                                # but clips differ


@pytest.mark.parametrize("max_clean", [-1, 2])
def test_clean_context_keeps_a_random_prefix_at_t_equal_one(max_clean):
    k = 6
    t = sample_times(3000, k, MaskingConfig(clean_context_prob=1.0, max_clean_frames=max_clean), gen(1))
    clean = t == 1.0
    m = clean.long().cumprod(dim=1).sum(dim=1)                     # length of the clean prefix
    hi = k - 1 if max_clean < 0 else max_clean
    assert m.min() == 1 and m.max() == hi                          # every count 1..hi occurs
    assert len(torch.unique(m)) == hi
    assert (t[~clean] < 1).all() and clean.sum() == m.sum()        # clean frames are exactly the prefix


def test_clean_context_probability_is_respected():
    t = sample_times(4000, 5, MaskingConfig(clean_context_prob=0.3), gen(2))
    assert (t[:, 0] == 1).float().mean().item() == pytest.approx(0.3, abs=0.03)


@pytest.mark.parametrize("name", ["sigmoid", "cosine", "linear"])
def test_corruption_mask_ratio_matches_one_minus_kappa(name):
    sched = get_scheduler(name)
    t = torch.tensor([[0.1, 0.25, 0.5, 0.75, 0.9, 1.0]])
    tokens = torch.randint(0, 50, (1, 6, 256, 256), generator=gen())
    noisy, masked = corrupt(tokens, t, sched, 50, torch.rand(1, 6, 256, 256, generator=gen(3)))
    ratio = masked.float().mean(dim=(2, 3))[0]
    torch.testing.assert_close(ratio, 1 - sched.kappa(t[0]), atol=0.01, rtol=0)
    assert (noisy[masked] == 50).all() and (noisy[~masked] == tokens[~masked]).all()
    assert not masked[0, -1].any()                                 # t = 1 is clean


@pytest.mark.parametrize("name, expected", [("sigmoid", 0.5), ("cosine", 2 / math.pi), ("linear", 0.5)])
def test_frame_level_mask_ratio_over_training_draws_matches_schedule(name, expected):
    # E[1 − κ(t)] for t ~ U(0, 1): 1/2 for the symmetric sigmoid and linear, 2/π for cosine.
    t = sample_times(2000, 8, MaskingConfig(), gen(4))
    tokens = torch.zeros(2000, 8, 8, 8, dtype=torch.long)
    _, masked = corrupt(tokens, t, get_scheduler(name), 7, torch.rand(tokens.shape, generator=gen(5)))
    assert masked.float().mean().item() == pytest.approx(expected, abs=0.01)


def test_fused_snr_hand_computed_example():
    # κ = (0.5, 0.9, 0.2), c = 6, d = 0.8: n = (1/6, 1, 1/96); a1 = 1/6, a2 = 1/3;
    # w1 = 6·n1 = 1; w2 = 6 (n2 = 1); w3 = 6·[1 − (1 − 0.8/3)(1 − 1/96)] = 1.645833…
    w = fused_snr_weights(torch.tensor([[0.5, 0.9, 0.2]]), snr_clip=6.0, decay=0.8)
    torch.testing.assert_close(w, torch.tensor([[1.0, 6.0, 1.6458333]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(min_snr_weights(torch.tensor([[0.5, 0.9, 0.2]])), torch.tensor([[1.0, 6.0, 0.0625]]))


def test_fused_snr_clean_past_lifts_a_masked_frame():
    w = fused_snr_weights(torch.tensor([[1.0, 1.0, 1e-5], [1e-5, 1e-5, 1e-5]]))
    assert w[0, 0] == pytest.approx(6.0) and w[1].max() < 1e-6     # fully masked, no clean past: ≈ 0
    assert w[0, 2] == pytest.approx(6 * 0.8 * (0.8 * 1 + 0.2 * 1), abs=1e-4)   # = 6·d·a2 with a2 = 1
    assert ((w >= 0) & (w <= 6)).all()


def test_frame_weights_selects_rule():
    t = torch.rand(3, 4, generator=gen(6))
    s = get_scheduler("sigmoid")
    assert (frame_weights(t, s, MaskingConfig(weighting="none")) == 1).all()
    torch.testing.assert_close(frame_weights(t, s, MaskingConfig(weighting="min_snr")), min_snr_weights(s.kappa(t)))


def test_masked_ce_matches_upstream_formula_and_ignores_unmasked_logits():
    g = gen(7)
    logits = torch.randn(2, 3, 4, 4, 11, generator=g)
    target = torch.randint(0, 10, (2, 3, 4, 4), generator=g)
    masked = torch.rand(2, 3, 4, 4, generator=g) < 0.5
    w = torch.rand(2, 3, generator=g) * 6
    loss, logs = masked_cross_entropy(logits, target, masked, w)
    ce = F.cross_entropy(logits.permute(0, 4, 1, 2, 3), target, reduction="none")
    ref = (ce * w[:, :, None, None] * masked).sum() / (masked.sum() + 1e-6)
    torch.testing.assert_close(loss, ref)
    assert logs["mask_ratio"] == pytest.approx(masked.float().mean().item())
    assert logs["masked_ce"] == pytest.approx((ce * masked).sum().item() / masked.sum().item(), rel=1e-5)
    changed = logits.clone()
    changed[~masked] = torch.randn_like(changed[~masked]) * 10     # unmasked logits do not matter
    torch.testing.assert_close(masked_cross_entropy(changed, target, masked, w)[0], loss)


def test_masked_ce_two_token_hand_example():
    # Two masked tokens with logits (0, ln 3) and (ln 2, 0): CE = ln 4 − ln 3 and ln 3 − ln 2 (targets 1, 0).
    logits = torch.tensor([[[[[0.0, math.log(3)], [math.log(2), 0.0]]]]])      # (1, 1, 1, 2, 2)
    target = torch.tensor([[[[1, 0]]]])
    masked = torch.ones(1, 1, 1, 2, dtype=torch.bool)
    loss, logs = masked_cross_entropy(logits, target, masked)
    expected = ((math.log(4) - math.log(3)) + (math.log(3) - math.log(2))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logs["masked_acc"] == 1.0


def test_masking_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="frame"):
        MaskingConfig(mode="random")
    with pytest.raises(ConfigError):
        MaskingConfig(weighting="snr")
    with pytest.raises(ConfigError):
        MaskingConfig(clean_context_prob=1.5)
