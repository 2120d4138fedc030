"""Training the frame tokenizer: one explicit loop — build, loop, guard, log, checkpoint, export.

Reconstruction is L1 + L2 on pixels in [-1, 1]; after ``disc_start`` steps a patch discriminator
trained from scratch (hinge loss) adds an adversarial term whose weight ramps up over
``disc_ramp`` steps (adaptive: scaled by the ratio of gradient norms at the decoder's last layer,
as in VQGAN). A guard skips NaN / spiking / code-collapsing steps and, if they persist, restores
the last good in-memory snapshot with half the learning rate. The exported tokenizer is the EMA.

``init=default|DIR`` starts from a trained tokenizer; with ``freeze_encoder=true`` its encoder and
quantizer are loaded and frozen (no gradients, eval mode, not in the optimizer) and only the decoder
(of its own size with ``decoder_size=``) and the discriminator train, so the exported tokenizer gives
exactly the init's token ids and its decoder can replace the old one under a trained world model.

Output directory: ``train_log.csv``, ``curves.png``, ``samples.png``, ``checkpoints/`` (resumable
full state), ``tokenizer/`` (the exported EMA model), ``summary.json``.

Axis letters: b batch, c channels, y x pixel rows/columns.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from envs.common.config_check import (
    DEVICE,
    SEED,
    THREADS,
    Check,
    above,
    at_least,
    check_config,
    each,
    one_of,
    within,
)
from envs.common.errors import ConfigError, MaskFlowError
from envs.common.files import write_json
from worldmodel.common import threads
from worldmodel.common.seeding import seed_everything
from worldmodel.common.threads import governor
from worldmodel.tokenizer.evaluation import Episodes, evaluate_tokenizer, preview_frames, save_recon_grid
from worldmodel.tokenizer.model import (
    TOKENIZER_PRESETS,
    TokenizerConfig,
    build_tokenizer,
    read_tokenizer_meta,
    resolve_device,
    save_tokenizer,
    tokenizer_config,
    with_decoder,
)
from worldmodel.tokenizer.state import (
    catch_stop_signals,
    init_tokenizer_dir,
    load_frames_for_training,
    load_init,
    load_train_state,
    restore_signals,
    save_train_state,
    write_log,
)


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

    size: str = "small"
    downsample: int = 4
    quantizer: str = "fsq"
    fsq_levels: tuple[int, ...] | None = None
    vq_codebook_size: int = 1024
    norm: str = "pixel"
    steps: int = 20000
    batch_size: int = 32
    lr: float = 5e-4
    warmup: int = 500
    min_lr_ratio: float = 0.05
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    quant_weight: float = 0.03
    disc_start: int = 10000
    disc_weight: float = 0.1
    disc_ramp: int = 1000
    disc_adaptive: bool = True
    disc_lr: float = 2e-4
    disc_width: int = 32
    ema_decay: float = 0.999
    flip: bool = True
    spike_factor: float = 5.0
    guard_patience: int = 3
    guard_every: int = 100
    max_restores: int = 8
    collapse_ratio: float = 0.2
    eval_every: int = 1000
    eval_frames: int = 512
    final_eval_frames: int = 8192
    log_every: int = 50
    ckpt_every: int = 1000
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "cpu"
    max_minutes: float = 0.0
    init: str = ""
    freeze_encoder: bool = False
    decoder_size: str = ""

    # keys `maskflow train-tokenizer` reads beside the fields (they do not change the trained model)
    CLI_KEYS: ClassVar[dict[str, Any]] = {"data": str, "out": str, "threads": int, "max_train_frames": int}
    # allowed ranges and choices (types come from the annotations above; see envs.common.config_check)
    CHECKS: ClassVar[dict[str, Check]] = {
        "size": one_of(*TOKENIZER_PRESETS), "downsample": one_of(2, 4, 8, 16), "quantizer": one_of("fsq", "vq"),
        "fsq_levels": each(at_least(2), non_empty=True), "vq_codebook_size": at_least(2),
        "norm": one_of("pixel", "group"), "steps": at_least(1), "batch_size": at_least(1), "lr": above(0),
        "warmup": at_least(0), "min_lr_ratio": within(0, 1), "weight_decay": at_least(0), "grad_clip": above(0),
        "l1_weight": at_least(0), "l2_weight": at_least(0), "quant_weight": at_least(0),
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


class PatchDiscriminator(nn.Module):
    """PatchGAN from scratch: frames (b, 3, y, x) in [-1, 1] -> real/fake logits (b, 1, y/8, x/8)."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.GroupNorm(8, 2 * w), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.GroupNorm(8, 4 * w), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * w, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def lr_at(cfg: TokenizerTrainConfig, step: int) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr · min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def recon_loss(cfg: TokenizerTrainConfig, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 + L2 reconstruction loss of (b, 3, y, x) frames in [-1, 1]."""
    return cfg.l1_weight * (recon - x).abs().mean() + cfg.l2_weight * (recon - x).pow(2).mean()


