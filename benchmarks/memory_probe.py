"""Memory probe: does a world model use frames beyond a 16-frame window when the view returns to one?

    PYTHONPATH=. python benchmarks/memory_probe.py CHECKPOINT [CHECKPOINT ...] --data TOKENS [--out FILE]

Teacher-forced, no sampling: in the test split of a token dataset (``maskflow collect policy=revisit``
gives many), a *return frame* g has exactly the tokens of a frame 16 or more frames earlier, of none of
the 15 frames before it, and differs from frame g − 1 (the renderer is deterministic, so returning to a
view gives identical tokens). Only a model that remembers beyond a 16-frame window can know it. For each
return frame the model predicts frame g fully masked (as ``acc_next`` in training) from

- ``window16``: the 15 frames before it (release 1's window), and
- ``full``: the model's whole window (k − 1 frames before it), when k > 16,

and the probe reports token accuracy on the tokens that differ from frame g − 1 (where copying the last
frame scores 0), per return frame, with the paired margin full − window16 and its bootstrap 95 % interval.
The same on as many ordinary frames (no return) is the control: memory should help return frames only.

Axis letters: b batch, f frames, h w token grid.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

SHORT = 16                      # release 1's window: 15 frames of history
SPAN = 31                       # return frames are looked for this far back (a 30-frame loop, the goal)


def return_frames(tokens: np.ndarray, episode_start: np.ndarray, history: int, short: int = SHORT
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Indices g (with ``history`` frames before them in their episode) that return to a view of ``short`` or
    more frames earlier (within ``history``) and to none closer, and differ from g − 1; and ordinary frames
    (no equal frame in the history, differing from g − 1). ``tokens`` (n h w), ``episode_start`` (n,) =
    index of each frame's episode's first frame."""
    flat = tokens.reshape(len(tokens), -1)
    returns, ordinary = [], []
    for g in range(len(flat)):
        if g - history < episode_start[g] or np.array_equal(flat[g], flat[g - 1]):
            continue
        same = (flat[g - history: g] == flat[g]).all(1)            # (history,) oldest first
        far, near = same[: history - short + 1].any(), same[history - short + 1:].any()
        if far and not near:
            returns.append(g)
        elif not same.any():
            ordinary.append(g)
    return np.array(returns, np.int64), np.array(ordinary, np.int64)


@torch.no_grad()
def changed_accuracy(model, tokens: np.ndarray, actions: np.ndarray, frames: np.ndarray, history: int,
                     batch: int = 16) -> np.ndarray:
    """Per frame g of ``frames``: accuracy of predicting frame g (fully masked, one pass, argmax) from the
    ``history`` frames before it, on the tokens that differ from frame g − 1."""
    out = []
    V = model.cfg.mask_id
    for i in range(0, len(frames), batch):
        g = frames[i: i + batch]
        idx = g[:, None] + np.arange(-history, 1)[None]               # (b, history + 1)
        tok = torch.from_numpy(tokens[idx].astype(np.int64))         # (b f h w)
        act = torch.from_numpy(actions[idx].astype(np.int64))        # (b f)
        noisy = tok.clone()
        noisy[:, -1] = V
        t = torch.ones(tok.shape[:2])
        t[:, -1] = 0.0
        pred = model(noisy, t, act).logits[:, -1].argmax(-1)          # (b h w)
        changed = tok[:, -1] != tok[:, -2]
        hits = ((pred == tok[:, -1]) & changed).flatten(1).sum(1).float()
        out.append((hits / changed.flatten(1).sum(1).clamp(min=1)).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def probe_arrays(model, tokens: np.ndarray, actions: np.ndarray, episode_start: np.ndarray, limit: int = 512,
                 seed: int = 0, short: int = SHORT, span: int = SPAN) -> dict[str, Any]:
    """The probe on arrays: ``tokens`` (n h w), ``actions`` (n,), ``episode_start`` (n,) (see
    :func:`return_frames`); at most ``limit`` return frames and as many ordinary ones, drawn with ``seed``."""
    from worldmodel.evaluation.stats import paired_margin

    k = int(model.cfg.max_frames)
    history = k - 1
    span = max(history, span)                   # the same frames for every model of window <= span + 1
    rets, ords = return_frames(tokens, episode_start, span, short)
    rng = np.random.default_rng(seed)
    rets = np.sort(rng.permutation(rets)[:limit])
    ords = np.sort(rng.permutation(ords)[:len(rets)])
    out: dict[str, Any] = {"window": k, "short_window": short, "span": span, "return_frames": len(rets),
                           "ordinary_frames": len(ords)}
    for name, frames in (("returns", rets), ("ordinary", ords)):
        small = changed_accuracy(model, tokens, actions, frames, short - 1)
        row: dict[str, Any] = {f"window{short}": float(small.mean()) if len(small) else None}
        if k > short:
            full = changed_accuracy(model, tokens, actions, frames, history)
            row["full"] = float(full.mean()) if len(full) else None
            row[f"full_minus_window{short}"] = paired_margin(full, small, seed=seed) if len(full) else None
        out[name] = row
    return out


def probe(checkpoint: str, data: str, split: str = "test", limit: int = 512, seed: int = 0) -> dict[str, Any]:
    """The probe's figures for one checkpoint on a token dataset's split (see the module docstring)."""
    from worldmodel.common.threads import governor
    from worldmodel.model.checkpoint import load_world_model
    from worldmodel.training.data import TokenClips

    governor(0)
    model, _, meta = load_world_model(checkpoint)
    clips = TokenClips(data, split, clip_len=2)
    n = len(clips.tokens)
    first = np.zeros(n, np.int64)                # each frame's episode start: clip starts skip each last frame
    ends = np.setdiff1d(np.arange(n), clips.starts)                  # every episode's last frame
    for lo, hi in zip(np.concatenate([[0], ends[:-1] + 1]), ends + 1, strict=True):
        first[lo:hi] = lo
    return {"checkpoint": str(meta["path"]), "data": data, "split": split,
            **probe_arrays(model, clips.tokens, clips.actions, first, limit, seed)}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="world-model directories or 'default'")
    p.add_argument("--data", required=True, help="token dataset (e.g. of `maskflow collect policy=revisit`)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=512, help="most return frames scored")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    rows = [probe(c, args.data, args.split, args.limit) for c in args.checkpoints]
    text = json.dumps(rows, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
