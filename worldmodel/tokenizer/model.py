"""The frame tokenizer: a convolutional autoencoder with a discrete bottleneck.

A 64×64 RGB frame becomes an ``h × w`` grid of token ids (16×16 at downsampling 4, 8×8 at 8) and
back. Everything downstream (token datasets, the MaskFlow model, the dream env) talks to it only
through :meth:`FrameTokenizer.encode` / :meth:`FrameTokenizer.decode` and the files that
:mod:`worldmodel.tokenizer.files` writes and reads (``tokenizer.safetensors`` + ``tokenizer.json``).

Axis letters used in this file: b batch, c channels, h w token grid, y x pixel rows/columns,
n positions (h·w), d latent width.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from envs.common.errors import ConfigError
from worldmodel.common.device import require_compiler


@dataclasses.dataclass
class TokenizerConfig:
    """Architecture of the frame tokenizer (everything needed to rebuild it from its JSON).

    Attributes:
        resolution: frame side in pixels (frames are square RGB).
        downsample: pixels per token side: 4 → 16×16 tokens, 8 → 8×8 tokens.
        widths: channel width at each resolution level, full resolution first; its length must be
            log2(downsample) + 1.
        res_blocks: residual blocks per level (encoder, and decoder unless ``decoder_res_blocks`` is set).
        norm: "pixel" normalises channels at each position (tokens then depend only on local content,
            not on statistics of the whole frame); "group" is GroupNorm over space (VQGAN-style).
        quantizer: "fsq" (finite scalar quantisation: fixed implicit codebook, no dead codes) or "vq"
            (learned codebook updated by EMA, dead codes re-seeded from the batch).
        fsq_levels: FSQ levels per latent channel; vocabulary = their product.
        vq_codebook_size, vq_dim: VQ vocabulary and code width.
        vq_decay: EMA decay of the VQ codebook.
        vq_dead_code_threshold: a VQ code whose EMA usage count falls below this is re-seeded.
        decoder_widths, decoder_res_blocks: the decoder's own widths (full resolution first, as many
            levels as ``widths``) and residual blocks; None = the encoder's. A bigger decoder trained on
            a frozen encoder sharpens frames without changing a token id (see tokenizer_identity).
    """

    resolution: int = 64
    downsample: int = 4
    widths: tuple[int, ...] = (32, 64, 128)
    res_blocks: int = 1
    norm: Literal["pixel", "group"] = "pixel"
    quantizer: Literal["fsq", "vq"] = "fsq"
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)
    vq_codebook_size: int = 1024
    vq_dim: int = 16
    vq_decay: float = 0.99
    vq_dead_code_threshold: float = 2.0
    decoder_widths: tuple[int, ...] | None = None
    decoder_res_blocks: int | None = None

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if self.decoder_widths is not None:
            self.decoder_widths = tuple(int(w) for w in self.decoder_widths)
        self.fsq_levels = tuple(int(v) for v in self.fsq_levels)
        if self.downsample not in (2, 4, 8, 16) or self.resolution % self.downsample:
            raise ConfigError(f"tokenizer downsample={self.downsample} must be 2, 4, 8 or 16 and divide "
                              f"resolution={self.resolution}; use downsample=4 (16×16 tokens) or 8 (8×8)")
        levels = int(math.log2(self.downsample)) + 1
        if len(self.widths) != levels:
            raise ConfigError(f"tokenizer widths {self.widths} must have log2(downsample)+1 = {levels} entries")
        if self.decoder_widths is not None and len(self.decoder_widths) != levels:
            raise ConfigError(f"tokenizer decoder_widths {self.decoder_widths} must have log2(downsample)+1 = "
                              f"{levels} entries")
        if self.decoder_res_blocks is not None and self.decoder_res_blocks < 0:
            raise ConfigError(f"tokenizer decoder_res_blocks={self.decoder_res_blocks} must be >= 0")
        if self.quantizer not in ("fsq", "vq"):
            raise ConfigError(f"tokenizer quantizer={self.quantizer!r}; use 'fsq' or 'vq'")
        if self.norm not in ("pixel", "group"):
            raise ConfigError(f"tokenizer norm={self.norm!r}; use 'pixel' or 'group'")
        if self.vocab_size > 65536:
            raise ConfigError(f"vocabulary {self.vocab_size} does not fit the uint16 token files; use ≤ 65536 codes")

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids."""
        return int(np.prod(self.fsq_levels)) if self.quantizer == "fsq" else int(self.vq_codebook_size)

    @property
    def token_grid(self) -> tuple[int, int]:
        """(h, w) of the token grid of one frame."""
        side = self.resolution // self.downsample
        return (side, side)

    @property
    def dec_widths(self) -> tuple[int, ...]:
        """The decoder's widths, full resolution first."""
        return self.widths if self.decoder_widths is None else self.decoder_widths

    @property
    def dec_res_blocks(self) -> int:
        """The decoder's residual blocks per level."""
        return self.res_blocks if self.decoder_res_blocks is None else self.decoder_res_blocks

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (tuples become lists). Unset decoder keys are left out, so a tokenizer whose
        decoder mirrors its encoder has the JSON and config digest it had before those keys existed."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        return {k: v for k, v in d.items() if not (k.startswith("decoder_") and v is None)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TokenizerConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown tokenizer config keys {unknown}; valid keys: {sorted(names)}")
        return cls(**dict(d))


