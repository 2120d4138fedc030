"""`maskflow train`: train a MaskFlow world model on a token dataset. Build, loop, log, checkpoint.

    maskflow train data=runs/tokens out=runs/world size=small steps=20000
    torchrun --nproc_per_node=4 -m worldmodel.cli train data=... device=cuda size=base   # DDP

One explicit loop: AdamW with warmup, gradient clipping, an EMA of the weights (what gets
exported), bf16 autocast where the hardware has it, optional ``torch.compile``; DDP when launched
by torchrun (gloo on CPU, nccl on GPU). Every ``ckpt_every`` steps the full state goes to
``OUT/state/`` (resumable: rerun the same command) and the EMA model is exported as a
self-contained checkpoint directory in ``OUT`` (``model.safetensors`` + ``model.json`` +
``tokenizer/``), so ``checkpoint=OUT`` works for dream/eval even while training continues.

Fine-tuning: ``init=default`` (or ``init=DIR``) starts from a checkpoint's weights and architecture
instead of a fresh model, for tokens of the same tokenizer; resuming works as for any run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist

from envs.common.config_check import SEED, THREADS, Check, above, at_least, check_config, one_of, within
from envs.common.errors import ConfigError, DatasetError
from envs.common.files import write_json
from worldmodel.common import threads
from worldmodel.common.device import resolve_device
from worldmodel.common.ema import ema_update, warmup_decay
from worldmodel.common.runlog import RunLogger
from worldmodel.common.seeding import seed_everything
from worldmodel.common.signals import StopSignals, resume_hint
from worldmodel.common.threads import governor
from worldmodel.model.checkpoint import save_world_model
from worldmodel.model.latte import PRESETS, Latte, describe
from worldmodel.objective.loss import MaskFlowObjective, ObjectiveConfig, draw_step
from worldmodel.objective.masking import MaskingConfig
from worldmodel.objective.schedules import SCHEDULERS
from worldmodel.training.data import ClipSampler, TokenClips
from worldmodel.training.heldout import evaluate
from worldmodel.training.self_context import (
    clean_returns,
    clean_span,
    draw_return_span,
    draw_span,
    dream_returns,
    dream_span,
)
from worldmodel.training.setup import (
    autocast_dtype,
    changed_settings,
    check_same_data,
    data_roots,
    dist_env,
    init_record,
    model_from_init,
    new_model,
    tokenizer_dir,
)
from worldmodel.training.state import load_state, save_state


@dataclass
class TrainConfig:
    """Settings of one training run (the keys of ``configs/train.yaml``)."""

    data: str | list[str] = ""      # token dataset directory (from `maskflow tokenize`), or a list of them
                                    # trained on as one (same tokenizer and actions)
    out: str = "runs/world"         # run directory: model export, state/, logs, curves.png
    size: str = "small"             # tiny | small | base (see worldmodel.model.latte.PRESETS)
    dim: int = 0                    # > 0 overrides the preset's width / depth pairs / heads
    depth: int = 0                  # > 0 overrides the preset's number of (spatial, temporal) block pairs
    heads: int = 0                  # > 0 overrides the preset's attention heads
    patch: int = 0                  # > 0 overrides the 2x2 patchify (1 suits an 8x8 token grid: 64 positions)
    temporal: str = "causal"        # causal (KV-cache rollouts) | bidirectional (the paper)
    heading_pairs: int = 0          # > 0: rotary pairs per temporal head that turn with the camera's heading,
                                    # integrated from the actions (memory of views by angle; 0 = off, or with init=
                                    # the checkpoint's)
    clip_len: int = 16              # training window k (frames per clip)
    steps: int = 20000
    batch_size: int = 8             # global batch (split over DDP processes)
    lr: float = 1e-3                # 1e-3 learns ~2x faster than 3e-4 at CPU scale (see benchmarks/train.py notes)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    cooldown_steps: int = 0         # > 0: decay lr linearly to 0 over the last cooldown_steps of `steps`
    grad_clip: float = 2.0
    ema_decay: float = 0.999        # the exported model is the EMA of the weights
    masking: str = "frame"          # frame (independent t per frame) | constant (one t per clip)
    scheduler: str = "sigmoid"      # sigmoid | cosine | linear
    loss_weighting: str = "fused_snr"   # fused_snr | min_snr | none
    clean_context_prob: float = 0.0     # chance that a clip keeps a random number of leading frames clean
    token_noise: float = 0.0            # max fraction of visible tokens per frame replaced by random ids
    return_share: float = 0.0       # share of each batch from clips ending on a return frame: a view the clip
                                    # holds return_gap or more frames earlier (trains the far lookup loops need)
    return_gap: int = 16            # how far back such a view must lie (and no closer)
    goal_share: float = 0.0         # share of each batch from clips ending where the goal comes back into view
                                    # after the clip lost it (from the poses; the dream forgets the box it left)
    return_dream: int = 0           # > 0: on those clips the last 1..return_dream frames before the return frame
                                    # are dreamed by the EMA weights; clean context, loss on the return frame only
    self_context: float = 0.0       # share of steps whose clips carry a span the model dreamed itself (EMA weights)
                                    # from the real frames before it; the loss is on the real frames around it
    self_context_frames: int = 16   # longest such span
    self_context_steps: int = 4     # MGM steps per dreamed frame of such a span (and of return_dream's)
    action_dropout: float = 0.1     # fraction of frames trained without their action (action-free sampling)
    reward_weight: float = 0.1      # weight of the reward + termination heads' BCE (clean frames only)
    reward_pos_weight: float = 1.0  # weight of positive frames (goal reaches, ends) in that BCE; > 1 for rare ones
    reward_early: int = 0           # also label the n frames before each reward as rewarded (the goal close up)
    eval_every: int = 500           # held-out metrics on test mazes (0 = off)
    eval_clips: int = 32
    ckpt_every: int = 500           # resumable state + model export (also at the end, on Ctrl-C / SIGTERM)
    log_every: int = 25
    keep_states: int = 2
    max_minutes: float = 0.0        # > 0: stop (resumably) after this many minutes
    resume: bool = True
    seed: int = 0
    device: str = "auto"            # auto | cpu | cuda
    precision: str = "auto"         # auto (bf16 where supported) | bf16 | fp32
    compile: bool = False           # torch.compile the backbone (slow start, ~10-15 % faster steps)
    threads: int = 0                # torch CPU threads (0 = adapt to the cores other processes leave free)
    nice: int = 0                   # > 0: lower this process's CPU priority (background runs)
    tensorboard: bool = True
    progress: bool = True
    vocab_size: int = 0             # 0 = from the dataset's tokenizer (needed only for tokenizer-less data)
    tokenizer: str = ""             # override the tokenizer directory recorded in the dataset
    init: str = ""                  # fine-tune: start from this checkpoint's weights (default | memory | DIR)
    heads_only: bool = False        # with init: train only the reward / termination heads; every other weight
                                    # (hence every dreamed frame) stays the init's, bit for bit
    new_tokenizer: bool = False     # with init: the data's tokens come from another encoder than the init's (same
                                    # vocabulary and grid); the token embedding and output layer start afresh, the
                                    # rest (attention, actions, time) is fine-tuned from the init
    keep_token_io: bool = False     # with new_tokenizer: keep the embedding and output layer too, for an encoder
                                    # trained on from the init's (an FSQ id names the same code in both; most agree)

    # allowed ranges and choices (types come from the annotations above; see envs.common.config_check)
    CHECKS: ClassVar[dict[str, Check]] = {
        "size": one_of(*PRESETS), "dim": at_least(0, "0 = the preset's"), "depth": at_least(0, "0 = the preset's"),
        "heads": at_least(0, "0 = the preset's"), "patch": at_least(0, "0 = 2x2"),
        "heading_pairs": at_least(0, "0 = off"),
        "temporal": one_of("causal", "bidirectional"), "clip_len": at_least(2, "context plus a predicted frame"),
        "steps": at_least(1), "batch_size": at_least(1), "lr": above(0), "weight_decay": at_least(0),
        "warmup_steps": at_least(0), "cooldown_steps": at_least(0, "0 = no decay"), "grad_clip": above(0),
        "ema_decay": within(0, 1, hi_open=True), "masking": one_of("frame", "constant"),
        "scheduler": one_of(*SCHEDULERS), "loss_weighting": one_of("fused_snr", "min_snr", "none"),
        "clean_context_prob": within(0, 1), "token_noise": within(0, 1, hi_open=True),
        "return_share": within(0, 1, hi_open=True), "return_gap": at_least(1),
        "goal_share": within(0, 1, hi_open=True),
        "return_dream": at_least(0, "0 = off"),
        "self_context": within(0, 1), "self_context_frames": at_least(1), "self_context_steps": at_least(1),
        "action_dropout": within(0, 1), "reward_weight": at_least(0),
        "reward_pos_weight": above(0, "1 = unweighted"), "reward_early": at_least(0, "0 = the reward frame only"),
        "eval_every": at_least(0, "0 = off"),
        "eval_clips": at_least(1), "ckpt_every": at_least(1), "log_every": at_least(1), "keep_states": at_least(1),
        "max_minutes": at_least(0, "0 = no limit"), "seed": SEED, "device": one_of("auto", "cpu", "cuda"),
        "precision": one_of("auto", "bf16", "fp32"), "threads": THREADS, "nice": at_least(0),
        "vocab_size": at_least(0, "0 = from the dataset"),
    }

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first key of a wrong type or out of its range."""
        check_config(self)
        if self.cooldown_steps > self.steps:
            raise ConfigError(f"cooldown_steps must lie in [0, steps={self.steps}], got {self.cooldown_steps}")
        if self.return_share > 0 and self.clip_len <= self.return_gap:
            raise ConfigError(f"return_share={self.return_share} needs clip_len > return_gap={self.return_gap} (the "
                              f"clip must hold the view it returns to), got clip_len={self.clip_len}")
        if self.return_dream > 0 and not (self.return_share > 0 and self.return_dream < self.return_gap):
            raise ConfigError(f"return_dream={self.return_dream} needs return_share > 0 (got {self.return_share}) "
                              f"and return_dream < return_gap={self.return_gap} (the view returned to stays real)")
        if self.heads_only and not self.init:
            raise ConfigError("heads_only=true needs init=default|memory|DIR: the model whose heads to re-train")
        if self.new_tokenizer and (not self.init or self.heads_only):
            raise ConfigError("new_tokenizer=true needs init=default|memory|DIR (the model to carry over to the new "
                              "tokens) and heads_only=false (the token embedding and output layer must learn)")
        if self.keep_token_io and not self.new_tokenizer:
            raise ConfigError("keep_token_io=true needs new_tokenizer=true (it says what to keep of the init when "
                              "the data's encoder is another one)")
        if self.self_context > 0 and self.clip_len < 3:
            raise ConfigError(f"self_context={self.self_context} needs clip_len >= 3 (a real frame, a dreamed one, "
                              f"a real one), got clip_len={self.clip_len}")

    def objective(self) -> ObjectiveConfig:
        return ObjectiveConfig(self.scheduler, MaskingConfig(mode=self.masking, weighting=self.loss_weighting,
                                                             clean_context_prob=self.clean_context_prob),
                               self.action_dropout, self.reward_weight, self.token_noise, self.reward_pos_weight)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Warmup-stable-decay: linear warmup, constant, then (cooldown_steps > 0) linear decay to 0 at `steps`.

    The stable phase can be extended by resuming with a larger `steps`; the cooldown at the end of a
    long constant phase gives most of the gain of a decaying schedule without fixing the length up front.
    """
    lr = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    if cfg.cooldown_steps > 0:
        lr *= min(1.0, max(0.0, (cfg.steps - step) / cfg.cooldown_steps))
    return lr


def _step_generator(seed: int, step: int, *stream: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator that is a function of (seed, step, *stream) only: with no stream, the step's masking draws
    (the same on every rank); with (rank, tag), one rank's dreams (tag 1: self_context, 2: return_dream)."""
    return torch.Generator(device).manual_seed(
        int(np.random.SeedSequence([seed, step, *stream]).generate_state(1)[0]))


