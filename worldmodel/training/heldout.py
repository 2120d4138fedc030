"""Held-out metrics of a world model during training (test-split mazes, fixed clips and draws).

Axis letters: b batch, f frames, h w token grid.

- ``acc_mask{r}``: masked-token accuracy when every frame of a clip is masked at ratio r (the time
  passed to the model is the t with 1 − κ(t) = r), for r in the configured levels.
- ``acc_next``: next-frame token accuracy — frames 0..k−2 clean with their actions, frame k−1 fully
  masked (t = 0), one forward pass, argmax — against ``acc_copy``, the copy-the-last-frame baseline;
  ``acc_next_changed`` is the accuracy on tokens that differ from the last context frame (where
  copying scores 0), and ``acc_next_noaction`` the same prediction with every action dropped.
- ``reward_bce`` / ``done_bce`` / ``reward_acc``: the heads on clean frames.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from worldmodel.model.latte import Latte
from worldmodel.objective.schedules import Scheduler, inverse_kappa
from worldmodel.training.data import TokenClips

MASK_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)


def eval_windows(clips: TokenClips, num: int) -> np.ndarray:
    """``num`` window indices spread evenly over the split (fixed across evaluations)."""
    return np.unique(np.linspace(0, len(clips) - 1, min(num, len(clips))).round().astype(np.int64))


@torch.no_grad()
def evaluate(model: Latte, clips: TokenClips, scheduler: Scheduler, num_clips: int = 32, batch_size: int = 16,
             device: torch.device | str = "cpu", autocast: torch.dtype | None = None, seed: int = 1234,
             levels: tuple[float, ...] = MASK_LEVELS) -> dict[str, float]:
    """Run the held-out metrics (see module docstring) on ``num_clips`` fixed clips; returns floats."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}

    def add(key: str, hits: torch.Tensor, n: torch.Tensor | int) -> None:
        sums[key] = sums.get(key, 0.0) + float(hits)
        counts[key] = counts.get(key, 0.0) + float(n)

    ctx = (lambda: torch.autocast(torch.device(device).type, dtype=autocast)) if autocast else contextlib.nullcontext
    V = model.cfg.mask_id
    windows = eval_windows(clips, num_clips)
    for i in range(0, len(windows), batch_size):
        b = clips.batch(windows[i: i + batch_size]).to(device)
        tok, act = b.tokens, b.actions
        n, f = tok.shape[:2]
        for r in levels:
            uniform = torch.rand(tok.shape, generator=gen).to(device)
            masked = uniform < r
            t = inverse_kappa(scheduler, 1.0 - r).expand(n, f).to(device)
            with ctx():
                x, c = model.features(torch.where(masked, V, tok), t, act)
                rows, index = model.masked_logits(x, c, masked)
            add(f"acc_mask{r:g}", (rows.argmax(-1) == tok.flatten()[index]).sum(), len(index))
        # Next frame: clean context, last frame fully masked.
        noisy = tok.clone()
        noisy[:, -1] = V
        t = torch.ones(n, f, device=device)
        t[:, -1] = 0.0
        last, prev = tok[:, -1], tok[:, -2]
        changed = last != prev
        for key, actions in (("acc_next", act), ("acc_next_noaction", torch.full_like(act, -1))):
            with ctx():
                logits = model(noisy, t, actions).logits[:, -1]
            pred = logits.argmax(-1)
            add(key, (pred == last).sum(), last.numel())
            if key == "acc_next":
                add("acc_next_changed", ((pred == last) & changed).sum(), changed.sum())
        add("acc_copy", (prev == last).sum(), last.numel())
        # Reward / termination heads on fully clean clips.
        with ctx():
            out = model(tok, torch.ones(n, f, device=device), act)
        rew, done = (b.rewards > 0).float(), b.terminated.float()
        add("reward_bce", F.binary_cross_entropy_with_logits(out.reward_logits, rew, reduction="sum"), rew.numel())
        add("done_bce", F.binary_cross_entropy_with_logits(out.done_logits, done, reduction="sum"), done.numel())
        add("reward_acc", ((out.reward_logits > 0).float() == rew).sum(), rew.numel())
    model.train(was_training)
    return {k: sums[k] / max(counts[k], 1.0) for k in sums}