# size name -> width of the full-resolution level, the most it may be multiplied by at deeper
# (cheaper) levels, and residual blocks per level (see tokenizer_config)
TOKENIZER_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(base_width=16, max_mult=2, res_blocks=1),
    "small": dict(base_width=32, max_mult=4, res_blocks=1),
    "base": dict(base_width=64, max_mult=4, res_blocks=2),
}


# FSQ levels recommended by the FSQ paper for ~1k and ~4k codes: an 8×8 token covers 4× the pixels
DEFAULT_FSQ_LEVELS: dict[int, tuple[int, ...]] = {4: (8, 5, 5, 5), 8: (7, 5, 5, 5, 5)}


def preset_widths(size: str, downsample: int) -> tuple[tuple[int, ...], int]:
    """(widths, res_blocks) of size preset ``size`` (tiny|small|base) at downsampling ``downsample``."""
    if size not in TOKENIZER_PRESETS:
        raise ConfigError(f"unknown tokenizer size {size!r}; choose one of {sorted(TOKENIZER_PRESETS)}")
    preset = TOKENIZER_PRESETS[size]
    if downsample not in (2, 4, 8, 16):
        raise ConfigError(f"tokenizer downsample={downsample}; use 4 (16×16 tokens) or 8 (8×8 tokens)")
    n = int(math.log2(downsample)) + 1
    return tuple(preset["base_width"] * min(2**i, preset["max_mult"]) for i in range(n)), preset["res_blocks"]


def with_decoder(cfg: TokenizerConfig, decoder_size: str) -> TokenizerConfig:
    """``cfg`` with the decoder of size preset ``decoder_size`` (the encoder side unchanged)."""
    widths, blocks = preset_widths(decoder_size, cfg.downsample)
    return dataclasses.replace(cfg, decoder_widths=widths, decoder_res_blocks=blocks)


def tokenizer_config(size: str = "small", downsample: int = 4, decoder_size: str | None = None,
                     **overrides: Any) -> TokenizerConfig:
    """Build a :class:`TokenizerConfig` from a size preset (tiny|small|base) and downsampling 4|8.

    FSQ levels default to 1000 codes at downsampling 4 and 4375 at 8; ``None`` overrides are ignored.
    ``decoder_size`` gives the decoder a preset of its own (default: the encoder's)."""
    widths, blocks = preset_widths(size, downsample)
    kwargs: dict[str, Any] = dict(downsample=downsample, widths=widths, res_blocks=blocks,
                                  fsq_levels=DEFAULT_FSQ_LEVELS.get(downsample, (8, 5, 5, 5)))
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TokenizerConfig(**kwargs)
    return with_decoder(cfg, decoder_size) if decoder_size else cfg


