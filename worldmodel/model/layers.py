"""Building blocks of the discrete Latte backbone (DiT-style, adaLN-Zero).

Axis letters: b batch, f frames, p positions per frame, d width, H heads, e head width, n cached frames.
Activations are kept in one layout, (b f p d), for both block kinds; only q/k/v are rearranged for
attention, so each block costs one layout change instead of two full-activation transposes.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x·(1 + scale) + shift."""
    return torch.addcmul(shift, x, 1 + scale)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on the last axis (rotate-half form); cos/sin (f, e) broadcast over leading axes."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              causal: bool = False) -> torch.Tensor:
    """Softmax attention over (…, L, e) queries and (…, S, e) keys/values; mask True = may attend.

    On CUDA this is fused ``scaled_dot_product_attention``. On CPU, for our short sequences (64
    positions, ≤ 16 frames), two batched matmuls and a softmax are 3-5x faster than the CPU flash
    kernel, forward + backward, in fp32 and bf16 (measured in benchmarks/train.py's notes).
    """
    if q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    s = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
    if causal:
        mask = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.matmul(s.softmax(dim=-1).to(v.dtype), v)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the raw per-frame time t ∈ [0, 1] (no ×1000, as upstream) → MLP → (… d)."""

    def __init__(self, dim: int, freqs: int = 256, max_period: float = 10000.0):
        super().__init__()
        half = freqs // 2
        self.register_buffer("omega", torch.exp(-math.log(max_period) * torch.arange(half) / half),
                             persistent=False)
        self.mlp = nn.Sequential(nn.Linear(freqs, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t (…) float → (…, d)."""
        ang = t[..., None].float() * self.omega.float()       # fp32 angles even in a bf16 copy of the model
        return self.mlp(torch.cat([ang.cos(), ang.sin()], dim=-1).to(self.mlp[0].weight.dtype))


class Mlp(nn.Module):
    """Linear → GELU → Linear (exact erf GELU: 3x faster than the tanh form in bf16 on CPU)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation from the per-frame conditioning c (b f d)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def modulation(self, c: torch.Tensor) -> list[torch.Tensor]:
        """c (b f d) → six (b f 1 d) tensors, broadcast over the positions of each frame."""
        return list(self.ada(c)[:, :, None].chunk(6, dim=-1))

    def mlp_part(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, gate: torch.Tensor):
        return x + gate * self.mlp(modulate(self.norm2(x), shift, scale))


class SpatialBlock(AdaLNBlock):
    """Full self-attention among the p positions of each frame."""

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x (b f p d), c (b f d) → (b f p d)."""
        s1, sc1, g1, s2, sc2, g2 = self.modulation(c)
        b, f = x.shape[:2]
        qkv = self.qkv(modulate(self.norm1(x), s1, sc1))
        q, k, v = rearrange(qkv, "b f p (three H e) -> three (b f) H p e", three=3, H=self.heads)
        o = attention(q, k, v)
        x = x + g1 * self.proj(rearrange(o, "(b f) H p e -> b f p (H e)", b=b, f=f))
        return self.mlp_part(x, s2, sc2, g2)


class TemporalBlock(AdaLNBlock):
    """Self-attention across frames at each position, with rotary temporal positions.

    Either over a whole clip (``causal`` / ``attn_mask`` select the pattern) or, with ``past``, for one
    new frame against cached keys/values of earlier frames (the KV-cache rollout).
    """

    def forward(self, x: torch.Tensor, c: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                causal: bool = False, attn_mask: torch.Tensor | None = None,
                past: tuple[torch.Tensor, torch.Tensor] | None = None,
                past_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (b f p d), c (b f d), cos/sin (f, e) → (x (b f p d), (k, v)), k, v (b p H f e).

        With ``past`` (one new frame, f = 1, against a cache): past = rotated (keys, values) each
        (b p H n e), past_mask (b n) bool (True = a valid slot), cos/sin (b 1 1 1 e) the new frame's tables;
        the returned k is then rotated, ready to be cached (``LatteCache``)."""
        s1, sc1, g1, s2, sc2, g2 = self.modulation(c)
        b, f, p, _ = x.shape
        qkv = self.qkv(modulate(self.norm1(x), s1, sc1))
        q, k, v = rearrange(qkv, "b f p (three H e) -> three b p H f e", three=3, H=self.heads)
        if past is None:
            o = attention(rotate(q, cos, sin).flatten(0, 1), rotate(k, cos, sin).flatten(0, 1), v.flatten(0, 1),
                          mask=attn_mask, causal=causal)
            o = rearrange(o, "(b p) H f e -> b f p (H e)", b=b, p=p)
        else:
            k = rotate(k, cos, sin)
            o = rearrange(cached_attention(rotate(q, cos, sin), k, v, *past, past_mask), "b p H 1 e -> b 1 p (H e)")
        x = x + g1 * self.proj(o)
        return self.mlp_part(x, s2, sc2, g2), (k, v)


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor,
                     valid: torch.Tensor) -> torch.Tensor:
    """One new frame's attention over its cached past and itself, without concatenating the cache.

    q, k, v (b p H 1 e) of the new frame; past_k, past_v (b p H n e); valid (b n) bool → (b p H 1 e).
    Scores against the past and against the frame itself are joined only at the (n + 1)-wide softmax, so a
    pass reads the cache once and never copies it."""
    q = q * q.shape[-1] ** -0.5
    s_past = torch.matmul(q, past_k.transpose(-1, -2))                                  # (b p H 1 n)
    s_past = s_past.masked_fill(~valid[:, None, None, None, :], float("-inf"))
    s_self = (q * k).sum(-1, keepdim=True)                                              # (b p H 1 1)
    w = torch.cat([s_past, s_self], dim=-1).float().softmax(dim=-1).to(v.dtype)
    n = past_k.shape[3]
    return torch.matmul(w[..., :n], past_v) + w[..., n:] * v


class FinalLayer(nn.Module):
    """LayerNorm + adaLN shift/scale from c, then one linear to p²·(V+1) logits per position."""

    def __init__(self, dim: int, sub_positions: int, classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, sub_positions * classes)

    def zero_init(self) -> None:
        for lin in (self.ada[-1], self.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def features(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x (b f p d), c (b f d) → modulated, normalised features (b f p d) that the linear reads."""
        shift, scale = self.ada(c)[:, :, None].chunk(2, dim=-1)
        return modulate(self.norm(x), shift, scale)

    def forward(self, x: torch.Tensor, c: torch.Tensor, class_bias: torch.Tensor) -> torch.Tensor:
        """x (b f p d), c (b f d), class_bias (p²·(V+1)) → logits (b f p (p1 p2 v))."""
        h = self.features(x, c)
        # The −inf class bias is added inside the matmul, so [M] costs no extra pass over the logits.
        return F.linear(h, self.linear.weight, self.linear.bias + class_bias.to(self.linear.bias.dtype))


class FrameHeads(nn.Module):
    """Reward and termination logits from a frame's pooled features: (b f p d) → two (b f)."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 2))

    def zero_init(self) -> None:
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x.mean(dim=2)).float()
        return out[..., 0], out[..., 1]
