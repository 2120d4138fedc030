"""Memory probe: does a world model use frames beyond a 16-frame window when the view returns to one?

    PYTHONPATH=. python benchmarks/memory_probe.py CHECKPOINT [CHECKPOINT ...] --data TOKENS [--out FILE]
        [--context-noise P] [--guidance W]

Teacher-forced, no sampling: in the test split of a token dataset (``maskflow collect policy=revisit``
gives many), a *return frame* g has exactly the tokens of a frame 16 or more frames earlier, of none of
the 15 frames before it, and differs from frame g − 1 (the renderer is deterministic, so returning to a
view gives identical tokens). Only a model that remembers beyond a 16-frame window can know it. For each
return frame the model predicts frame g fully masked (as ``acc_next`` in training) from

- ``window16``: the 15 frames before it (release 1's window), and
- ``full``: the model's whole window (k − 1 frames before it), when k > 16,

and the probe reports token accuracy on the tokens that differ from frame g − 1 (where copying the last
frame scores 0), per return frame, with the paired margin full − window16 and its bootstrap 95 % interval;
``circle_ends`` repeats both for the return frames that end a circle in place (no return frame among the
two before them, as there is on the way back of a turn loop).
The same on as many ordinary frames (no return) is the control: memory should help return frames only.

Two variants probe why memory that works here may not work in a dream:

- ``--context-noise P``: every history frame has each token replaced by a random id with probability P
  (the same corrupted copy for both windows), as a dream's own, partly wrong frames are; the frame to
  predict and the "changed" mask stay real. Memory that survives this is a lookup robust to approximate
  frames.
- ``--guidance W``: also scores far-history guidance, argmax of log p_full + W·(log p_full − log
  p_window16) (``history_guidance=W history_guidance_recent=15`` in a dream).

Axis letters: b batch, f frames, h w token grid.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import torch

from envs.common.files import write_json
from envs.loops import return_frames

SHORT = 16                      # release 1's window: 15 frames of history
SPAN = 31                       # return frames are looked for this far back (a 30-frame loop, the goal)


def _logprobs(model, tokens: np.ndarray, context: np.ndarray, actions: np.ndarray, g: np.ndarray,
              history: int) -> torch.Tensor:
    """Log-probabilities (b h w V) of frames ``g`` (fully masked, one pass) from the ``history`` frames of
    ``context`` before each."""
    V = model.cfg.mask_id
    idx = g[:, None] + np.arange(-history, 1)[None]                   # (b, history + 1)
    tok = torch.from_numpy(context[idx].astype(np.int64))            # (b f h w)
    tok[:, -1] = V
    act = torch.from_numpy(actions[idx].astype(np.int64))            # (b f)
    t = torch.ones(tok.shape[:2])
    t[:, -1] = 0.0
    return torch.log_softmax(model(tok, t, act).logits[:, -1, ..., :V].float(), dim=-1)


def _changed_hits(pred: torch.Tensor, tokens: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Accuracy of ``pred`` (b h w) on the tokens of frames ``g`` that differ from frame g − 1."""
    want, prev = torch.from_numpy(tokens[g].astype(np.int64)), torch.from_numpy(tokens[g - 1].astype(np.int64))
    changed = want != prev
    hits = ((pred == want) & changed).flatten(1).sum(1).float()
    return (hits / changed.flatten(1).sum(1).clamp(min=1)).numpy()


@torch.no_grad()
def changed_accuracy(model, tokens: np.ndarray, actions: np.ndarray, frames: np.ndarray, history: int,
                     batch: int = 16, context: np.ndarray | None = None) -> np.ndarray:
    """Per frame g of ``frames``: accuracy of predicting frame g (fully masked, one pass, argmax) from the
    ``history`` frames before it (taken from ``context``, default ``tokens``: a corrupted copy probes
    robustness), on the tokens that differ from frame g − 1 of ``tokens``."""
    context = tokens if context is None else context
    out = [_changed_hits(_logprobs(model, tokens, context, actions, g, history).argmax(-1), tokens, g)
           for g in (frames[i: i + batch] for i in range(0, len(frames), batch))]
    return np.concatenate(out) if out else np.zeros(0)