def adaptive_weight(rec: torch.Tensor, gen: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """VQGAN's balance: ||∇_last rec|| / ||∇_last gen||, so the adversarial term never dominates."""
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    g_gen = torch.autograd.grad(gen, last, retain_graph=True)[0]
    return (g_rec.norm() / (g_gen.norm() + 1e-4)).clamp(0.0, 1e3).detach()


def sample_batch(frames: np.ndarray, batch: int, rng: np.random.Generator, flip: bool,
                 device: torch.device) -> torch.Tensor:
    """Random uint8 frames (n, y, x, 3) -> float batch (b, 3, y, x) in [-1, 1], channels-last."""
    idx = np.sort(rng.integers(0, len(frames), size=batch))
    x = np.ascontiguousarray(frames[idx])
    if flip:
        m = rng.random(batch) < 0.5
        x[m] = x[m, :, ::-1]
    t = rearrange(torch.from_numpy(x).to(device), "b y x c -> b c y x")
    return t.float().div(127.5).sub(1.0)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """EMA of the trained parameters (frozen ones stay bit-identical); buffers (e.g. a VQ codebook,
    itself an EMA) are copied."""
    pairs = [(e, m) for e, m in zip(ema.parameters(), model.parameters()) if m.requires_grad]
    torch._foreach_lerp_([e for e, _ in pairs], [m for _, m in pairs], 1.0 - decay)
    for eb, mb in zip(ema.buffers(), model.buffers()):
        eb.copy_(mb)


class Trainer:
    """Holds the training state (model, EMA, discriminator, optimizers, counters) of one run."""

    def __init__(self, cfg: TokenizerTrainConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.model = build_tokenizer(cfg.model_config()).train()
        self.init = load_init(self.model, cfg.init) if cfg.init else None
        if cfg.freeze_encoder:                         # the token ids must stay exactly the init's
            self.model.encoder.requires_grad_(False)
            self.model.quantizer.requires_grad_(False)
        self.model.to(device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.disc = PatchDiscriminator(cfg.disc_width).to(device).to(memory_format=torch.channels_last)
        self.opt_g = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=cfg.lr,
                                       betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
        self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.9),
                                       weight_decay=cfg.weight_decay)
        self.step, self.lr_scale, self.restores, self.train_seconds, self.consecutive_bad = 0, 1.0, 0, 0.0, 0
        self.loss_ema: float | None = None
        self.unique_ema: float | None = None
        self.snapshot: dict[str, Any] | None = None

    def modules(self) -> dict[str, nn.Module]:
        """Named modules whose weights make up the state."""
        return {"model": self.model, "ema": self.ema, "disc": self.disc}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Named optimizers."""
        return {"opt_g": self.opt_g, "opt_d": self.opt_d}

    def take_snapshot(self) -> None:
        """Remember the current state in memory as the last good one."""
        self.snapshot = {k: copy.deepcopy(m.state_dict()) for k, m in self.modules().items()}
        self.snapshot.update({k: copy.deepcopy(o.state_dict()) for k, o in self.optimizers().items()})
        self.snapshot["counters"] = (self.step, self.loss_ema, self.unique_ema)

    def restore_snapshot(self, reason: str) -> str:
        """Go back to the last good state with half the learning rate; fail after too many restores."""
        self.restores += 1
        if self.snapshot is None or self.restores > self.cfg.max_restores:
            raise MaskFlowError(f"tokenizer training diverged ({reason}) {self.restores} times; lower lr "
                                f"(now {self.cfg.lr}) or grad_clip, or check the data for corrupt frames")
        for k, m in self.modules().items():
            m.load_state_dict(self.snapshot[k])
        for k, o in self.optimizers().items():
            o.load_state_dict(self.snapshot[k])
        self.step, self.loss_ema, self.unique_ema = self.snapshot["counters"]
        self.lr_scale *= 0.5
        return f"step {self.step}: {reason}; restored last good state, lr scale now {self.lr_scale:g}"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frames (b, 3, y, x) -> (reconstruction, ids (b, h, w), quantizer aux loss); a frozen encoder
        runs in eval mode without gradients."""
        if not self.cfg.freeze_encoder:
            return self.model(x)
        with torch.no_grad():
            q, ids, aux = self.model.quantizer.eval()(self.model.encoder.eval()(x))
        return self.model.decoder(q), ids, aux

    def train_step(self, x: torch.Tensor) -> tuple[str | None, dict[str, float]]:
        """One generator (+ discriminator) update on a batch (b, 3, y, x). Returns (problem or None, logs)."""
        cfg, step = self.cfg, self.step
        lr = lr_at(cfg, step) * self.lr_scale
        for g in self.opt_g.param_groups:
            g["lr"] = lr
        disc_on = 0 <= cfg.disc_start <= step
        recon, ids, aux = self.forward(x)
        rec = recon_loss(cfg, recon, x)
        loss = rec + cfg.quant_weight * aux
        logs = {"tokenizer/train/recon": rec.item(), "tokenizer/train/quant": aux.item(), "tokenizer/train/lr": lr,
                "tokenizer/train/psnr": _psnr(recon.detach(), x)}
        if disc_on:
            self.disc.requires_grad_(False)
            gen = -self.disc(recon).mean()
            ramp = min(1.0, (step - cfg.disc_start + 1) / max(1, cfg.disc_ramp))
            w = adaptive_weight(rec, gen, self.model.decoder.conv_out.weight) if cfg.disc_adaptive else 1.0
            loss = loss + cfg.disc_weight * ramp * w * gen
            logs.update({"tokenizer/train/gen": gen.item(), "tokenizer/train/disc_w": float(ramp * w)})
        unique = float(torch.unique(ids).numel())
        logs["tokenizer/train/unique"] = unique
        problem = self._check(loss.item(), rec.item(), unique)
        if problem is None:
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            if not torch.isfinite(gn):
                problem = "non-finite gradient"
            else:
                self.opt_g.step()
                ema_update(self.ema, self.model, min(cfg.ema_decay, (1 + step) / (10 + step)))
                logs["tokenizer/train/grad_norm"] = gn.item()
        if problem is None and disc_on:
            self.disc.requires_grad_(True)
            d_loss = F.relu(1 - self.disc(x)).mean() + F.relu(1 + self.disc(recon.detach())).mean()
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(self.disc.parameters(), cfg.grad_clip)
            self.opt_d.step()
            logs["tokenizer/train/disc"] = d_loss.item()
        if problem is None:
            self.loss_ema = rec.item() if self.loss_ema is None else 0.98 * self.loss_ema + 0.02 * rec.item()
            self.unique_ema = unique if self.unique_ema is None else 0.98 * self.unique_ema + 0.02 * unique
            self.step += 1
        return problem, logs

    def _check(self, loss: float, rec: float, unique: float) -> str | None:
        cfg = self.cfg
        if not math.isfinite(loss):
            return "non-finite loss"
        if self.step >= cfg.warmup and self.loss_ema is not None and rec > cfg.spike_factor * self.loss_ema:
            return f"loss spike ({rec:.4g} vs running {self.loss_ema:.4g})"
        if self.step >= cfg.warmup and self.unique_ema is not None and (
                unique <= 1 or unique < cfg.collapse_ratio * self.unique_ema):
            return f"code collapse ({unique:.0f} codes in the batch vs running {self.unique_ema:.0f})"
        return None


def _psnr(recon: torch.Tensor, x: torch.Tensor) -> float:
    mse = ((recon.clamp(-1, 1) - x) / 2).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def train_tokenizer(cfg: TokenizerTrainConfig, train_source: np.ndarray, val_frames: np.ndarray | Episodes | None,
                    out_dir: str | Path, *, action_names: list[str] | None = None,
                    provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or resume) a tokenizer on uint8 frames (n, y, x, 3); evaluate on ``val_frames``.

    Resumes from ``out_dir/checkpoints`` when present. Returns the summary also written to
    ``out_dir/summary.json``: final eval metrics of the EMA model, steps, training seconds, paths.
    """
    from tqdm.auto import tqdm

    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    r = cfg.model_config().resolution
    if train_source.dtype != np.uint8 or train_source.ndim != 4 or train_source.shape[1:] != (r, r, 3):
        raise ConfigError(f"training frames must be uint8 (n, {r}, {r}, 3); got {train_source.dtype} "
                          f"{train_source.shape}")
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    tr = Trainer(cfg, device)
    rows = load_train_state(tr, out, rng)
    tr.take_snapshot()
    t_start, window = time.perf_counter(), []
    stop: dict[str, int | None] = {"signal": None}
    previous = catch_stop_signals(stop)
    bar = tqdm(total=cfg.steps, initial=tr.step, desc="tokenizer", dynamic_ncols=True)
    try:
        while tr.step < cfg.steps and stop["signal"] is None:
            threads.tick()
            if cfg.max_minutes and time.perf_counter() - t_start > 60 * cfg.max_minutes:
                bar.write(f"max_minutes={cfg.max_minutes} reached at step {tr.step}; stopping (resumable)")
                break
            t0 = time.perf_counter()
            problem, logs = tr.train_step(sample_batch(train_source, cfg.batch_size, rng, cfg.flip, device))
            tr.train_seconds += time.perf_counter() - t0
            if problem is not None:
                tr.consecutive_bad += 1
                if problem.startswith("non-finite") or tr.consecutive_bad >= cfg.guard_patience:
                    bar.write(tr.restore_snapshot(problem))
                    tr.consecutive_bad = 0
                    bar.n = tr.step
                continue
            tr.consecutive_bad = 0
            bar.update(1)
            window.append(logs)
            if tr.step % cfg.guard_every == 0:
                tr.take_snapshot()
            if tr.step % cfg.log_every == 0 or tr.step == cfg.steps:
                rows.append(_log_row(tr, window, rows))
                window = []
                last = rows[-1]
                bar.set_postfix(rec=f"{last['tokenizer/train/recon']:.4f}", psnr=f"{last['tokenizer/train/psnr']:.2f}",
                                codes=f"{last['tokenizer/train/unique']:.0f}")
            if val_frames is not None and tr.step % cfg.eval_every == 0:
                rows.append(_eval_row(tr, val_frames, cfg.eval_frames, out, action_names))
            if tr.step % cfg.log_every == 0 or tr.step % cfg.eval_every == 0:
                write_log(rows, out, plot=tr.step % cfg.eval_every == 0)
            if tr.step % cfg.ckpt_every == 0:
                save_train_state(tr, out, rng, rows)
    finally:
        bar.close()
        restore_signals(previous)
    if stop["signal"] is not None:
        # stopped between two steps, so the saved state resumes exactly where this run left off
        save_train_state(tr, out, rng, rows)
        write_log(rows, out)
        raise KeyboardInterrupt(f"tokenizer training stopped by signal {stop['signal']} at step {tr.step}; "
                                f"run again with out={out} to resume")
    save_train_state(tr, out, rng, rows)
    write_log(rows, out)
    final = None
    if val_frames is not None:
        final = evaluate_tokenizer(tr.ema, val_frames, max_frames=cfg.final_eval_frames, action_names=action_names)
        save_recon_grid(tr.ema, preview_frames(val_frames), out / "samples.png")
    tok_dir = out / "tokenizer"
    prov = dict(provenance or {}, steps=tr.step, train_seconds=round(tr.train_seconds, 1), restores=tr.restores,
                train_frames=int(len(train_source)), train_config=dataclasses.asdict(cfg), eval=final)
    if tr.init is not None:
        prov["init"] = dict(tr.init, frozen_encoder=cfg.freeze_encoder)
    save_tokenizer(tr.ema, tok_dir, provenance=prov)
    summary = {"steps": tr.step, "complete": tr.step >= cfg.steps, "train_seconds": tr.train_seconds,
               "restores": tr.restores, "params": sum(p.numel() for p in tr.model.parameters()),
               "trained_params": sum(p.numel() for p in tr.model.parameters() if p.requires_grad),
               "vocab_size": tr.model.vocab_size, "token_grid": list(tr.model.token_grid),
               "tokenizer_dir": str(tok_dir), "eval": final}
    write_json(out / "summary.json", summary)
    return summary


def _log_row(tr: Trainer, window: list[dict[str, float]], rows: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for w in window for k in w})
    row: dict[str, float] = {"step": tr.step, "time": round(tr.train_seconds, 2)}
    for k in keys:
        vals = [w[k] for w in window if k in w]
        row[k] = float(np.mean(vals))
    row["tokenizer/train/usage"] = row.get("tokenizer/train/unique", 0.0) / tr.model.vocab_size
    return row


def _eval_row(tr: Trainer, val: np.ndarray | Episodes, n: int, out: Path,
              action_names: list[str] | None) -> dict[str, float]:
    m = evaluate_tokenizer(tr.ema, val, max_frames=n, action_names=action_names)
    save_recon_grid(tr.ema, preview_frames(val), out / "samples.png")
    return {"step": tr.step, "time": round(tr.train_seconds, 2),
            **{f"tokenizer/val/{k}": v for k, v in m.items() if isinstance(v, float)}}


def run_train_tokenizer(cfg: Any) -> dict[str, Any]:
    """CLI entry (`maskflow train-tokenizer data=DIR out=DIR ...`): read the frames dataset, train, export."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True)
    tc = TokenizerTrainConfig.from_mapping(plain)
    governor(int(plain.get("threads") or 0))  # 0: adapt to the cores other processes leave free
    train, val, names, prov = load_frames_for_training(plain["data"], int(plain.get("max_train_frames") or 0))
    summary = train_tokenizer(tc, train, val, plain["out"], action_names=names, provenance=prov)
    ev = summary["eval"] or {}
    print(f"tokenizer written to {summary['tokenizer_dir']}: {summary['steps']} steps, "
          f"{summary['train_seconds'] / 60:.1f} min; PSNR {ev.get('psnr', float('nan')):.2f} dB, "
          f"SSIM {ev.get('ssim', float('nan')):.4f}, codes used {ev.get('code_usage', float('nan')):.1%}, "
          f"stability {ev.get('stability', float('nan')):.1%}")
    return summary
