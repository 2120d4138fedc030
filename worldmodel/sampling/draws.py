"""Random draws shared by the samplers: a categorical draw that never emits the mask class, and a
per-sample top-n selection.

Axis letters: b batch, p positions (frames × grid flattened), v vocabulary incl. the mask class.
Every draw takes an explicit ``torch.Generator`` so rollouts are reproducible from one seed.
"""

from __future__ import annotations

import torch


def draw_tokens(logits: torch.Tensor, mask_id: int, temperature: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One categorical draw per position from ``softmax(logits / temperature)`` over the V real classes.

    logits (..., v) -> (tokens (...) long in [0, V), log-probability of each drawn token (...) float).
    The mask class (index ``mask_id`` = V) is sliced off, so it can never be emitted (pitfall 5).
    ``temperature == 0`` is greedy (argmax) with log-probabilities of the untempered softmax.
    """
    real = logits[..., :mask_id].float()
    if temperature > 0:
        probs = torch.softmax(real if temperature == 1 else real / temperature, dim=-1)
        tokens = inverse_cdf(probs, torch.rand((*probs.shape[:-1], 1), device=probs.device, generator=generator))
        return tokens, probs.gather(-1, tokens[..., None])[..., 0].clamp_min(1e-30).log()
    tokens = real.argmax(dim=-1)
    return tokens, real.gather(-1, tokens[..., None])[..., 0] - torch.logsumexp(real, dim=-1)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The class at quantile ``u`` (..., 1) in [0, 1) of each row of ``probs`` (..., V) → (...) long.

    One uniform per row instead of V exponentials (the RNG dominated a Gumbel-max draw). The CDF is
    found in two levels, over blocks of about √V classes and then inside the one block drawn, because a
    V-long cumulative sum per row cost more than the softmax itself (V = 1,000: 4.5 vs 2.3 ms for 4,096
    rows on one core)."""
    v = probs.shape[-1]
    block = max((d for d in range(1, int(v ** 0.5) + 1) if v % d == 0), key=lambda d: min(d, v // d))
    if block < 4:                                            # V without a useful divisor: one level
        cdf = probs.cumsum(dim=-1)
        return torch.searchsorted(cdf, u * cdf[..., -1:], right=True)[..., 0].clamp_(max=v - 1)
    rows = probs.reshape(-1, v // block, block)                             # (n B s)
    upper = rows.sum(-1).cumsum(-1)                                          # (n B) cumulative block mass
    u = u.reshape(-1, 1) * upper[:, -1:]
    b = torch.searchsorted(upper, u, right=True).clamp_(max=v // block - 1)  # (n 1) the block drawn
    below = torch.where(b > 0, upper.gather(-1, (b - 1).clamp(min=0)), torch.zeros_like(u))
    inner = rows.gather(1, b[:, :, None].expand(-1, 1, block))[:, 0].cumsum(-1)   # (n s)
    j = torch.searchsorted(inner, u - below, right=True).clamp_(max=block - 1)
    return (b * block + j).reshape(probs.shape[:-1])


def gumbel_noise(shape: torch.Size | tuple[int, ...], device: torch.device,
                 generator: torch.Generator) -> torch.Tensor:
    """Standard Gumbel(0, 1) samples of ``shape``."""
    u = torch.rand(shape, device=device, generator=generator).clamp_(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def select_top(conf: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """For each sample, mark its ``count[b]`` highest-confidence positions: (b p), (b,) -> bool (b p).

    Ranks come from one sort, so exactly ``count[b]`` positions are chosen even when confidences tie
    (upstream's threshold comparison could pick extra tokens, pitfall 4). Positions that must never be
    chosen should carry ``-inf`` and ``count[b]`` must not exceed the number of finite entries.
    """
    order = conf.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(conf.shape[1], device=conf.device)
                                             .expand_as(order).contiguous())
    return ranks < count[:, None]
