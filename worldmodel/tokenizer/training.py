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
full state, see :mod:`worldmodel.tokenizer.state`), ``tokenizer/`` (the exported EMA model),
``summary.json``. The frames come from :mod:`worldmodel.tokenizer.data`, the adversarial part from
:mod:`worldmodel.tokenizer.discriminator`.

Axis letters: b batch, c channels, y x pixel rows/columns.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio

from envs.common.errors import ConfigError, MaskFlowError
from envs.common.files import write_json
from worldmodel.common import threads
from worldmodel.common.device import resolve_device
from worldmodel.common.ema import ema_update, warmup_decay
from worldmodel.common.runlog import write_csv
from worldmodel.common.seeding import seed_everything
from worldmodel.common.signals import StopSignals, resume_hint
from worldmodel.common.threads import governor
from worldmodel.tokenizer.config import TokenizerTrainConfig
from worldmodel.tokenizer.data import load_frames_for_training, sample_batch
from worldmodel.tokenizer.discriminator import PatchDiscriminator, adaptive_weight, discriminator_step
from worldmodel.tokenizer.evaluation import Episodes, evaluate_tokenizer, preview_frames, save_curves, save_recon_grid
from worldmodel.tokenizer.files import load_init, save_tokenizer
from worldmodel.tokenizer.model import (
    build_tokenizer,
)
from worldmodel.tokenizer.state import COUNTERS, load_train_state, save_train_state


def lr_at(cfg: TokenizerTrainConfig, step: int) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr · min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def recon_loss(cfg: TokenizerTrainConfig, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 + L2 reconstruction loss of (b, 3, y, x) frames in [-1, 1]."""
    return cfg.l1_weight * (recon - x).abs().mean() + cfg.l2_weight * (recon - x).pow(2).mean()


def stability_loss(bounded: torch.Tensor, x: torch.Tensor, tol: float) -> torch.Tensor:
    """Squared distance of the bounded latents (b, d, h, w) of frames i (first half of the batch) and i + 1
    (second half), per latent cell weighted by exp(-d / tol), d the mean absolute pixel change of the cell's
    patch in x (b, 3, y, x): where the picture barely moved the ids should not move either."""
    n = bounded.shape[0] // 2
    cell = x.shape[-1] // bounded.shape[-1]                     # pixels per latent cell along each side
    change = F.avg_pool2d((x[:n] - x[n:2 * n]).abs().mean(1, keepdim=True), cell).squeeze(1)    # n h w
    w = torch.exp(-change / tol).detach()
    dist = (bounded[:n] - bounded[n:2 * n]).pow(2).sum(1)      # n h w
    return (w * dist).sum() / w.sum().clamp_min(1e-6)


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

    def save(self, out: Path, rng: np.random.Generator, rows: list[dict[str, float]]) -> Path:
        """Write the resumable full state (with ``rng`` and the log ``rows``) under ``out/checkpoints``."""
        return save_train_state(out, self.modules(), self.optimizers(), {k: getattr(self, k) for k in COUNTERS},
                                dataclasses.asdict(self.cfg), rng, rows, self.cfg.keep_checkpoints)

    def resume(self, out: Path, rng: np.random.Generator) -> list[dict[str, float]]:
        """Continue from the newest readable state in ``out`` (none: stay fresh); return its log rows."""
        defaults = {f.name: f.default for f in dataclasses.fields(self.cfg)}
        found = load_train_state(out, self.modules(), self.optimizers(), rng, dataclasses.asdict(self.cfg),
                                 defaults, self.device)
        if found is None:
            return []
        counters, rows = found
        for k, v in counters.items():
            setattr(self, k, v)
        return rows

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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frames (b, 3, y, x) -> (reconstruction, ids (b, h, w), quantizer aux loss, latents (b, d, h, w)); a
        frozen encoder runs in eval mode without gradients."""
        if not self.cfg.freeze_encoder:
            z = self.model.encoder(x)
            q, ids, aux = self.model.quantizer(z)
            return self.model.decoder(q), ids, aux, z
        with torch.no_grad():
            z = self.model.encoder.eval()(x)
            q, ids, aux = self.model.quantizer.eval()(z)
        return self.model.decoder(q), ids, aux, z

    def train_step(self, x: torch.Tensor) -> tuple[str | None, dict[str, float]]:
        """One generator (+ discriminator) update on a batch (b, 3, y, x). Returns (problem or None, logs)."""
        cfg, step = self.cfg, self.step
        lr = lr_at(cfg, step) * self.lr_scale
        for g in self.opt_g.param_groups:
            g["lr"] = lr
        disc_on = 0 <= cfg.disc_start <= step
        recon, ids, aux, z = self.forward(x)
        rec = recon_loss(cfg, recon, x)
        loss = rec + cfg.quant_weight * aux
        logs = {"tokenizer/train/recon": rec.item(), "tokenizer/train/quant": aux.item(), "tokenizer/train/lr": lr,
                "tokenizer/train/psnr": float(peak_signal_noise_ratio(recon.detach().clamp(-1, 1), x, data_range=2.0))}
        if cfg.stability_weight > 0:                # the batch is pairs of consecutive frames (sample_batch)
            stab = stability_loss(self.model.quantizer.bounded(z), x, cfg.stability_tol)
            loss = loss + cfg.stability_weight * stab
            n = ids.shape[0] // 2
            logs.update({"tokenizer/train/stab": stab.item(),
                         "tokenizer/train/same_ids": float((ids[:n] == ids[n:2 * n]).float().mean())})
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
                ema_update(self.ema, self.model, warmup_decay(step, cfg.ema_decay))
                logs["tokenizer/train/grad_norm"] = gn.item()
        if problem is None and disc_on:
            logs["tokenizer/train/disc"] = discriminator_step(self.disc, self.opt_d, x, recon.detach(), cfg.grad_clip)
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
    rows = tr.resume(out, rng)
    tr.take_snapshot()
    t_start, window = time.perf_counter(), []
    with StopSignals() as stop, tqdm(total=cfg.steps, initial=tr.step, desc="tokenizer", dynamic_ncols=True) as bar:
        while tr.step < cfg.steps and not stop.requested:
            threads.tick()
            if cfg.max_minutes and time.perf_counter() - t_start > 60 * cfg.max_minutes:
                bar.write(f"max_minutes={cfg.max_minutes} reached at step {tr.step}; stopping (resumable)")
                break
            t0 = time.perf_counter()
            problem, logs = tr.train_step(sample_batch(train_source, cfg.batch_size, rng, cfg.flip, device,
                                                       pairs=cfg.stability_weight > 0))
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
                _write_log(rows, out, plot=tr.step % cfg.eval_every == 0)
            if tr.step % cfg.ckpt_every == 0:
                tr.save(out, rng, rows)
    tr.save(out, rng, rows)
    _write_log(rows, out)
    if stop.requested:
        # stopped between two steps, so the saved state resumes exactly where this run left off
        raise KeyboardInterrupt(resume_hint("tokenizer training", stop.signum, tr.step, out))
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


def _write_log(rows: list[dict[str, float]], out: Path, plot: bool = True) -> None:
    """``train_log.csv``, the whole file each time (it is small), and with ``plot`` ``curves.png``."""
    write_csv(out / "train_log.csv", rows)
    if rows and plot:
        save_curves(rows, out / "curves.png")


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
