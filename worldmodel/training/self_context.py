"""Self-rolled context: train on clips whose middle the model dreamed itself (``self_context`` > 0).

A dream conditions on its own frames; training shows the model only real ones. Where the two disagree the
dream trusts its recent imagination over a far view it should recognise: turning a full circle it dreams
new views for 29 frames and then, back at the start heading, continues them instead of the start view 30
frames back (docs/results.md#heading-rotary-the-dream-finds-its-way-back). On a share ``self_context`` of
the steps, every clip of the step gets a span of j frames dreamed by the EMA weights (no gradient) from the
real frames before it and with the real actions:

    clip  =  real [0, s)  |  dreamed [s, s + j)  |  real [s + j, k)
    t     =  as drawn     |  1 (clean: no loss)  |  as drawn

The loss covers the masked tokens of the real frames, so the model learns to predict the real maze after
its own drifted frames, from whatever real past it still holds: what DIAMOND and GameNGen call fighting
exposure bias, with the model's own errors instead of random noise. Cost per such step: s commit passes
and j × (steps + 1) one-frame passes (about one more training step's compute for s = j = 15, 4 steps).

**Dreamed returns** (``return_dream`` > 0) aim the same idea at the far lookup alone. On the return clips of
``return_share`` (each ends on a view it holds ``return_gap`` or more frames earlier), the last j frames
before the return frame are dreamed, j uniform in [1, ``return_dream``] per step, ``return_dream`` <
``return_gap``, so the view returned to stays real:

    return clip  =  real [0, k − 1 − j)  |  dreamed [k − 1 − j, k − 1)  |  real return frame k − 1
    t            =  1 (clean)            |  1 (clean)                  |  as drawn

The only loss of those rows is on the return frame: a full circle in a dream ends exactly so, after views
the model invented, with the exact match 30 frames back. Ordinary rows are untouched.

Axis letters: b batch, f frames, h w token grid.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from worldmodel.objective.loss import ClipBatch, StepDraws
from worldmodel.sampling.base import SamplerConfig
from worldmodel.sampling.imagine import imagine


def draw_span(frames: int, share: float, longest: int, generator: torch.Generator) -> tuple[int, int] | None:
    """(s, j): dream frames [s, s + j) of this step's clips, with 1 <= s and s + j <= frames − 1 (a real
    frame before and after), j <= ``longest``; None on the 1 − ``share`` of the steps without. Always draws
    the same three numbers, so the rest of a run's randomness does not depend on the outcome."""
    u = float(torch.rand((), generator=generator))
    s = int(torch.randint(1, frames - 1, (), generator=generator))
    j = int(torch.randint(1, min(longest, frames - 1 - s) + 1, (), generator=generator))
    return (s, j) if u < share else None


def clean_span(draws: StepDraws, span: tuple[int, int]) -> StepDraws:
    """The step's draws with the dreamed frames at t = 1: clean context, no loss there."""
    s, j = span
    t = draws.t.clone()
    t[:, s:s + j] = 1.0
    return replace(draws, t=t)


@torch.no_grad()
def dream_span(model: torch.nn.Module, batch: ClipBatch, span: tuple[int, int], steps: int,
               generator: torch.Generator, rows: slice = slice(None)) -> ClipBatch:
    """``batch`` with tokens [s, s + j) of ``rows`` (default all) replaced by ``model``'s dream (MGM, ``steps``
    per frame, temperature 1) from their real tokens [0, s) and the clip's actions; actions, rewards, ends
    and every other token stay the real ones."""
    s, j = span
    sub, acts = batch.tokens[rows], batch.actions[rows]
    if len(sub) == 0:
        return batch
    dreamed = imagine(model, SamplerConfig("mgm", steps=steps), sub[:, :s], acts[:, :s], acts[:, s:s + j], j,
                      generator).tokens                                                   # (r j h w)
    tokens = batch.tokens.clone()
    tokens[rows, s:s + j] = dreamed.to(tokens)
    return replace(batch, tokens=tokens)


def draw_return_span(longest: int, generator: torch.Generator) -> int:
    """j: how many frames before each return frame this step dreams, uniform in [1, ``longest``]."""
    return int(torch.randint(1, longest + 1, (), generator=generator))


def clean_returns(draws: StepDraws, rows: slice) -> StepDraws:
    """The step's draws with every frame but the last of the global ``rows`` (the return clips) at t = 1:
    clean context, the loss only on the return frame."""
    t = draws.t.clone()
    t[rows, :-1] = 1.0
    return replace(draws, t=t)


def dream_returns(model: torch.nn.Module, batch: ClipBatch, rows: slice, frames: int, steps: int,
                  generator: torch.Generator) -> ClipBatch:
    """``batch`` with the ``frames`` frames before the last (the return) of its local ``rows`` dreamed by
    ``model`` (:func:`dream_span`); everything else stays real."""
    return dream_span(model, batch, (batch.tokens.shape[1] - 1 - frames, frames), steps, generator, rows)