@torch.no_grad()
def window_accuracies(model, tokens: np.ndarray, actions: np.ndarray, frames: np.ndarray, history: int, short: int,
                      guidance: float = 0.0, batch: int = 16, context: np.ndarray | None = None
                      ) -> dict[str, np.ndarray]:
    """Per frame, as :func:`changed_accuracy`, from one pass per window: ``short`` (the last ``short`` frames),
    ``full`` (``history`` > ``short`` frames) and, with ``guidance`` > 0, ``guided``: argmax of log p_full +
    ``guidance``·(log p_full − log p_short) (far-history guidance)."""
    context = tokens if context is None else context
    out: dict[str, list[np.ndarray]] = {"short": [], "full": [], "guided": []}
    for g in (frames[i: i + batch] for i in range(0, len(frames), batch)):
        near = _logprobs(model, tokens, context, actions, g, short)
        full = _logprobs(model, tokens, context, actions, g, history)
        out["short"].append(_changed_hits(near.argmax(-1), tokens, g))
        out["full"].append(_changed_hits(full.argmax(-1), tokens, g))
        if guidance > 0:
            out["guided"].append(_changed_hits((full + guidance * (full - near)).argmax(-1), tokens, g))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def corrupt_tokens(tokens: np.ndarray, level: float, vocab: int, seed: int = 0) -> np.ndarray:
    """A copy of ``tokens`` with each token replaced by a uniformly random id in [0, ``vocab``) with
    probability ``level`` (the same draw for every use, so windows stay paired)."""
    if level <= 0:
        return tokens
    rng = np.random.default_rng(seed)
    hit = rng.random(tokens.shape) < level
    return np.where(hit, rng.integers(0, vocab, tokens.shape), tokens).astype(tokens.dtype)


def probe_arrays(model, tokens: np.ndarray, actions: np.ndarray, episode_start: np.ndarray, limit: int = 512,
                 seed: int = 0, short: int = SHORT, span: int = SPAN, context_noise: float = 0.0,
                 guidance: float = 0.0) -> dict[str, Any]:
    """The probe on arrays: ``tokens`` (n h w), ``actions`` (n,), ``episode_start`` (n,) (see
    :func:`return_frames`); at most ``limit`` return frames and as many ordinary ones, drawn with ``seed``;
    ``context_noise`` and ``guidance`` as the module docstring says."""
    from worldmodel.evaluation.stats import paired_margin

    k = int(model.cfg.max_frames)
    history = k - 1
    span = max(history, span)                   # the same frames for every model of window <= span + 1
    rets, ords = return_frames(tokens, episode_start, span, short)
    all_rets = rets
    rng = np.random.default_rng(seed)
    rets = np.sort(rng.permutation(rets)[:limit])
    ords = np.sort(rng.permutation(ords)[:len(rets)])
    out: dict[str, Any] = {"window": k, "short_window": short, "span": span, "return_frames": len(rets),
                           "ordinary_frames": len(ords), "context_noise": context_noise}
    context = corrupt_tokens(tokens, context_noise, int(model.cfg.mask_id), seed)       # mask id = V
    for name, frames in (("returns", rets), ("ordinary", ords)):
        if k <= short:
            small = changed_accuracy(model, tokens, actions, frames, short - 1, context=context)
            out[name] = {f"window{short}": float(small.mean()) if len(small) else None}
            continue
        acc = window_accuracies(model, tokens, actions, frames, history, short - 1, guidance, context=context)
        small, full, guided = acc["short"], acc["full"], acc["guided"]
        margin = paired_margin(full, small, seed=seed) if len(full) else None
        row: dict[str, Any] = {f"window{short}": float(small.mean()) if len(small) else None,
                               "full": float(full.mean()) if len(full) else None, f"full_minus_window{short}": margin}
        if name == "returns":
            # return frames that end a circle in place: neither of the two frames before is a return frame (on
            # the way back of a turn loop every other frame is one)
            every = set(all_rets.tolist())
            alone = np.array([g - 1 not in every and g - 2 not in every for g in frames], bool)
            row["circle_ends"] = {"frames": int(alone.sum()),
                                  f"window{short}": float(small[alone].mean()) if alone.any() else None,
                                  "full": float(full[alone].mean()) if alone.any() else None}
        if guidance > 0:
            row[f"guided{guidance:g}"] = float(guided.mean()) if len(guided) else None
            row[f"guided{guidance:g}_minus_full"] = paired_margin(guided, full, seed=seed) if len(full) else None
        out[name] = row
    return out


def probe(checkpoint: str, data: str, split: str = "test", limit: int = 512, seed: int = 0,
          context_noise: float = 0.0, guidance: float = 0.0) -> dict[str, Any]:
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
            **probe_arrays(model, clips.tokens, clips.actions, first, limit, seed, context_noise=context_noise,
                           guidance=guidance)}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="world-model directories, 'default' or 'memory'")
    p.add_argument("--data", required=True, help="token dataset (e.g. of `maskflow collect policy=revisit`)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=512, help="most return frames scored")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--context-noise", type=float, default=0.0,
                   help="probability that a history token is replaced by a random id (0 = real context)")
    p.add_argument("--guidance", type=float, default=0.0, help="also score far-history guidance of this weight")
    args = p.parse_args(argv)
    if not 0 <= args.context_noise < 1 or args.guidance < 0:
        p.error("--context-noise must lie in [0, 1) and --guidance be >= 0")
    rows = [probe(c, args.data, args.split, args.limit, context_noise=args.context_noise, guidance=args.guidance)
            for c in args.checkpoints]
    text = json.dumps(rows, indent=1)
    print(text)
    if args.out:
        write_json(args.out, rows)
    return rows


if __name__ == "__main__":
    main()