def train(cfg: TrainConfig, data_root: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
          out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train (or resume) a world model; returns a summary dict (also written to ``OUT/summary.json``)."""
    cfg.validate()
    rank, world, local_rank = dist_env()
    roots, out = data_roots(data_root or cfg.data), Path(out_dir or cfg.out)
    data = ",".join(str(r) for r in roots)          # for messages
    device = resolve_device(cfg.device, local_rank)
    owns_group = world > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    governor(cfg.threads)           # 0: adapt to the cores other processes leave free
    if cfg.nice > 0:
        os.nice(cfg.nice)
    amp = autocast_dtype(cfg.precision, device)
    seed_everything(cfg.seed)                       # same init on every rank (DDP also broadcasts)
    clips = TokenClips(roots, "train", cfg.clip_len, cfg.reward_early)
    try:
        test = TokenClips(roots, "test", cfg.clip_len, cfg.reward_early) if cfg.eval_every > 0 and rank == 0 else None
    except DatasetError as e:
        print(f"no held-out evaluation: {e}")
        test = None
    tok_dir = tokenizer_dir(cfg.tokenizer, clips.manifest)
    over = {k: getattr(cfg, k) for k in ("dim", "depth", "heads", "patch") if getattr(cfg, k) > 0}
    model = (model_from_init(cfg.init, clips, data, cfg.clip_len, cfg.temporal, over, cfg.heading_pairs,
                             cfg.new_tokenizer, cfg.keep_token_io) if cfg.init
             else new_model(clips, cfg.size, cfg.vocab_size, cfg.clip_len, cfg.temporal, over,
                            cfg.heading_pairs)).to(device)
    started_from = init_record(cfg.init, tok_dir)
    if cfg.heads_only:              # frozen weights get no gradient, no optimizer state and no EMA move
        model.requires_grad_(False)
        model.frame_heads.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    ema = Latte(model.cfg).to(device).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    ocfg = cfg.objective()
    objective = MaskFlowObjective(model, ocfg)
    # fused AdamW: one kernel over all parameters instead of ~10 small ops per tensor
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay,
                            fused=True)
    ema_state = ema.state_dict()
    meta = load_state(out, model, ema_state, opt, model.cfg.to_dict()) if cfg.resume else None
    if meta:
        check_same_data(out, meta, clips)
    step, elapsed = (int(meta["step"]), float(meta["elapsed_s"])) if meta else (0, 0.0)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        resumed = f"; resumed at step {step}" if meta else ""
        sets = f" from {len(clips.roots)} datasets" if len(clips.roots) > 1 else ""
        print(f"{describe(model)}; {len(clips)} train clips{sets}; device {device}, "
              f"{'bf16 autocast' if amp else 'fp32'}, {world} process(es){resumed}")
        changes = changed_settings(meta, dataclasses.asdict(cfg)) if meta else []
        if changes:
            print(f"note: resuming {out} at step {step} with changed settings: {'; '.join(changes)}. The run "
                  "follows the new values from here (the learning-rate schedule included).")
    if cfg.compile:
        objective.features = torch.compile(model.features)
    runner = torch.nn.parallel.DistributedDataParallel(objective, ) if world > 1 else objective
    sampler = ClipSampler(clips, cfg.batch_size, cfg.seed, rank, world, cfg.return_share, cfg.return_gap,
                          cfg.goal_share)
    local = cfg.batch_size // world
    my_returns = sampler.local_rows(sampler.return_rows)      # this rank's return rows (fixed for the run)
    logger = RunLogger(out, step if meta else None, cfg.tensorboard) if rank == 0 else None
    grid = clips.token_grid
    tokens_per_step = cfg.batch_size * cfg.clip_len * grid[0] * grid[1]
    bar = None
    if rank == 0 and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    t_start, last_eval, saved = time.time(), {}, {"step": step if meta else -1}
    # throughput window between log rows; evaluation and checkpoint time is excluded ("paused")
    win = {"n": 0, "t0": time.time(), "paused": 0.0, "loss": torch.zeros((), device=device)}

    def checkpoint() -> None:
        saved["step"] = step
        info = {"elapsed_s": elapsed, "model": model.cfg.to_dict(), "config": dataclasses.asdict(cfg),
                "data": clips.fingerprint}
        save_state(out, step, model, ema_state, opt, info, keep=cfg.keep_states)
        save_world_model(out, model.cfg, ema.state_dict(), action_meanings=list(clips.action_meanings),
                         env_id=clips.manifest.get("env_id", ""), tokenizer_dir=tok_dir,
                         train_config=dataclasses.asdict(cfg),
                         extra={"train_step": step, "train_elapsed_s": round(elapsed, 1), "eval": last_eval,
                                "env_kwargs": clips.env_kwargs,
                                **started_from})
        logger.plot()

    model.train()
    with StopSignals() as stop:
        while step < cfg.steps and not stop.requested:
            threads.tick()
            t0 = time.time()
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            gen = _step_generator(cfg.seed, step)
            draws = draw_step(cfg.batch_size, cfg.clip_len, grid, ocfg, gen, model.cfg.vocab_size)
            span = (draw_span(cfg.clip_len, cfg.self_context, cfg.self_context_frames, gen)
                    if cfg.self_context > 0 else None)
            if span is not None:
                draws = clean_span(draws, span)
            back = draw_return_span(cfg.return_dream, gen) if cfg.return_dream > 0 else 0
            if back:
                draws = clean_returns(draws, sampler.return_rows)
            counts = objective.global_counts(draws)
            batch = clips.batch_at(sampler.starts(step)).to(device)
            if span is not None:           # each rank dreams its own rows, from its own (seed, step, rank) stream
                batch = dream_span(ema, batch, span, cfg.self_context_steps,
                                   _step_generator(cfg.seed, step, rank, 1, device=device))
            if back:                       # this rank's return rows, from its own (seed, step, rank) stream
                batch = dream_returns(ema, batch, my_returns, back, cfg.self_context_steps,
                                      _step_generator(cfg.seed, step, rank, 2, device=device))
            want = rank == 0 and (step + 1) % cfg.log_every == 0
            loss, logs = runner(batch, draws.rows(rank * local, (rank + 1) * local).to(device),
                                tuple(c.to(device) for c in counts), world, amp, want)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            step += 1
            ema_update(ema, model, warmup_decay(step, cfg.ema_decay))
            win["loss"] += loss.detach()                              # window mean, no device sync per step
            win["n"] += 1
            elapsed += time.time() - t0
            if cfg.max_minutes > 0 and time.time() - t_start > 60 * cfg.max_minutes:
                stop.requested = True
            if world > 1:
                flag = torch.tensor([float(stop.requested)], device=device)
                dist.all_reduce(flag)      # a signal or time limit on any rank stops every rank at the same step
                stop.requested = bool(flag.item())
            if rank != 0:
                continue
            if want:
                logs["loss"] = float(win["loss"]) / win["n"]          # (float() also syncs a GPU before timing)
                if not math.isfinite(logs["loss"]):
                    raise FloatingPointError(f"loss became {logs['loss']} by step {step}; lower lr= or use "
                                             "precision=fp32")
                step_s = (time.time() - win["t0"] - win["paused"]) / win["n"]
                logs.update(lr=opt.param_groups[0]["lr"], grad_norm=float(gnorm), step_s=step_s, elapsed_s=elapsed,
                            cpu_s=time.process_time(), tokens_per_s=tokens_per_step / step_s,
                            clips_per_s=cfg.batch_size / step_s)
                logger.log("train", step, logs)
                win.update(n=0, t0=time.time(), paused=0.0, loss=torch.zeros((), device=device))
            if bar is not None:
                bar.update(1)
                if want:
                    bar.set_postfix(loss=f"{logs['loss']:.3f}", acc=f"{logs['masked_acc']:.3f}",
                                    tok_s=f"{logs['tokens_per_s']:.0f}")
            t_pause = time.time()
            if test is not None and cfg.eval_every > 0 and (step % cfg.eval_every == 0 or step == cfg.steps):
                last_eval = evaluate(ema, test, objective.scheduler, cfg.eval_clips, device=device, autocast=amp)
                logger.log("eval", step, last_eval)
            if step % cfg.ckpt_every == 0 or step == cfg.steps or stop.requested:
                checkpoint()
            win["paused"] += time.time() - t_pause
    if bar is not None:
        bar.close()
    summary: dict[str, Any] = {}
    if rank == 0:
        if saved["step"] != step or not (out / "model.json").is_file():
            checkpoint()
        rows = logger.train.rows
        summary = {"steps": step, "elapsed_s": round(elapsed, 1), "parameters": model.num_parameters(),
                   "model": model.cfg.to_dict(), "final_loss": rows[-1]["loss"] if rows else None,
                   "tokens_per_s": rows[-1].get("tokens_per_s") if rows else None, "eval": last_eval,
                   "stopped_early": step < cfg.steps, "out": str(out)}
        write_json(out / "summary.json", summary)
        logger.close()
        print(f"world model written to {out} (step {step}, {elapsed / 60:.1f} min of training)")
        if stop.signum is not None:
            print(resume_hint("training", stop.signum, step, out))
    if world > 1:
        dist.barrier()
    if owns_group:
        dist.destroy_process_group()
    return summary


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from plain keys; unknown keys raise :class:`ConfigError`."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown train keys {unknown}; valid keys: {sorted(names)}")
    return TrainConfig(**d)


def run_train(cfg: Any) -> dict[str, Any]:
    """CLI entry (`maskflow train data=DIR out=DIR ...`): DictConfig → :class:`TrainConfig` → :func:`train`."""
    from omegaconf import OmegaConf

    return train(config_from_dict(OmegaConf.to_container(cfg, resolve=True)))
