"""`maskflow dream`: imagine N frames from real context and show them beside what really happened.

The real side is a held-out episode: an episode of a dataset (``data=DIR``, test split by default) or
a fresh live episode of the env the model was trained on (``data=""``: a test maze, the exploration
policy, the env settings recorded in the checkpoint). Its first m frames are the context; its later
actions drive the dream, one frame per action.

A causal model at stride 1 dreams frame by frame with the KV-cached rollout; any other stride (or a
bidirectional model) runs the chunkwise driver. Written to ``out/``:

    dream.mp4 / dream.gif   real | dream side by side (context frames marked), frame counter
    contact_sheet.png       real (top) and dream (bottom) at the last context frame and horizons 1, 2, 4, ... N
    psnr.png                per-frame PSNR of the dream, of the tokenizer's reconstruction (the ceiling)
                            and of repeating the last context frame (the floor a dream must beat)
    dream.json              settings, NFE, timings, per-frame PSNR, reward and termination probabilities
    dream_tokens.npy        (m + N, h, w) uint16 token grids of context + dream

Axis letters: f frames, h w token grid, y x pixels, c colour.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from envs.common.config_check import DEVICE, PRECISION, SEED, THREADS, Check, at_least, check_config, one_of
from envs.common.errors import ConfigError
from envs.common.files import atomic_write, write_json
from envs.loops import parse_loop, real_loop
from envs.policies import POLICIES
from worldmodel.common.device import inference_dtype
from worldmodel.common.threads import governor
from worldmodel.dream.context import RealEpisode, dataset_episode, live_episode
from worldmodel.metrics.quality import psnr_per_frame
from worldmodel.sampling import SAMPLER_NAMES, SamplerConfig
from worldmodel.sampling.base import guidance_label, make_generator
from worldmodel.sampling.imagine import imagine, runs_cached
from worldmodel.sampling.rollout import DEFAULT_FRAME_GUMBEL, DEFAULT_FRAME_STEPS, recall_stays
from worldmodel.sampling.unmask_schedule import COUNT_MODES
from worldmodel.tokenizer.codec import decode_tokens, encode_frames

OUTPUTS = ("dream.mp4", "dream.gif", "contact_sheet.png", "psnr.png", "dream.json", "dream_tokens.npy")


@dataclass
class DreamConfig:
    """Settings of one dream (see ``configs/dream.yaml`` for each key's meaning)."""

    checkpoint: str = "default"     # default | memory (the shipped models) | DIR written by `maskflow train`
    data: str = ""                  # "" = a live episode of the checkpoint's env in a held-out maze | DIR (frames or
                                    # tokens dataset)
    split: str = "test"             # dataset split the real episode comes from
    episode: int = 0                # episode index within the split
    frames: int = 360               # frames to imagine after the context (N)
    context: int = 0                # real context frames m, in [0, window - 1]; 0 = window - 1 (all the model can see)
    stride: int = 1                 # 1 = frame by frame (KV cache, causal models); > 1 = chunkwise, <= window - context
    sampler: str = "mgm"            # mgm | mgm_tfree | fm | df (rolling: chunkwise only)
    steps: int = 0                  # unmasking steps per frame (stride 1) or per chunk; 0 = default (8 per frame,
                                    # paper T per chunk)
    temperature: float = 1.0        # softmax temperature of each draw; 0 = greedy
    gumbel: float | None = None       # None: DEFAULT_FRAME_GUMBEL frame by frame, 0 chunkwise (by measurement)
    schedule: str = "arccos"        # MGM unmask-count schedule: arccos | cosine | linear | square | root
    action_guidance: float = 0.0      # classifier-free guidance, frame by frame only (see SamplerConfig)
    history_guidance: float = 0.0   # guidance towards what the remembered frames imply (frame by frame only; 0 = off)
    history_guidance_recent: int = 0  # frames its second pass still sees (0 = none; n > 0: guide towards the far past)
    heading_recall: bool = False    # frame by frame, heading-rotary models: views that left the window come back by
                                    # heading while the camera only turns (loops longer than the window)
    seed: int = 0                   # seeds the sampler and the live episode (maze seed 2*seed+1, a test maze)
    policy: str = "random_walk"     # policy of the live episode: random_walk | uniform | goal_seeking
    loop: str = ""                  # "" = the episode's own actions | turnL (left L, right L) | circleN (left N;
                                    # 30 = 360 deg): after the context, dream that loop in a live held-out maze,
                                    # which returns to the start view (frames = the loop's length)
    env_kwargs: dict = field(default_factory=dict)  # overrides of the live env's settings (default: those recorded in
                                                    # the checkpoint)
    out: str = "runs/dream"         # output directory
    overwrite: bool = False         # replace an earlier dream in out
    fps: int = 15                   # >= 1
    scale: int = 4                  # video upscaling (64x64 frames -> 256x256 at scale 4); the gif uses scale/2
    gif: bool = True
    device: str = "cpu"             # cpu | cuda | auto
    threads: int = 0                # torch CPU threads (0 = adapt to the cores other processes leave free)
    compile: bool = False           # torch.compile the one-frame passes (slow start, faster frames)
    precision: str = "auto"         # auto (bf16 where the CPU/GPU has it natively, else fp32) | fp32 | bf16
    progress: bool = True

    # allowed ranges and choices (types come from the annotations above; see envs.common.config_check).
    # context <= window - 1 needs the checkpoint: dream() checks it right after loading the model.
    CHECKS: ClassVar[dict[str, Check]] = {
        "split": one_of("train", "test"), "episode": at_least(0), "frames": at_least(1, "frames to imagine"),
        "context": at_least(0, "0 = window - 1"), "stride": at_least(1, "1 = frame by frame"),
        "sampler": one_of(*SAMPLER_NAMES), "steps": at_least(0, "0 = the default"),
        "temperature": at_least(0, "0 = greedy"), "gumbel": at_least(0, "0 = off; null = the default"),
        "schedule": one_of(*COUNT_MODES), "action_guidance": at_least(0, "0 = off"),
        "history_guidance": at_least(0, "0 = off"), "history_guidance_recent": at_least(0, "0 = none"),
        "seed": SEED, "policy": one_of(*POLICIES),
        "fps": at_least(1), "scale": at_least(1), "device": DEVICE, "threads": THREADS,
        "precision": PRECISION,
    }

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first key of a wrong type or out of its range."""
        check_config(self)
        if self.loop:
            try:
                parse_loop(self.loop)
            except ConfigError as e:
                raise ConfigError(f"loop: {e}") from None
            if self.data:
                raise ConfigError(f"loop={self.loop} dreams a loop in a live held-out maze; leave data empty "
                                  f"(data={self.data!r} was given)")


def sampler_config(cfg: DreamConfig, masking: str) -> SamplerConfig:
    """The sampler of this dream; steps=0 picks the frame-by-frame default (or the paper's T per chunk),
    gumbel=None the frame-by-frame annealing (or none chunkwise, where it hurt FVD in `maskflow eval`)."""
    steps = cfg.steps if cfg.steps > 0 else (DEFAULT_FRAME_STEPS if cfg.stride == 1 else None)
    gumbel = cfg.gumbel if cfg.gumbel is not None else (DEFAULT_FRAME_GUMBEL if cfg.stride == 1 else 0.0)
    return SamplerConfig(cfg.sampler, steps=steps, temperature=cfg.temperature, gumbel=gumbel,
                         schedule=cfg.schedule, masking=masking, seed=cfg.seed,
                         action_guidance=cfg.action_guidance, history_guidance=cfg.history_guidance,
                         history_guidance_recent=cfg.history_guidance_recent)


def dream_dtype(cfg: DreamConfig, device: torch.device, cached: bool) -> str:
    """The dtype the dream computed in, for dream.json: precision=auto is bf16 where native, frame by frame only."""
    precision = cfg.precision if cached or cfg.precision != "auto" else "fp32"
    return str(inference_dtype(precision, device)).removeprefix("torch.")


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse to replace an earlier dream unless asked."""
    present = [name for name in OUTPUTS if (out / name).exists()]
    if present and not overwrite:
        raise ConfigError(f"{out} already holds a dream; pass overwrite=true to replace it or choose another out=")
    if present and not (out / "dream.json").is_file():     # overwrite replaces only a dream this project wrote
        raise ConfigError(f"{out} holds {', '.join(present)} but no dream.json, so they are not a dream this "
                          "project wrote; overwrite=true will not replace them: choose another out=")


def dream(cfg: DreamConfig) -> dict[str, Any]:
    """Run one dream and write its files to ``cfg.out``; returns the summary written to dream.json."""
    from worldmodel.model.checkpoint import calibrated_threshold, load_world_model

    cfg.validate()
    if cfg.loop:                    # the loop fixes the dream's length
        cfg = dataclasses.replace(cfg, frames=parse_loop(cfg.loop).frames)
    out = Path(cfg.out)
    check_out(out, cfg.overwrite)
    governor(cfg.threads)           # 0: adapt to the cores other processes leave free
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    t_load = time.perf_counter()
    model, tokenizer, meta = load_world_model(cfg.checkpoint, device=device)
    if tokenizer is None:
        raise ConfigError(f"checkpoint {meta['path']} carries no tokenizer, so it cannot show frames")
    load_s = time.perf_counter() - t_load
    k = int(model.cfg.max_frames)
    if cfg.context > k - 1:         # the model sees k frames: at most k - 1 given, one imagined
        raise ConfigError(f"context must be in [0, {k - 1}] for this checkpoint (window k={k}; 0 = k - 1), "
                          f"got {cfg.context}")
    stays = recall_stays(model, meta["action_space"]["meanings"], cfg.heading_recall, str(meta["path"]))
    if stays is not None and not runs_cached(model, cfg.stride):
        raise ConfigError(f"heading_recall=true dreams frame by frame with the KV cache: it needs stride=1 and a "
                          f"causal model; got stride={cfg.stride}, temporal={model.cfg.temporal}")
    m = cfg.context if cfg.context > 0 else k - 1
    n_total = m + cfg.frames
    masking = str(meta.get("train_config", {}).get("scheduler", "sigmoid"))
    scfg = sampler_config(cfg, masking)

    if cfg.data:
        real = dataset_episode(cfg.data, cfg.split, cfg.episode, tokenizer)
        if len(real.frames) < n_total:
            raise ConfigError(f"{real.source} has {len(real.frames)} frames but context={m} + frames={cfg.frames} "
                              f"= {n_total} are needed; use frames<={len(real.frames) - m} or data='' "
                              f"(a live episode of any length)")
        real = RealEpisode(real.frames[:n_total], real.actions[:n_total], real.rewards[:n_total], real.source)
    else:
        env_kwargs = {**meta.get("env_kwargs", {}), **dict(cfg.env_kwargs)}
        env_id = meta.get("env_id") or "DMLabMaze-v0"
        if cfg.loop:
            frames, acts = real_loop(env_id, env_kwargs, parse_loop(cfg.loop), m, cfg.seed, cfg.policy)
            real = RealEpisode(frames, acts, np.zeros(len(frames), np.float32),
                               f"live {env_id} maze_seed={2 * cfg.seed + 1} seed={cfg.seed} loop={cfg.loop}")
        else:
            real = live_episode(env_id, env_kwargs, n_total, cfg.seed, cfg.policy)
    n_actions = int(meta["action_space"]["n"])
    if int(real.actions[1:].max(initial=0)) >= n_actions:
        raise ConfigError(f"the real episode uses action {int(real.actions.max())} but the model knows "
                          f"{n_actions} actions; it was trained on a different env")

    real_tokens = encode_frames(tokenizer, real.frames)                       # (f h w)
    recon = decode_tokens(tokenizer, real_tokens)
    actions = torch.as_tensor(real.actions, device=device)
    gen = make_generator(scfg, device)
    bar = None
    if cfg.progress and runs_cached(model, cfg.stride):
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.frames, desc="dream", unit="frame", dynamic_ncols=True)
    t0 = time.perf_counter()
    im = imagine(model, scfg, real_tokens[None, :m], actions[None, :m], actions[None, m:n_total], cfg.frames, gen,
                 stride=cfg.stride, compile=cfg.compile, precision=cfg.precision,
                 tick=bar.update if bar is not None else None,
                 stays=stays)
    dream_s = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    tokens, nfe = torch.cat([real_tokens[:m], im.tokens[0]]), im.nfe               # (m + N, h, w)
    if im.cached:       # one commit pass per context frame filled the cache (nfe_context, not in nfe)
        mode, nfe_context = "frame-by-frame (KV cache)", m
        frame_ms = (1000 * np.diff(im.stamps, prepend=im.ready_s)).tolist()
        rewards_p = [float(torch.sigmoid(x)) for x in im.reward_logits[0]]
        done_p = [float(torch.sigmoid(x)) for x in im.done_logits[0]]
    else:
        mode, nfe_context, frame_ms, rewards_p, done_p = f"chunkwise (stride {cfg.stride})", 0, [], [], []
    dreamed = decode_tokens(tokenizer, tokens)

    def psnr(pred: np.ndarray) -> np.ndarray:      # per frame after the context; 100 dB where identical
        return psnr_per_frame(pred, real.frames[m:], identical=100.0)

    p_dream, p_recon = psnr(dreamed[m:]), psnr(recon[m:])
    p_copy = psnr(np.repeat(real.frames[m - 1:m], cfg.frames, 0))
    token_acc = (tokens[m:] == real_tokens[m:]).float().mean(dim=(1, 2)).cpu().numpy()
    summary = {
        "checkpoint": meta["path"], "source": real.source, "mode": mode,
        "settings": {**dataclasses.asdict(cfg), "context": m, "window": k, "sampler_steps": scfg.num_steps,
                     "gumbel": scfg.gumbel, "dtype": dream_dtype(cfg, device, runs_cached(model, cfg.stride))},
        "frames": cfg.frames, "context_frames": m, "nfe": int(nfe), "nfe_context": int(nfe_context),
        "nfe_per_frame": nfe / cfg.frames,
        "seconds": {"load": round(load_s, 2), "dream": round(dream_s, 2)},
        "frames_per_s": cfg.frames / dream_s,
        "ms_per_frame": {"mean": float(np.mean(frame_ms)), "p50": float(np.median(frame_ms)),
                         "max": float(np.max(frame_ms))} if frame_ms else None,
        "psnr": {"dream_mean": float(p_dream.mean()), "dream_first16": float(p_dream[:16].mean()),
                 "recon_mean": float(p_recon.mean()), "copy_last_mean": float(p_copy.mean())},
        "token_accuracy_mean": float(token_acc.mean()),
        # where reward_prob counts as a reward in the dream env: the checkpoint's calibration, else 0.5
        "reward_threshold": calibrated_threshold(meta.get("reward_calibration")),
        "per_frame": {"psnr_dream": p_dream.round(3).tolist(), "psnr_recon": p_recon.round(3).tolist(),
                      "psnr_copy_last": p_copy.round(3).tolist(), "token_accuracy": token_acc.round(4).tolist(),
                      "reward_prob": [round(x, 4) for x in rewards_p], "done_prob": [round(x, 4) for x in done_p],
                      "real_reward": real.rewards[m:].tolist(), "action": real.actions[m:].tolist()},
    }
    write_outputs(out, cfg, real.frames, dreamed, m, tokens, summary)
    return summary


def write_outputs(out: Path, cfg: DreamConfig, real: np.ndarray, dreamed: np.ndarray, m: int,
                  tokens: torch.Tensor, summary: dict[str, Any]) -> None:
    """Video, gif, PSNR curve, tokens and the JSON summary (written last, atomically)."""
    from envs.common.video import label, side_by_side, write_video

    out.mkdir(parents=True, exist_ok=True)
    n = len(real)
    left = label(real, [f"real {i - m + 1}" if i >= m else f"ctx {i + 1}/{m}" for i in range(n)])
    right = label(dreamed, [f"dream {i - m + 1}/{n - m}" if i >= m else "context" for i in range(n)],
                  color=(255, 230, 120))
    both = side_by_side(left, right)
    write_video(out / "dream.mp4", both, fps=cfg.fps, scale=cfg.scale)
    if cfg.gif:
        write_video(out / "dream.gif", both, fps=cfg.fps, scale=max(1, cfg.scale // 2))
    dream_contact_sheet(out / "contact_sheet.png", real, dreamed, m)
    plot_psnr(out / "psnr.png", summary)
    with atomic_write(out / "dream_tokens.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, tokens.cpu().numpy().astype(np.uint16))
    write_json(out / "dream.json", summary)


def sheet_horizons(n: int) -> list[int]:
    """Horizons shown on the contact sheet: 1, 2, 4, ... up to n, and n itself."""
    hs = [h for h in (2 ** i for i in range(max(1, n).bit_length())) if h <= n]
    return hs + ([n] if n and hs[-1] != n else [])


def dream_contact_sheet(path: Path, real: np.ndarray, dreamed: np.ndarray, m: int, scale: int = 2) -> None:
    """Two rows of (y x c) tiles: real and dream at the last context frame, then at horizons 1, 2, 4, ... N."""
    from PIL import Image

    from envs.common.video import label, upscale

    n = len(real) - m
    idx = [m - 1] + [m - 1 + h for h in sheet_horizons(n)]
    names = ["context"] + [f"+{h}" for h in sheet_horizons(n)]
    top = label(upscale(real[idx], scale), [f"real {t}" for t in names])
    bottom = label(upscale(dreamed[idx], scale), [f"dream {t}" for t in names], color=(255, 230, 120))
    rows = [np.concatenate(list(r), axis=1) for r in (top, bottom)]         # (y, len(idx)*x, c) each
    gap = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    with atomic_write(path) as tmp:
        Image.fromarray(np.concatenate([rows[0], gap, rows[1]])).save(tmp, format="PNG")


def plot_psnr(path: Path, summary: dict[str, Any]) -> None:
    """Per-frame PSNR of dream, reconstruction ceiling and copy-last floor against the dream horizon."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from envs.common.video import save_figure

    pf = summary["per_frame"]
    x = np.arange(1, len(pf["psnr_dream"]) + 1)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(x, pf["psnr_recon"], lw=1, color="0.6", label="tokenizer reconstruction (ceiling)")
    ax.plot(x, pf["psnr_copy_last"], lw=1, color="tab:red", alpha=0.7, label="repeat last context frame")
    w = max(1, len(x) // 60)
    smooth = np.convolve(pf["psnr_dream"], np.ones(w) / w, mode="same") if w > 1 else pf["psnr_dream"]
    ax.plot(x, pf["psnr_dream"], lw=0.6, color="tab:blue", alpha=0.35)
    ax.plot(x, smooth, lw=1.6, color="tab:blue", label=f"dream ({summary['mode']})")
    ax.set_xlabel("frames after the context")
    ax.set_ylabel("PSNR vs real (dB)")
    s = summary["settings"]
    ax.set_title(f"{s['sampler']} {s['sampler_steps']} steps, {s.get('dtype', 'float32')}, T={s['temperature']}, "
                 f"gumbel {s['gumbel']}, "
                 f"context {s['context']}{guidance_label(s)}",
                 fontsize=9)
    finite = [v for v in pf["psnr_recon"] if v < 100]
    ax.set_ylim(bottom=max(0, min(pf["psnr_copy_last"] + pf["psnr_dream"]) - 1),
                top=(max(finite) + 2) if finite else None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    save_figure(fig, path)


def run_dream(cfg: Any) -> dict[str, Any]:
    """CLI entry (``maskflow dream``): compose → :class:`DreamConfig` → :func:`dream`; prints a summary."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["env_kwargs"] = dict(plain.get("env_kwargs") or {})
    summary = dream(DreamConfig(**plain))
    p = summary["psnr"]
    print(json.dumps({"out": str(Path(plain["out"]).resolve()), "mode": summary["mode"], "frames": summary["frames"],
                      "nfe": summary["nfe"], "dream_seconds": summary["seconds"]["dream"],
                      "frames_per_s": round(summary["frames_per_s"], 2),
                      "psnr_dream_mean": round(p["dream_mean"], 2),
                      "psnr_copy_last_mean": round(p["copy_last_mean"], 2),
                      "psnr_recon_mean": round(p["recon_mean"], 2)}, indent=1))
    if not math.isfinite(p["dream_mean"]):
        raise ConfigError("the dream produced no frames")
    return summary
