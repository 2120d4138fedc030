"""The MaskFlow training objective as a module: corrupt, predict, masked CE + reward/termination BCE.

Axis letters: b batch, f frames, h w token grid.

Optional token noise (``token_noise`` > 0) fights exposure bias: a dream conditions on its own
frames, whose tokens are partly wrong, while training only ever shows the model real ones. Each
frame draws a level n_f ~ U(0, token_noise) and each of its *visible* tokens is replaced by a
uniformly random id with probability n_f; the loss still covers the masked tokens only, so the
model learns to predict the truth from a corrupted past (GameNGen's noise augmentation, in tokens).

The randomness of a step is drawn once for the *global* batch from a generator seeded by
(seed, step), and every data-parallel rank slices its rows. Loss denominators (masked tokens,
clean frames) are therefore global counts known on every rank without communication, and the
averaged gradient of R ranks equals the single-process gradient of the same global batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from envs.common.errors import ConfigError
from worldmodel.model.latte import Latte
from worldmodel.objective.masking import MaskingConfig, corrupt, frame_weights, sample_times
from worldmodel.objective.schedules import get_scheduler


@dataclass
class ObjectiveConfig:
    """What the world model is trained to do."""

    scheduler: str = "sigmoid"                       # κ(t): sigmoid (paper) | cosine | linear
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    action_dropout: float = 0.1                      # fraction of frames whose action is replaced by "none"
    reward_weight: float = 0.1                       # weight of the reward + termination BCE terms
    token_noise: float = 0.0                         # max fraction of visible tokens per frame made random ids
    reward_pos_weight: float = 1.0                   # weight of positive frames in both heads' BCE (rare events)

    def __post_init__(self) -> None:
        if not self.reward_pos_weight > 0:
            raise ConfigError(f"reward_pos_weight={self.reward_pos_weight} must be > 0 (1 = unweighted)")
        if not 0.0 <= self.token_noise < 1.0:
            raise ConfigError(f"token_noise={self.token_noise} must lie in [0, 1) (the largest fraction of a "
                              "frame's visible tokens replaced by random ids; 0 = off)")


@dataclass
class ClipBatch:
    """A batch of clips: tokens (b f h w) long, actions (b f) long (−1 = none), rewards (b f) float,
    terminated (b f) bool."""

    tokens: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor

    def to(self, device: torch.device | str) -> ClipBatch:
        """The batch on ``device`` (copied without blocking where the memory allows)."""
        return ClipBatch(*(x.to(device, non_blocking=True) for x in
                           (self.tokens, self.actions, self.rewards, self.terminated)))


@dataclass
class StepDraws:
    """The randomness of one step: t (b f), uniform (b f h w), drop (b f) bool, and with token noise
    noise (b f h w) long: the random id that replaces a visible token there, −1 where none does."""

    t: torch.Tensor
    uniform: torch.Tensor
    drop: torch.Tensor
    noise: torch.Tensor | None = None

    def rows(self, start: int, stop: int) -> StepDraws:
        return StepDraws(self.t[start:stop], self.uniform[start:stop], self.drop[start:stop],
                         None if self.noise is None else self.noise[start:stop])

    def to(self, device: torch.device | str) -> StepDraws:
        return StepDraws(self.t.to(device), self.uniform.to(device), self.drop.to(device),
                         None if self.noise is None else self.noise.to(device))


def draw_step(batch: int, frames: int, grid: tuple[int, int], cfg: ObjectiveConfig,
              generator: torch.Generator, vocab_size: int = 0) -> StepDraws:
    """Draw per-frame times, corruption uniforms and action-dropout flags for a global batch, and with
    ``cfg.token_noise`` > 0 the random ids of token noise (``vocab_size`` real ids to draw from).

    Token-noise draws come after the others, so runs without it see exactly the same randomness."""
    t = sample_times(batch, frames, cfg.masking, generator)
    uniform = torch.rand(batch, frames, *grid, generator=generator)
    drop = torch.rand(batch, frames, generator=generator) < cfg.action_dropout
    noise = None
    if cfg.token_noise > 0:
        if vocab_size < 1:
            raise ConfigError("token noise needs the vocabulary size to draw random token ids")
        level = torch.rand(batch, frames, 1, 1, generator=generator) * cfg.token_noise
        hit = torch.rand(batch, frames, *grid, generator=generator) < level
        ids = torch.randint(0, vocab_size, (batch, frames, *grid), generator=generator)
        noise = torch.where(hit, ids, torch.full_like(ids, -1))
    return StepDraws(t, uniform, drop, noise)


class MaskFlowObjective(nn.Module):
    """Wraps a :class:`Latte`; ``forward`` returns (loss, logs). DDP wraps this module."""

    def __init__(self, model: Latte, cfg: ObjectiveConfig):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.scheduler = get_scheduler(cfg.scheduler)
        self.features: Callable = model.features      # replaced by a torch.compile'd version when asked

    def global_counts(self, draws: StepDraws) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked tokens, clean frames) of the global batch, from its draws alone."""
        _, masked = corrupt(torch.zeros_like(draws.uniform, dtype=torch.long), draws.t, self.scheduler,
                            self.model.cfg.mask_id, draws.uniform)
        return masked.sum(), (~masked.flatten(2).any(-1)).sum()

    def forward(self, batch: ClipBatch, draws: StepDraws, counts: tuple[torch.Tensor, torch.Tensor],
                world_size: int = 1, autocast: torch.dtype | None = None,
                with_metrics: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
        """batch (local rows), draws (local rows), counts = global (masked, clean) → (loss, logs);
        ``logs`` is empty unless ``with_metrics``.

        Loss = Σ w_f·CE over masked tokens / #masked + reward_weight·(BCE_reward + BCE_done) over clean
        frames / #clean, with global denominators times ``world_size`` (DDP averages over ranks).
        """
        mcfg = self.model.cfg
        noisy, masked = corrupt(batch.tokens, draws.t, self.scheduler, mcfg.mask_id, draws.uniform)
        if draws.noise is not None:             # random ids on visible tokens only: masked stay masked
            noisy = torch.where((draws.noise >= 0) & ~masked, draws.noise, noisy)
        actions = torch.where(draws.drop, torch.full_like(batch.actions, -1), batch.actions)
        ctx = torch.autocast(batch.tokens.device.type, dtype=autocast) if autocast else contextlib.nullcontext()
        with ctx:
            x, c = self.features(noisy, draws.t, actions, batch.actions)      # the heading sees every action
            rows, index = self.model.masked_logits(x, c, masked)
            reward_logits, done_logits = self.model.frame_heads(x)
        target = batch.tokens.flatten()[index]
        weights = frame_weights(draws.t, self.scheduler, self.cfg.masking).flatten()
        per_frame = mcfg.token_grid[0] * mcfg.token_grid[1]
        ce = F.cross_entropy(rows.float(), target, reduction="none")
        n_masked, n_clean = (x.float().clamp_min(1) / world_size for x in counts)
        loss_ce = (ce * weights[index // per_frame]).sum() / n_masked
        # Reward / termination heads learn only from clean frames, where the dream env queries them.
        clean = ~masked.flatten(2).any(-1)
        # goal reaches are rare (~1 frame in 1,500 of a random walk): positives weigh reward_pos_weight
        pos = torch.tensor(self.cfg.reward_pos_weight, device=reward_logits.device)
        bce_r = F.binary_cross_entropy_with_logits(reward_logits, (batch.rewards > 0).float(), reduction="none",
                                                   pos_weight=pos)
        bce_d = F.binary_cross_entropy_with_logits(done_logits, batch.terminated.float(), reduction="none",
                                                   pos_weight=pos)
        loss_heads = ((bce_r + bce_d) * clean).sum() / n_clean
        loss = loss_ce + self.cfg.reward_weight * loss_heads
        logs: dict[str, float] = {}
        if with_metrics:          # reading values back forces a device sync: only on logging steps
            with torch.no_grad():
                logs["loss"] = float(loss.detach())     # this rank's estimate of the global loss
                n, nc = max(int(masked.sum()), 1), max(int(clean.sum()), 1)
                logs.update({"masked_ce": float(ce.sum()) / n,
                             "masked_acc": float((rows.argmax(-1) == target).sum()) / n,
                             "mask_ratio": float(masked.float().mean()),
                             "reward_bce": float((bce_r * clean).sum()) / nc,
                             "done_bce": float((bce_d * clean).sum()) / nc,
                             "clean_frames": float(clean.float().mean())})
        return loss, logs