class PixelNorm(nn.Module):
    """LayerNorm over channels at each pixel: (b, c, y, x) -> (b, c, y, x). Local, so a change in one
    corner of the frame cannot move the latents of another corner (token stability)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a channels-last tensor permuted to (b, y, x, c) is contiguous: one fused layer_norm kernel
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, 1e-6)
        return x.permute(0, 3, 1, 2)


def _norm(kind: str, channels: int) -> nn.Module:
    return PixelNorm(channels) if kind == "pixel" else nn.GroupNorm(min(8, channels // 4), channels, eps=1e-6)


class ResBlock(nn.Module):
    """Pre-norm residual block of two 3×3 convs: (b, c_in, y, x) -> (b, c_out, y, x)."""

    def __init__(self, c_in: int, c_out: int, norm: str):
        super().__init__()
        self.norm1, self.conv1 = _norm(norm, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(norm, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    """Frames (b, 3, y, x) in [-1, 1] -> continuous latents (b, d, h, w)."""

    def __init__(self, cfg: TokenizerConfig, latent_dim: int):
        super().__init__()
        w = cfg.widths
        self.conv_in = nn.Conv2d(3, w[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i in range(len(w) - 1):
            layers += [ResBlock(w[i], w[i], cfg.norm) for _ in range(cfg.res_blocks)]
            layers.append(nn.Conv2d(w[i], w[i + 1], 4, stride=2, padding=1))  # 4×4 stride 2: no checkerboard
        layers += [ResBlock(w[-1], w[-1], cfg.norm) for _ in range(cfg.res_blocks)]
        self.body = nn.Sequential(*layers)
        self.norm_out = _norm(cfg.norm, w[-1])
        self.conv_out = nn.Conv2d(w[-1], latent_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.body(self.conv_in(x)))))


class Decoder(nn.Module):
    """Quantised latents (b, d, h, w) -> frames (b, 3, y, x), roughly in [-1, 1]."""

    def __init__(self, cfg: TokenizerConfig, latent_dim: int):
        super().__init__()
        w, blocks = cfg.dec_widths[::-1], cfg.dec_res_blocks
        self.conv_in = nn.Conv2d(latent_dim, w[0], 3, padding=1)
        layers: list[nn.Module] = [ResBlock(w[0], w[0], cfg.norm) for _ in range(blocks)]
        for i in range(len(w) - 1):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w[i], w[i + 1], 3, padding=1)]
            layers += [ResBlock(w[i + 1], w[i + 1], cfg.norm) for _ in range(blocks)]
        self.body = nn.Sequential(*layers)
        self.norm_out = _norm(cfg.norm, w[-1])
        self.conv_out = nn.Conv2d(w[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.body(self.conv_in(z)))))


class Quantizer(nn.Module):
    """Wraps ``vector_quantize_pytorch`` FSQ / VectorQuantize behind one interface.

    forward: latents (b, d, h, w) -> (quantised (b, d, h, w), ids (b, h, w) int64, aux loss scalar).
    The aux loss is unweighted: VQ's commitment loss, or for FSQ the squared distance of each
    bounded latent to its rounding centre (pushing latents away from bin edges makes ids stable).
    """

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        from vector_quantize_pytorch import FSQ, VectorQuantize

        self.kind = cfg.quantizer
        if self.kind == "fsq":
            self.dim = len(cfg.fsq_levels)
            self.fsq = FSQ(levels=list(cfg.fsq_levels))
            levels = torch.tensor(cfg.fsq_levels, dtype=torch.float32)
            self.register_buffer("levels", levels, persistent=False)
        else:
            self.dim = cfg.vq_dim
            # kmeans init + dead-code expiry keep the learned codebook fully used
            self.vq = VectorQuantize(dim=cfg.vq_dim, codebook_size=cfg.vq_codebook_size, decay=cfg.vq_decay,
                                     kmeans_init=True, threshold_ema_dead_code=cfg.vq_dead_code_threshold,
                                     commitment_weight=1.0)

    def _fsq_bound(self, z: torch.Tensor) -> torch.Tensor:
        # same bounding as FSQ.bound (eps=1e-3), in units of one quantisation step; z (..., d)
        half_l = (self.levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        return torch.tanh(z + torch.atanh(offset / half_l)) * half_l - offset

    def _fsq_centre_loss(self, z: torch.Tensor) -> torch.Tensor:
        bounded = self._fsq_bound(z)
        return (bounded - bounded.detach().round()).pow(2).mean()

    def bounded(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (b, d, h, w) as the quantizer rounds them: FSQ-bounded, in quantisation steps (VQ: as they are)."""
        if self.kind != "fsq":
            return z
        return rearrange(self._fsq_bound(rearrange(z.float(), "b d h w -> b h w d")), "b h w d -> b d h w")

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, _, h, w = z.shape
        zn = rearrange(z, "b d h w -> b (h w) d")
        if self.kind == "fsq":
            q, ids = self.fsq(zn.float())
            aux = self._fsq_centre_loss(zn.float())
        elif not self.training and bool(self.vq._codebook.initted):
            # inference: plain nearest code (the library's path builds an n × vocab one-hot, ~10× slower)
            embed = self.vq.codebook
            dist = zn.pow(2).sum(-1, keepdim=True) - 2 * zn @ embed.t() + embed.pow(2).sum(-1)
            ids = dist.argmin(-1)
            q, aux = embed[ids], zn.new_zeros(())
        else:
            q, ids, aux = self.vq(zn)
        q = rearrange(q, "b (h w) d -> b d h w", h=h, w=w)
        return q, rearrange(ids.long(), "b (h w) -> b h w", h=h, w=w), aux.reshape(())

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (b, h, w) -> quantised latents (b, d, h, w)."""
        h, w = ids.shape[-2:]
        flat = rearrange(ids, "b h w -> b (h w)")
        q = self.fsq.indices_to_codes(flat) if self.kind == "fsq" else self.vq.get_output_from_indices(flat)
        return rearrange(q, "b (h w) d -> b d h w", h=h, w=w)


class FrameTokenizer(nn.Module):
    """Encoder → quantizer → decoder. Public API: :meth:`encode`, :meth:`decode`, ``vocab_size``, ``token_grid``."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.quantizer = Quantizer(cfg)
        self.encoder = Encoder(cfg, self.quantizer.dim)
        self.decoder = Decoder(cfg, self.quantizer.dim)
        self.provenance: dict[str, Any] = {}  # what it was trained on; saved into tokenizer.json
        self.to(memory_format=torch.channels_last)  # oneDNN convs are ~2× faster channels-last on CPU

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids (ids are in [0, vocab_size))."""
        return self.cfg.vocab_size

    @property
    def token_grid(self) -> tuple[int, int]:
        """(h, w) of one frame's token grid."""
        return self.cfg.token_grid

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.parameters()).device

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frames (b, 3, y, x) float in [-1, 1] -> (reconstruction (b, 3, y, x), ids (b, h, w), aux loss)."""
        q, ids, aux = self.quantizer(self.encoder(x))
        return self.decoder(q), ids, aux

    def frames_to_input(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 frames (b, y, x, 3) -> float (b, 3, y, x) in [-1, 1] on this model's device."""
        t = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
        r = self.cfg.resolution
        if t.dtype != torch.uint8 or t.ndim != 4 or tuple(t.shape[1:]) != (r, r, 3):
            raise ConfigError(f"tokenizer expects uint8 frames of shape (b, {r}, {r}, 3); "
                              f"got {t.dtype} {tuple(t.shape)}")
        return rearrange(t.to(self.device), "b y x c -> b c y x").float().div(127.5).sub(1.0)

    @staticmethod
    def output_to_frames(x: torch.Tensor) -> torch.Tensor:
        """float (b, 3, y, x) in [-1, 1] -> uint8 (b, y, x, 3)."""
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return rearrange(x, "b c y x -> b y x c")

    def compile_nets(self, encoder: bool = True, decoder: bool = True) -> FrameTokenizer:
        """``torch.compile`` the encoder and/or decoder in place, for inference; returns ``self``.

        Weights, ``state_dict`` and token ids are unchanged (compiled encoding gives the eager ids); the norms, SiLUs
        and adds between the convolutions fuse, 1.1–1.5× the frames/s on CPU (``benchmarks/tokenizer.py
        --compile``). Each new batch shape first compiles for ~10 s; on a CPU it needs a C++ compiler, checked here."""
        require_compiler(self.device, "compiling the tokenizer")
        for net, wanted in ((self.encoder, encoder), (self.decoder, decoder)):
            if wanted:
                net.compile()
        return self

    @torch.no_grad()
    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 frames (b, y, x, 3) (numpy or tensor) -> token ids LongTensor (b, h, w) on the model device."""
        _, ids, _ = self.quantizer(self.encoder(self.frames_to_input(frames)))
        return ids

    @torch.no_grad()
    def decode(self, tokens: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Token ids (b, h, w) (any integer dtype) -> uint8 frames (b, y, x, 3) on the model device.

        ``dtype=torch.bfloat16`` runs the decoder's convolutions under bf16 autocast: 1.6–2.2× the frames/s on a
        CPU with AVX512-BF16, within a quarter of a grey level of fp32 on average (the dream env decodes at its
        ``precision``; evaluations decode in fp32)."""
        if dtype not in (torch.float32, torch.bfloat16):
            raise ConfigError(f"decode dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64) if isinstance(tokens, np.ndarray) else tokens)
        ids = ids.to(self.device).long()
        if ids.ndim != 3 or tuple(ids.shape[1:]) != self.token_grid:
            raise ConfigError(f"decode expects token ids of shape (b, {self.token_grid[0]}, {self.token_grid[1]}); "
                              f"got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ConfigError(f"token ids must lie in [0, {self.vocab_size}); got range "
                              f"[{int(ids.min())}, {int(ids.max())}] — tokens from another tokenizer?")
        codes = self.quantizer.codes(ids)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            return self.output_to_frames(self.decoder(codes))


def build_tokenizer(cfg: TokenizerConfig) -> FrameTokenizer:
    """Construct an untrained tokenizer from its config."""
    return FrameTokenizer(cfg)
