"""Samplers and the chunkwise driver: unmask schedules, categorical draws, the five samplers, exact NFE
accounting against the paper's figures, the final-chunk rule, seeding and settings errors."""

from __future__ import annotations

import math

import pytest
import torch

from envs.common.errors import SamplerSettingsError
from worldmodel.objective.schedules import get_scheduler
from worldmodel.sampling import (
    SAMPLER_NAMES,
    ChunkConfig,
    ModelDenoiser,
    SamplerConfig,
    generate,
    make_generator,
    make_sampler,
    nfe_formula,
    plan_chunks,
)
from worldmodel.sampling.diffusion_forcing import pyramid_levels
from worldmodel.sampling.draws import draw_tokens, select_top
from worldmodel.sampling.unmask_schedule import COUNT_MODES, KappaInverse, unmask_counts

V = 5  # toy codebook; the mask id is V


class Toy:
    """A denoiser with random logits that records what it is called with.

    ``mask_bias`` puts a huge logit on the mask class, so a sampler that forgets to exclude it fails.
    ``frames`` (when set) asserts that every call sees exactly that many frames.
    """

    def __init__(self, seed: int = 0, mask_bias: float = 50.0, frames: int | None = None, record: bool = True):
        self.g = torch.Generator().manual_seed(seed)
        self.mask_bias, self.frames, self.record = mask_bias, frames, record
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, tokens: torch.Tensor, t: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        assert tokens.dtype == torch.long and t.shape == tokens.shape[:2] == actions.shape
        if self.frames is not None:
            assert tokens.shape[1] == self.frames, f"window of {tokens.shape[1]} frames, expected {self.frames}"
        if self.record:
            self.calls.append((tokens.clone(), t.clone(), actions.clone()))
        logits = torch.randn(*tokens.shape, V + 1, generator=self.g)
        logits[..., V] += self.mask_bias
        return logits


