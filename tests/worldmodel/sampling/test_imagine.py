"""The one imagine() driver: it picks the cached rollout or the chunkwise driver, gives the very frames each
gives when run by hand from the same generator, and counts NFE by the formula."""

from __future__ import annotations

import pytest
import torch

from envs.common.errors import SamplerSettingsError
from tests.worldmodel.sampling.test_rollout import V, tiny_model
from worldmodel.sampling import ModelDenoiser, SamplerConfig, make_sampler
from worldmodel.sampling.chunkwise import ChunkConfig, generate
from worldmodel.sampling.imagine import imagine, planned_nfe, runs_cached
from worldmodel.sampling.rollout import CachedRollout


def real(b: int = 2, m: int = 3, n: int = 6):
    """Context tokens (b m h w), their actions (b m) and the actions of n frames to imagine (b n)."""
    g = torch.Generator().manual_seed(1)
    return (torch.randint(0, V, (b, m, 4, 4), generator=g), torch.randint(-1, 3, (b, m), generator=g),
            torch.randint(0, 3, (b, n), generator=g))


@pytest.mark.parametrize("sampler", [SamplerConfig("mgm", steps=2, gumbel=1.0), SamplerConfig("fm", steps=2),
                                     SamplerConfig("mgm", steps=2, history_guidance=0.5)])
def test_cached_rollout_by_hand_and_by_imagine(sampler):
    model, (ctx, ctx_a, acts) = tiny_model(), real()
    ticks = []
    out = imagine(model, sampler, ctx, ctx_a, acts, 5, torch.Generator().manual_seed(3), tick=ticks.append)
    ro, gen = CachedRollout(model, sampler, 2), torch.Generator().manual_seed(3)
    ro.reset(ctx, ctx_a)
    steps = [ro.step(acts[:, j], gen) for j in range(5)]
    assert out.cached and torch.equal(out.tokens, torch.stack([s.tokens for s in steps], 1))
    assert torch.equal(out.reward_logits, torch.stack([s.reward_logits for s in steps], 1))
    assert out.nfe == ro.nfe == planned_nfe(model, sampler, 3, 5) == 5 * (2 * sampler.passes + 1)
    assert ticks == [1] * 5 and len(out.stamps) == 5 and 0 <= out.ready_s <= out.stamps[0]


@pytest.mark.parametrize("temporal,stride,cache", [("causal", 1, False), ("causal", 2, True),
                                                   ("bidirectional", 1, True)])
@pytest.mark.parametrize("name", ["mgm", "df", "rolling"])
def test_chunkwise_by_hand_and_by_imagine(temporal, stride, cache, name):
    model, (ctx, ctx_a, acts) = tiny_model(temporal=temporal), real(m=2)
    sampler = SamplerConfig(name, steps=2)
    assert not runs_cached(model, stride, cache)
    ticks = []
    out = imagine(model, sampler, ctx, ctx_a, acts, 6, torch.Generator().manual_seed(4), stride=stride, cache=cache,
                  tick=ticks.append)
    g = generate(ModelDenoiser(model), make_sampler(sampler), ctx, ChunkConfig(4, 2, 8, stride), int(model.cfg.mask_id),
                 torch.Generator().manual_seed(4), torch.cat([ctx_a, acts], 1))
    assert not out.cached and out.reward_logits is None
    assert torch.equal(out.tokens, g.tokens[:, 2:])
    assert out.nfe == g.nfe == planned_nfe(model, sampler, 2, 6, stride, cache)
    assert len(ticks) == len(out.stamps) == out.nfe


def test_settings_errors_come_from_the_driver():
    model, (ctx, ctx_a, acts) = tiny_model(), real(m=2)
    with pytest.raises(SamplerSettingsError, match="stride s=3 > k - m = 2"):
        imagine(model, SamplerConfig("mgm", steps=2), ctx, ctx_a, acts, 6, torch.Generator(), stride=3)
    with pytest.raises(SamplerSettingsError, match="frame by frame"):
        imagine(model, SamplerConfig("rolling", steps=2), ctx, ctx_a, acts, 6, torch.Generator())
