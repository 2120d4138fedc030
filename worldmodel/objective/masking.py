"""Frame-level masking for MaskFlow training: per-frame times, corruption, fused-SNR weights, loss.

Axis letters: b batch, f frames, h w token grid, v vocabulary including the mask class.

Training (docs/algorithm.md#frame-level-masking): every frame f of every clip gets its own time
t[b, f] ("frame-level masking"; the constant-masking baseline shares one t per clip), each token is kept
with probability κ(t_f) and otherwise replaced by the mask id, and the loss is a cross-entropy
over the masked tokens only, weighted per frame by the discrete fused-SNR rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from envs.common.errors import ConfigError
from worldmodel.objective.schedules import Scheduler


@dataclass
class MaskingConfig:
    """How per-frame times are drawn and how the masked loss is weighted."""

    mode: str = "frame"                 # "frame": independent t per frame (MaskFlow); "constant": one t per clip
    eps: float = 1e-3                   # t ~ (1 − eps)·U(0, 1) + eps, as upstream
    clean_context_prob: float = 0.0     # probability that a clip keeps a random number of leading frames clean
    max_clean_frames: int = -1          # upper bound of that number; −1 = frames − 1
    weighting: str = "fused_snr"        # "fused_snr" | "min_snr" | "none"
    snr_clip: float = 6.0               # c in the fused-SNR rule
    snr_decay: float = 0.8              # d in the fused-SNR rule (README value; class default 0.96)

    def __post_init__(self) -> None:
        if self.mode not in ("frame", "constant"):
            raise ConfigError(f"masking={self.mode!r} is not valid; use 'frame' (MaskFlow) or 'constant' (baseline)")
        if self.weighting not in ("fused_snr", "min_snr", "none"):
            raise ConfigError(f"loss weighting {self.weighting!r} is not valid; use fused_snr, min_snr or none")
        if not 0.0 <= self.clean_context_prob <= 1.0:
            raise ConfigError(f"clean_context_prob={self.clean_context_prob} must lie in [0, 1]")


def sample_times(batch: int, frames: int, cfg: MaskingConfig, generator: torch.Generator) -> torch.Tensor:
    """Draw per-frame times t (b f) in [eps, 1]; leading clean-context frames get exactly t = 1.

    Draws a fixed amount of randomness per call, so a batch's times depend only on the generator state.
    """
    u = torch.rand(batch, frames, generator=generator)
    if cfg.mode == "constant":
        u = u[:, :1].expand(batch, frames)
    t = (1 - cfg.eps) * u + cfg.eps
    if cfg.mode == "constant":
        t = t.clamp(cfg.eps, 1 - cfg.eps)
    # Clean context: a clip keeps m ~ U{1..max} leading frames clean (the paper's "context frames at t = 1").
    use = torch.rand(batch, generator=generator) < cfg.clean_context_prob
    hi = frames - 1 if cfg.max_clean_frames < 0 else min(cfg.max_clean_frames, frames - 1)
    m = torch.randint(1, max(hi, 1) + 1, (batch,), generator=generator) * use * (hi >= 1)
    clean = torch.arange(frames)[None, :] < m[:, None]
    return torch.where(clean, torch.ones_like(t), t)


def corrupt(tokens: torch.Tensor, t: torch.Tensor, scheduler: Scheduler, mask_id: int,
            uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each token independently with probability 1 − κ(t_f) of its frame.

    tokens (b f h w) long, t (b f), uniform (b f h w) in [0, 1) (the draw; explicit so that sharded
    data-parallel ranks can slice one global draw). Returns (noisy tokens, masked bool (b f h w)).
    """
    keep = scheduler.kappa(t.to(torch.float32))[:, :, None, None].to(uniform.device)
    masked = uniform >= keep
    masked &= (t < 1)[:, :, None, None].to(masked.device)      # t = 1 means clean, even where κ rounds
    return torch.where(masked, torch.full_like(tokens, mask_id), tokens), masked


def fused_snr_weights(kappa: torch.Tensor, snr_clip: float = 6.0, decay: float = 0.8) -> torch.Tensor:
    """Per-frame loss weights (b f) in [0, snr_clip], the discrete fused-SNR rule
    (docs/algorithm.md#frame-weights).

    SNR_f = κ²/(1−κ)², n_f = min(SNR_f, c)/c, a_1 = n_1, a_f = d·a_{f−1} + (1−d)·n_f,
    ā_1 = 0, ā_f = a_{f−1}, w_f = c·[1 − (1 − d·ā_f)(1 − n_f)].
    """
    snr = kappa.pow(2) / (1 - kappa).clamp_min(1e-12).pow(2)
    n = snr.clamp(max=snr_clip) / snr_clip
    a_prev = torch.zeros_like(n[:, 0])
    weights = []
    for f in range(n.shape[1]):
        # A frame counts as informative when it is itself clean or when its recent past was.
        weights.append(snr_clip * (1 - (1 - decay * a_prev) * (1 - n[:, f])))
        a_prev = n[:, f] if f == 0 else decay * a_prev + (1 - decay) * n[:, f]
    return torch.stack(weights, dim=1)


def min_snr_weights(kappa: torch.Tensor, snr_clip: float = 6.0) -> torch.Tensor:
    """Plain min-SNR weights min(κ²/(1−κ)², c), per frame (b f)."""
    return (kappa.pow(2) / (1 - kappa).clamp_min(1e-12).pow(2)).clamp(max=snr_clip)


def frame_weights(t: torch.Tensor, scheduler: Scheduler, cfg: MaskingConfig) -> torch.Tensor:
    """The per-frame loss weights (b f) that ``cfg.weighting`` selects."""
    kappa = scheduler.kappa(t.to(torch.float32))
    if cfg.weighting == "fused_snr":
        return fused_snr_weights(kappa, cfg.snr_clip, cfg.snr_decay)
    if cfg.weighting == "min_snr":
        return min_snr_weights(kappa, cfg.snr_clip)
    return torch.ones_like(kappa)


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, masked: torch.Tensor,
                         weights: torch.Tensor | None = None,
                         denominator: torch.Tensor | float | None = None) -> tuple[torch.Tensor, dict]:
    """Σ(ce·w·M) / ΣM over masked tokens only (upstream ``mask_ce``); returns (loss, logs).

    logits (b f h w v) or already-selected rows (n v); target, masked (b f h w); weights (b f) or None.
    ``denominator`` overrides ΣM (data-parallel training passes the global masked count so that
    averaging ranks gives the single-process loss). Logs are floats: masked_ce (unweighted mean),
    masked_acc and mask_ratio.
    """
    rows = logits[masked] if logits.dim() == 5 else logits
    tgt = target[masked]
    ce = F.cross_entropy(rows.float(), tgt, reduction="none")
    w = ce.new_ones(()) if weights is None else weights[:, :, None, None].expand_as(masked)[masked].float()
    count = masked.sum()
    denom = count.float() if denominator is None else torch.as_tensor(denominator, dtype=torch.float32)
    loss = (ce * w).sum() / (denom.to(ce.device) + 1e-6)
    with torch.no_grad():
        n = max(int(count), 1)
        logs = {"masked_ce": float(ce.sum()) / n,
                "masked_acc": float((rows.argmax(-1) == tgt).sum()) / n,
                "mask_ratio": float(count) / max(masked.numel(), 1)}
    return loss, logs