def fast(tokens: torch.Tensor, t: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Cheapest possible denoiser for NFE counting (uniform logits, mask class very likely)."""
    out = torch.zeros(*tokens.shape, V + 1)
    out[..., V] = 30.0
    return out


# ---------------------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("mode", COUNT_MODES)
@pytest.mark.parametrize("steps", [1, 2, 7, 20])
def test_unmask_counts_sum_exactly_and_never_skip_a_step(mode, steps):
    num = torch.tensor([0, 1, steps - 1, steps, 256, 16 * 256 - 3])
    counts = unmask_counts(num, steps, mode)
    assert counts.shape == (len(num), steps)
    assert torch.equal(counts.sum(1), num)
    assert bool((counts >= 0).all())
    big = num >= steps
    assert bool((counts[big] >= 1).all()), "every step must unmask at least one token when it can"


def test_arccos_counts_grow_like_upstream():
    counts = unmask_counts(torch.tensor([16 * 1024]), 20, "arccos")[0]
    # docs/algorithm.md#unmask-count-schedules: [1, 271, 385, 473, ..., 1261, 1304] for 16 frames of 1024 tokens
    assert counts[0] == 1 and abs(int(counts[1]) - 271) <= 1 and abs(int(counts[-1]) - 1304) <= 2
    assert bool((counts[1:] >= counts[:-1] - 1).all())


@pytest.mark.parametrize("name", ["sigmoid", "cosine", "linear"])
def test_kappa_inverse_inverts_kappa(name):
    sched = get_scheduler(name)
    inv = KappaInverse(sched)
    u = torch.linspace(0.001, 1.0, 97)
    assert torch.allclose(sched.kappa(inv(u)), u, atol=2e-3)
    assert float(inv(torch.tensor([0.0]))) == 0.0 and float(inv(torch.tensor([1.0]))) == 1.0


# ---------------------------------------------------------------------------------------- draws
@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0])
def test_draw_never_emits_mask_and_follows_softmax(temperature):
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0, 0.5, 100.0]]).expand(40000, -1)
    tokens, logp = draw_tokens(logits, V, temperature, torch.Generator().manual_seed(0))
    assert int(tokens.max()) < V
    real = logits[0, :V]
    if temperature == 0:
        assert bool((tokens == real.argmax()).all())
    else:
        p = torch.softmax(real / temperature, -1)
        freq = torch.bincount(tokens, minlength=V).float() / len(tokens)
        assert torch.allclose(freq, p, atol=0.01)
        assert torch.allclose(logp, p.log()[tokens], atol=1e-5)


@pytest.mark.parametrize("vocab", [1000, 997, 12])
def test_inverse_cdf_draws_follow_the_probabilities(vocab):
    """The two-level inverse CDF (V = 1000 in blocks of 25, V = 12 in blocks of 4) and the one-level
    fallback (prime V) draw each class as often as its probability: total variation at sampling-noise level
    for 200,000 draws, and classes of probability 0 never drawn."""
    from worldmodel.sampling.draws import inverse_cdf

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(vocab, generator=g) * 2
    logits[::7] = float("-inf")                                     # impossible classes, spread over the blocks
    p = torch.softmax(logits, -1)
    n = 200_000
    tokens = inverse_cdf(p.expand(n, -1), torch.rand(n, 1, generator=g))
    assert tokens.shape == (n,) and int(tokens.min()) >= 0 and int(tokens.max()) < vocab
    freq = torch.bincount(tokens, minlength=vocab).double() / n
    assert float(freq[p == 0].sum()) == 0.0
    # expected TV of an exact sampler ~ sum sqrt(p (1 - p) / n) / 2 * sqrt(2 / pi); allow twice that
    bound = float((p * (1 - p) / n).sqrt().sum()) * 0.8 + 1e-3
    assert 0.5 * float((freq - p.double()).abs().sum()) < bound
    # one quantile per row: the same u gives the same class as a plain CDF search
    u = torch.rand(64, 1, generator=g)
    ref = torch.searchsorted(p.cumsum(-1).expand(64, -1).contiguous(), u * p.sum(), right=True)[:, 0]
    assert (inverse_cdf(p.expand(64, -1), u) == ref.clamp(max=vocab - 1)).float().mean() > 0.95


def test_select_top_picks_exact_counts_even_with_ties():
    conf = torch.zeros(3, 10)
    conf[1, :4] = float("-inf")
    count = torch.tensor([0, 6, 10])
    chosen = select_top(conf, count)
    assert chosen.sum(1).tolist() == [0, 6, 10]
    assert not bool(chosen[1, :4].any())


# ---------------------------------------------------------------------------------------- MGM
def _masked_window(b=2, f=4, h=3, w=3, ctx=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (b, f, h, w), generator=g)
    x[:, ctx:] = V
    return x


@pytest.mark.parametrize("name", ["mgm", "mgm_tfree"])
@pytest.mark.parametrize("steps", [1, 3, 20])
def test_mgm_unmasks_everything_in_exactly_t_steps_per_sample(name, steps):
    x = _masked_window(b=3)
    x[1, 1, 0] = 2                                  # samples start with different masked counts
    x[2, 2:] = 4
    toy = Toy()
    cfg = SamplerConfig(name=name, steps=steps)
    out = make_sampler(cfg).sample_chunk(toy, x, torch.zeros(3, 4, dtype=torch.long), V, make_generator(cfg))
    assert len(toy.calls) == steps
    assert int(out.max()) < V, "the mask token was emitted or left"
    known = x != V
    assert torch.equal(out[known], x[known]), "known tokens changed"
    # per step, each sample unmasks exactly its scheduled count (per-sample bookkeeping)
    masked = [(c[0] == V).flatten(1).sum(1) for c in toy.calls] + [torch.zeros(3, dtype=torch.long)]
    done = torch.stack([masked[i] - masked[i + 1] for i in range(steps)], 1)
    assert torch.equal(done, unmask_counts((x == V).flatten(1).sum(1), steps))
    # later steps see the tokens unmasked earlier (upstream fed a frozen copy, pitfall 1)
    if steps > 1:
        assert not torch.equal(toy.calls[0][0], toy.calls[-1][0])


def test_mgm_times_true_or_one():
    x = _masked_window(b=1, f=3, h=4, w=4, ctx=1)
    for name in ("mgm", "mgm_tfree"):
        toy = Toy()
        cfg = SamplerConfig(name=name, steps=6)
        make_sampler(cfg).sample_chunk(toy, x, torch.zeros(1, 3, dtype=torch.long), V, make_generator(cfg))
        ts = torch.stack([c[1][0] for c in toy.calls])                               # (steps f)
        assert torch.all(ts[:, 0] == 1.0), "context frames are clean: t = 1"
        if name == "mgm_tfree":
            assert torch.all(ts == 1.0)
        else:
            sched = get_scheduler("sigmoid")
            frac = torch.stack([(c[0][0] != V).flatten(1).float().mean(1) for c in toy.calls])
            assert torch.allclose(sched.kappa(ts[:, 1:]), frac[:, 1:].clamp(min=sched.kappa(torch.tensor(1e-3))),
                                  atol=3e-3)
            assert bool((ts[1:, 1:] >= ts[:-1, 1:]).all()) and float(ts[0, 1]) < 0.01


def test_mgm_gumbel_and_temperature_still_complete():
    x = _masked_window()
    for cfg in (SamplerConfig(gumbel=4.5, steps=5), SamplerConfig(temperature=0.0, steps=5)):
        out = make_sampler(cfg).sample_chunk(Toy(), x, torch.zeros(2, 4, dtype=torch.long), V, make_generator(cfg))
        assert int(out.max()) < V


# ---------------------------------------------------------------------------------------- FM / DF / rolling
def test_fm_follows_kappa_and_finishes():
    x = torch.full((1, 2, 32, 32), V)
    x[:, 0] = 1                                                                      # one context frame
    toy = Toy(mask_bias=0.0)
    cfg = SamplerConfig(name="fm", steps=40)
    out = make_sampler(cfg).sample_chunk(toy, x, torch.zeros(1, 2, dtype=torch.long), V, make_generator(cfg))
    assert len(toy.calls) == 40 and int(out.max()) < V and bool((out[:, 0] == 1).all())
    sched = get_scheduler("sigmoid")
    for j in (10, 20, 30):
        frac = float((toy.calls[j][0][0, 1] != V).float().mean())
        assert abs(frac - float(sched.kappa(torch.tensor(j / 40)))) < 0.08, (j, frac)
        assert float(toy.calls[j][1][0, 0]) == 1.0 and abs(float(toy.calls[j][1][0, 1]) - j / 40) < 1e-6


def test_df_pyramid_levels_lag_one_step_per_frame():
    lv = pyramid_levels(20 + 5, 5, 20)
    assert bool((lv[-1] == 20).all()), "every frame reaches the last level"
    assert bool((lv[:, 1:] <= lv[:, :-1]).all())
    first_full = (lv == 20).float().argmax(0)
    assert torch.equal(first_full, torch.arange(20, 25))


def test_rolling_times_match_the_unmasked_fraction():
    """Upstream reset t to the init ramp at every shift (pitfall 10); here t tracks each frame."""
    toy = Toy(mask_bias=0.0)
    k, m, n = 4, 1, 7
    cfg = SamplerConfig(name="rolling", steps=24)
    ctx = torch.zeros(1, m, 16, 16, dtype=torch.long)
    out = generate(toy, make_sampler(cfg), ctx, ChunkConfig(k, m, n), V, make_generator(cfg))
    assert out.nfe == nfe_formula("rolling", 24, k, m, n) == len(toy.calls) and int(out.tokens.max()) < V
    sched = get_scheduler("sigmoid")
    errs = []
    for tokens, t, _ in toy.calls:
        frac = (tokens[0] != V).flatten(1).float().mean(1)
        moving = (t[0] > 0.05) & (t[0] < 1)
        errs += (sched.kappa(t[0][moving]) - frac[moving]).abs().tolist()
    assert max(errs) < 0.1, max(errs)


# ---------------------------------------------------------------------------------------- driver + NFE
PAPER_NFE = [  # (sampler, steps, k, m, s, N, NFE) from the paper's tables and plot data
    ("mgm", 20, 16, 2, 14, 32, 60), ("mgm", 20, 16, 2, 14, 80, 120), ("mgm", 20, 16, 2, 14, 160, 240),
    ("mgm", 20, 36, 35, 1, 72, 740), ("mgm", 20, 36, 35, 1, 180, 2900),
    ("mgm", 20, 16, 15, 1, 32, 340), ("mgm", 20, 36, 12, 24, 180, 140),
    ("mgm_tfree", 20, 36, 35, 1, 72, 740), ("fm", 250, 16, 2, 14, 80, 1500),
    ("df", 250, 16, 2, 14, 32, 798), ("df", 250, 16, 2, 14, 80, 1596), ("df", 250, 16, 2, 14, 160, 3192),
    ("df", 250, 36, 12, 24, 72, 858), ("df", 250, 36, 12, 24, 180, 2002),
    ("rolling", 250, 16, 2, 14, 32, 788), ("rolling", 250, 16, 2, 14, 80, 1652),
    ("rolling", 250, 16, 2, 14, 160, 3092), ("rolling", 250, 36, 12, 24, 36, 500),
    ("rolling", 250, 36, 12, 24, 180, 2084),
]


@pytest.mark.parametrize("name,steps,k,m,s,n,paper", PAPER_NFE)
def test_counted_nfe_matches_formula_and_paper(name, steps, k, m, s, n, paper):
    assert nfe_formula(name, steps, k, m, n, s) == paper
    cfg = SamplerConfig(name=name, steps=steps)
    ctx = torch.zeros(1, m, 1, 1, dtype=torch.long)
    out = generate(fast, make_sampler(cfg), ctx, ChunkConfig(k, m, n, s), V, make_generator(cfg))
    assert out.nfe == paper
    assert int(out.tokens.max()) < V


@pytest.mark.parametrize("k,m,s,n", [(16, 2, 14, 32), (16, 2, 5, 40), (6, 0, 3, 14), (36, 35, 1, 40), (8, 3, 5, 6)])
def test_chunks_tile_the_video_and_the_last_grows_its_context(k, m, s, n):
    chunks = plan_chunks(ChunkConfig(k, m, n, s))
    covered = list(range(m))
    for c in chunks:
        assert c.context + c.new == min(k, n), "every window is exactly k frames (N when N < k)"
        assert c.start + c.context == len(covered), "a window's context is exactly the frames made so far"
        covered += range(c.start + c.context, c.start + c.context + c.new)
        assert c.start >= 0
    assert covered == list(range(n)), "each frame generated exactly once, nothing past N"
    if n > k:
        assert all(c.new == s for c in chunks[1:-1])
        assert chunks[-1].new == (n - k) - s * (len(chunks) - 2) and chunks[-1].context == k - chunks[-1].new


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_generate_keeps_context_feeds_actions_and_fills_everything(name):
    k, m, n, b = 5, 2, 11, 2
    toy = Toy(frames=k)
    cfg = SamplerConfig(name=name, steps=4)
    g = torch.Generator().manual_seed(1)
    ctx = torch.randint(0, V, (b, m, 3, 3), generator=g)
    actions = torch.randint(0, 9, (b, n), generator=g)
    out = generate(toy, make_sampler(cfg), ctx, ChunkConfig(k, m, n, 2), V, make_generator(cfg), actions)
    assert out.tokens.shape == (b, n, 3, 3) and int(out.tokens.max()) < V
    assert torch.equal(out.tokens[:, :m], ctx)
    assert out.nfe == len(toy.calls) == nfe_formula(name, 4, k, m, n, 2)
    starts = {c.start for c in out.chunks} if name != "rolling" else set(range(n - k + 1))
    for _, _, a in toy.calls:                       # each call's actions are a k-slice of the episode's
        assert any(torch.equal(a, actions[:, s0:s0 + k]) for s0 in starts)


@pytest.mark.parametrize("name", ["mgm", "fm"])
def test_seeds_make_generation_reproducible(name):
    ctx = torch.zeros(2, 2, 3, 3, dtype=torch.long)
    chunking = ChunkConfig(6, 2, 12, 2)

    def run(seed):
        cfg = SamplerConfig(name=name, steps=5, seed=seed)
        return generate(Toy(seed=7), make_sampler(cfg), ctx, chunking, V, make_generator(cfg)).tokens

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


@pytest.mark.parametrize("k,m,s,n,needle", [
    (16, 2, 15, 32, "stride"), (16, 16, 1, 32, "context"), (16, 20, 1, 32, "context"),
    (16, 2, 14, 2, "total"), (16, 2, 0, 32, "stride"), (16, -1, 1, 32, "context"), (6, 0, 6, 14, "context"),
])
def test_impossible_settings_give_clear_errors(k, m, s, n, needle):
    with pytest.raises(SamplerSettingsError, match=needle):
        plan_chunks(ChunkConfig(k, m, n, s))
    with pytest.raises(SamplerSettingsError):
        nfe_formula("mgm", 20, k, m, n, s)


def test_bad_sampler_settings_give_clear_errors():
    for kwargs, needle in [({"name": "ddim"}, "unknown sampler"), ({"steps": 0}, "steps"),
                           ({"temperature": -1.0}, "temperature"), ({"schedule": "zigzag"}, "schedule"),
                           ({"masking": "exp"}, "masking"), ({"gumbel": -1.0}, "gumbel")]:
        with pytest.raises(SamplerSettingsError, match=needle):
            SamplerConfig(**kwargs)
    with pytest.raises(SamplerSettingsError, match="N >= window"):
        generate(fast, make_sampler(SamplerConfig("rolling", steps=3)), torch.zeros(1, 1, 1, 1).long(),
                 ChunkConfig(6, 1, 4), V, torch.Generator())
    with pytest.raises(SamplerSettingsError, match="actions"):
        generate(fast, make_sampler(SamplerConfig(steps=2)), torch.zeros(1, 1, 1, 1).long(), ChunkConfig(4, 1, 6),
                 V, torch.Generator(), actions=torch.zeros(1, 5).long())
    with pytest.raises(SamplerSettingsError, match="frame-by-frame rollout only"):
        generate(fast, make_sampler(SamplerConfig(steps=2, action_guidance=1.0)), torch.zeros(1, 1, 1, 1).long(),
                 ChunkConfig(4, 1, 6), V, torch.Generator())


def test_real_model_through_the_adapter():
    from worldmodel.model.latte import Latte, model_config

    torch.manual_seed(0)
    cfg = model_config("tiny", vocab_size=V, token_grid=(4, 4), max_frames=4, num_actions=3, temporal="bidirectional")
    model = Latte(cfg).eval()
    with torch.no_grad():                           # zero-init heads would give uniform logits
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    sc = SamplerConfig("mgm", steps=3)
    ctx = torch.randint(0, V, (2, 1, 4, 4))
    denoiser = ModelDenoiser(model)
    assert denoiser.mask_id == V
    out = generate(denoiser, make_sampler(sc), ctx, ChunkConfig(4, 1, 9), denoiser.mask_id, make_generator(sc),
                   torch.randint(0, 3, (2, 9)))
    assert out.nfe == nfe_formula("mgm", 3, 4, 1, 9) == 3 * (1 + math.ceil(5 / 3))
    assert int(out.tokens.max()) < V and torch.equal(out.tokens[:, :1], ctx)


def test_unmask_counts_stay_on_the_samples_device():
    # the GPU training run of 2026-12-04 died here: the schedule's weights were made on the CPU while the
    # counts came from a CUDA batch; a meta tensor catches the same mix-up without a GPU
    counts = unmask_counts(torch.tensor([5, 40], device="meta"), 4)
    assert counts.device.type == "meta" and counts.shape == (2, 4)
