"""Settings of a tokenizer training run: the keys of ``maskflow train-tokenizer``, typed, with their ranges."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from envs.common.config_check import (
    DEVICE,
    SEED,
    THREADS,
    Check,
    CliKey,
    above,
    at_least,
    check_config,
    each,
    one_of,
    within,
)
from envs.common.errors import ConfigError
from worldmodel.tokenizer.files import init_tokenizer_dir, read_tokenizer_meta
from worldmodel.tokenizer.model import TOKENIZER_PRESETS, TokenizerConfig, tokenizer_config, with_decoder


@dataclasses.dataclass
class TokenizerTrainConfig:
    """Settings of one tokenizer training run (model keys first, then optimisation, then bookkeeping).

    Attributes:
        size, downsample, quantizer, fsq_levels, vq_codebook_size, norm: the model (see TokenizerConfig;
            fsq_levels None = [8,5,5,5] at downsample 4, [7,5,5,5,5] at 8).
        steps, batch_size: optimisation steps and frames per step.
        lr, warmup, min_lr_ratio, weight_decay, grad_clip: AdamW with linear warmup then cosine decay.
        l1_weight, l2_weight: reconstruction terms; quant_weight: quantizer aux loss — FSQ: squared
            distance of latents to their bin centres (0.03 measured to keep ids stable at equal PSNR);
            VQ: commitment loss (use 0.25).
        disc_start: step at which the patch discriminator starts (-1: never); disc_weight, disc_ramp,
            disc_adaptive, disc_lr, disc_width: its weight, ramp-up length, gradient-ratio scaling,
            learning rate and width.
        ema_decay: decay of the exported EMA weights.
        flip: random horizontal flips (maze frames are mirror-symmetric).
        stability_weight, stability_tol: pull the (FSQ-bounded) latents of consecutive frames together where
            the picture barely moved, so that their ids stay put (half of each batch is pairs of consecutive
            frames; a latent cell's pull is exp(-d / stability_tol), d its patch's mean absolute pixel change).
        spike_factor, guard_patience, guard_every, max_restores, collapse_ratio: divergence guard.
        eval_every, eval_frames, final_eval_frames, log_every, ckpt_every, keep_checkpoints: bookkeeping.
        seed, device, max_minutes: randomness, "cpu" | "cuda" | "auto", optional wall-clock budget.
        init: "" (a fresh tokenizer), "default" (the shipped world model's tokenizer) or a tokenizer /
            train-tokenizer run / world-model checkpoint directory to start from; with it the encoder
            side is the init's (size, downsample, quantizer, fsq_levels, vq_codebook_size, norm unused).
        freeze_encoder: keep the init's encoder and quantizer fixed (the token ids stay the init's); only
            the decoder and the discriminator train.
        decoder_size: "" = the decoder of the init (its weights too) or mirroring the encoder; tiny | small
            | base = a fresh decoder of that preset.
    """

    size: str = "small"             # tiny | small | base
    downsample: int = 4             # 4 -> 16x16 tokens per 64x64 frame; 8 -> 8x8
    quantizer: str = "fsq"          # fsq (implicit codebook, no dead codes) | vq (EMA codebook + dead-code reset)
    fsq_levels: tuple[int, ...] | None = None  # FSQ levels per latent channel (vocabulary = product); null = [8,5,5,5]
                                               # (1000 codes) at downsample 4, [7,5,5,5,5] (4375 codes) at downsample 8
    vq_codebook_size: int = 1024    # VQ vocabulary
    norm: str = "pixel"             # pixel (per-position channel norm: local, stable tokens) | group (GroupNorm)
    steps: int = 20000
    batch_size: int = 32
    lr: float = 5e-4                # AdamW peak; linear warmup, then cosine to lr * min_lr_ratio
    warmup: int = 500
    min_lr_ratio: float = 0.05
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    quant_weight: float = 0.03      # FSQ: pull latents to bin centres (stabler ids at equal PSNR); VQ: commitment (use
                                    # 0.25)
    disc_start: int = 10000         # step at which the patch discriminator switches on (-1: never)
    disc_weight: float = 0.1        # adversarial weight (times the adaptive gradient ratio if disc_adaptive)
    disc_ramp: int = 1000           # steps to ramp the adversarial weight from 0 to disc_weight
    disc_adaptive: bool = True
    disc_lr: float = 2e-4
    disc_width: int = 32
    ema_decay: float = 0.999        # the exported tokenizer is the EMA of the weights
    flip: bool = True               # random horizontal flips
    stability_weight: float = 0.0   # pull latents of consecutive frames together where the picture barely moved
                                    # (stabler token ids for the world model); 0 = off
    stability_tol: float = 0.02     # pixel change (mean |diff| of a latent cell's patch, frames in [-1, 1]) at which
                                    # that pull falls to 1/e
    spike_factor: float = 5.0
    guard_patience: int = 3
    guard_every: int = 100
    max_restores: int = 8
    collapse_ratio: float = 0.2
    eval_every: int = 1000          # (>= 1) held-out eval (PSNR, SSIM, code usage, token stability) + samples.png +
                                    # curves.png
    eval_frames: int = 512          # held-out frames per eval, an equal share from the start of every test episode
    final_eval_frames: int = 8192
    log_every: int = 50
    ckpt_every: int = 1000          # resumable full-state checkpoint (also written at the end and on Ctrl-C)
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "cpu"             # cpu | cuda | auto
    max_minutes: float = 0.0        # > 0: stop (resumably) after this many minutes
    init: str = ""                  # "" = fresh; default = the shipped world model's tokenizer; or a tokenizer / run /
                                    # world-model dir to start from (its encoder side: size, downsample, quantizer
                                    # unused)
    freeze_encoder: bool = False    # with init: keep its encoder + quantizer fixed (same token ids); train only the
                                    # decoder
    decoder_size: str = ""          # "" = the init's decoder (or mirror the encoder); tiny | small | base = a new
                                    # decoder

    # keys `maskflow train-tokenizer` reads beside the fields (they do not change the trained model)
    CLI_KEYS: ClassVar[dict[str, CliKey]] = {
        "data": CliKey(str, "???", "frames dataset directory (from `maskflow collect`)"),
        "out": CliKey(str, "runs/tokenizer", "run directory: checkpoints/, tokenizer/, curves.png, samples.png"),
        "threads": CliKey(int, 0, "torch CPU threads (0 = adapt to the cores other processes leave free)"),
        "max_train_frames": CliKey(int, 0, "cap on training frames held in memory (0 = all)"),
    }
    # allowed ranges and choices (types come from the annotations above; see envs.common.config_check)
    CHECKS: ClassVar[dict[str, Check]] = {
        "size": one_of(*TOKENIZER_PRESETS), "downsample": one_of(2, 4, 8, 16), "quantizer": one_of("fsq", "vq"),
        "fsq_levels": each(at_least(2), non_empty=True), "vq_codebook_size": at_least(2),
        "norm": one_of("pixel", "group"), "steps": at_least(1), "batch_size": at_least(1), "lr": above(0),
        "warmup": at_least(0), "min_lr_ratio": within(0, 1), "weight_decay": at_least(0), "grad_clip": above(0),
        "l1_weight": at_least(0), "l2_weight": at_least(0), "quant_weight": at_least(0),
        "stability_weight": at_least(0, "0 = off"), "stability_tol": above(0),
        "disc_start": at_least(-1, "-1 = never"), "disc_weight": at_least(0), "disc_ramp": at_least(0),
        "disc_lr": above(0), "disc_width": at_least(1), "ema_decay": within(0, 1, hi_open=True),
        "spike_factor": above(1), "guard_patience": at_least(1), "guard_every": at_least(1),
        "max_restores": at_least(0), "collapse_ratio": within(0, 1), "eval_every": at_least(1),
        "eval_frames": at_least(1), "final_eval_frames": at_least(1), "log_every": at_least(1),
        "ckpt_every": at_least(1), "keep_checkpoints": at_least(1), "seed": SEED, "device": DEVICE,
        "max_minutes": at_least(0, "0 = no limit"), "threads": THREADS,
        "max_train_frames": at_least(0, "0 = all train frames"),
        "decoder_size": one_of("", *TOKENIZER_PRESETS, note="'' = the init's decoder, or the encoder's size"),
    }

    def __post_init__(self) -> None:
        if isinstance(self.fsq_levels, list):       # YAML gives a list; the model config keeps a tuple
            self.fsq_levels = tuple(self.fsq_levels)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first key of a wrong type or out of its range."""
        check_config(self)
        if self.freeze_encoder and not self.init:
            raise ConfigError("freeze_encoder=true needs init=default|DIR: the tokenizer whose encoder to keep")
        if self.freeze_encoder and self.stability_weight > 0:
            raise ConfigError("stability_weight > 0 trains the encoder; freeze_encoder=true keeps it fixed: set one "
                              "off")
        if self.stability_weight > 0 and self.batch_size % 2:
            raise ConfigError(f"stability_weight > 0 trains on pairs of consecutive frames: batch_size="
                              f"{self.batch_size} must be even")

    def model_config(self) -> TokenizerConfig:
        """The architecture this run trains (with ``init``: the init's encoder side)."""
        if self.init:
            cfg = TokenizerConfig.from_dict(read_tokenizer_meta(init_tokenizer_dir(self.init))["config"])
            return with_decoder(cfg, self.decoder_size) if self.decoder_size else cfg
        return tokenizer_config(self.size, self.downsample, quantizer=self.quantizer, fsq_levels=self.fsq_levels,
                                vq_codebook_size=self.vq_codebook_size, norm=self.norm,
                                decoder_size=self.decoder_size or None)

    @classmethod
    def from_mapping(cls, d: Any) -> TokenizerTrainConfig:
        """Build from a mapping (e.g. a resolved Hydra config), ignoring keys that are not fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(d).items() if k in names})
