"""Frames to token ids and back, a batch of frames at a time: the one encode / decode loop of the project.

    tokens = encode_frames(tokenizer, frames)       # (f y x c) uint8 -> (f h w) long, on the tokenizer's device
    frames = decode_tokens(tokenizer, tokens)       # (f h w) ids -> (f y x c) uint8 numpy

Axis letters: f frames, h w token grid, y x pixels, c colour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from worldmodel.tokenizer.model import FrameTokenizer


@torch.no_grad()
def encode_frames(tokenizer: FrameTokenizer, frames: np.ndarray, batch: int = 64) -> torch.Tensor:
    """(f y x c) uint8 -> (f h w) long token ids on the tokenizer's device, ``batch`` frames per pass."""
    parts = [tokenizer.encode(frames[i:i + batch]) for i in range(0, len(frames), batch)]
    if not parts:                   # an empty episode: no pass, an empty grid stack
        return torch.zeros((0, *tokenizer.token_grid), dtype=torch.long, device=tokenizer.device)
    return torch.cat(parts)


@torch.no_grad()
def decode_tokens(tokenizer: FrameTokenizer, tokens: np.ndarray | torch.Tensor, batch: int = 64) -> np.ndarray:
    """(f h w) token ids (any integer dtype) -> (f y x c) uint8 frames on the host, ``batch`` grids per pass."""
    return np.concatenate([tokenizer.decode(tokens[i:i + batch]).cpu().numpy() for i in range(0, len(tokens), batch)])
