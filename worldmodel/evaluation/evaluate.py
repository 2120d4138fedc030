"""`maskflow eval`: FVD, per-frame PSNR/SSIM and the paper's comparisons for one world-model checkpoint.

N videos are cut from the held-out test mazes of a frames dataset. Every experiment dreams each video's
real continuation from real context, driven by the real actions, and is scored against it:

    experiments   MODE_SAMPLER. MODE: ``fbf`` (frame by frame: s = 1, m = k − 1; the KV-cached rollout
                  for causal models) or ``full`` (full sequence, chunkwise: m = full_context, s = k − m).
                  SAMPLER: mgm | mgm_tfree | fm | df | rolling (rolling is chunkwise only).
    horizons      extrapolation factors of the training window k (dreamed frames = factor · k). FVD on
                  the LAST ``fvd_frames`` frames of each horizon and on the first ``fvd_frames``, against
                  the real clips at the same positions; PSNR / SSIM per frame over the horizon.
    baselines     copy the last context frame (the floor) and the tokenizer's reconstruction (the ceiling).

Every experiment of a video dreams from the same real frame on (its context ends there whatever m is),
so all rows are scored on the same real frames. By default each video is dreamed once to its
experiment's longest horizon and shorter horizons are prefixes of that dream (what a shorter dream
draws, for the frame-by-frame rollout and for chunk plans whose windows line up); ``separate_horizons``
re-dreams each horizon. Files (see :mod:`worldmodel.evaluation.report`): report.md, results.json, psnr.png,
ssim.png, fvd.png in ``out``.

Axis letters: n videos, f frames, h w token grid, y x pixels, c colour.
"""

from __future__ import annotations

import dataclasses
import json
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from einops import rearrange

from envs.common.config_check import DEVICE, PRECISION, SEED, THREADS, Check, at_least, check_config, each, one_of
from envs.common.errors import ConfigError
from envs.loops import parse_loop
from worldmodel.common.seeding import seed_everything
from worldmodel.common.threads import governor
from worldmodel.evaluation.report import write_report
from worldmodel.evaluation.scores import FVDBank, baseline_rows, frame_scores, make_row, new_views
from worldmodel.evaluation.stats import paired_margins, same_videos
from worldmodel.evaluation.videos import Checkpoint, Experiment, RealVideos, describe, load_checkpoint, load_videos
from worldmodel.metrics.quality import PROTOCOL
from worldmodel.sampling import SAMPLER_NAMES, SamplerConfig
from worldmodel.sampling.base import make_generator
from worldmodel.sampling.imagine import imagine, planned_nfe, runs_cached
from worldmodel.sampling.rollout import DEFAULT_FRAME_GUMBEL, DEFAULT_FRAME_STEPS, recall_stays
from worldmodel.sampling.unmask_schedule import COUNT_MODES
from worldmodel.tokenizer.codec import decode_tokens, encode_frames

MODES = {"fbf": "frame-by-frame", "full": "full-sequence"}
EXPERIMENTS = tuple(f"{m}_{s}" for m in MODES for s in SAMPLER_NAMES if (m, s) != ("fbf", "rolling"))
OUTPUTS = ("report.md", "results.json", "psnr.png", "ssim.png", "fvd.png")
MIN_FVD_FRAMES = 9          # I3D's temporal pooling needs at least 9 frames


@dataclass
class EvalConfig:
    """Settings of one evaluation (each key is explained in ``configs/eval.yaml``)."""

    checkpoint: str = "default"     # default | memory (the shipped models) | DIR written by `maskflow train`
    data: str = ""                  # frames dataset DIR (its test split = held-out mazes); a token dataset is decoded
                                    # by the tokenizer
    split: str = "test"             # split the videos come from
    out: str = "runs/eval"          # output directory
    overwrite: bool = False         # replace an earlier report in out
    seed: int = 0                   # picks the videos and seeds every sampler: same config, same numbers
    num_videos: int = 8             # N videos (FVD needs >= 2; small N biases FVD upward; the report states N
                                    # everywhere)
    batch_size: int = 8             # videos dreamed together (wall-clock per video = batch time / videos)
    horizons: list[int] = field(default_factory=lambda: [1, 2, 5, 10])  # extrapolation factors of the window k (dreamed
                                                                        # frames = factor x k) for long_experiments
    long_experiments: list[str] = field(default_factory=lambda: ["fbf_mgm", "full_mgm"])  # experiments scored at every
                                                                                          # horizon in `horizons`
    comparison_horizons: list[int] = field(default_factory=lambda: [1])  # factors for every other experiment
                                                                         # (FM/DF/Rolling are costly on CPU)
    experiments: list[str] = field(default_factory=lambda: ["fbf_mgm", "full_mgm", "full_mgm_tfree", "full_fm",
                                                            "full_df", "full_rolling"])
    compare_checkpoint: str = ""    # optional second model, e.g. trained with masking=constant ("" = skip that
                                    # comparison, noted)
    compare_label: str = ""         # its label in the tables ("" = "compare (<its training masking> masking)")
    compare_experiments: list[str] = field(default_factory=lambda: ["full_mgm", "full_fm"])  # experiments run on
                                                                                             # compare_checkpoint (at
                                                                                             # comparison_horizons)
    pair_with: str = ""             # an earlier eval's out DIR (or results.json) with the same
                                    # data/seed/num_videos/horizons: its rows are paired video by video with this run's
                                    # (margins with 95% CIs in the report); "" = none
    full_context: int = 0           # context m of full-sequence experiments (0 = k/2); stride s = k - m
    steps_frame: int = DEFAULT_FRAME_STEPS  # MGM / timestep-free unmasking steps per frame (frame by frame; as dream)
    steps_mgm: int = 20             # MGM steps per chunk (full sequence; paper 20)
    steps_fm: int = 50              # FM Euler steps per chunk (per frame for fbf_fm); paper 250, reduced for CPU
                                    # (labelled)
    steps_df: int = 50              # Diffusion-Forcing T per chunk (NFE T + k per chunk); paper 250
    steps_rolling: int = 50         # Rolling-Diffusion S (NFE 2S + (N - k) ceil(S / (k - m))); paper 250
    temperature: float = 1.0        # softmax temperature of every draw (0 = greedy)
    gumbel: float = 0.0             # MGM confidence annealing (MaskGIT choice temperature; 0 = off) of full-sequence
                                    # rows
    gumbel_frame: float = DEFAULT_FRAME_GUMBEL  # the same for frame-by-frame rows (8 = the dream default; it hurt full-
                                                # sequence FVD)
    action_guidance: float = 0.0    # classifier-free guidance on the action, frame-by-frame rows only (0 = off; +1 NFE
                                    # per step)
    history_guidance: float = 0.0   # guidance towards what the remembered frames imply, frame-by-frame rows only (0 =
                                    # off)
    history_guidance_recent: int = 0  # frames history guidance's second pass still sees (0 = none; n > 0: guide
                                      # towards what only frames older than the last n imply)
    band_frames: int = 0            # per-video bands and paired margins over frames 1-u, u+1-4u, 4u+1-10u, ... (0: u =
                                    # the window k; 16 gives a k = 32 model release 1's bands)
    heading_recall: bool = False    # loops dream with heading recall (heading-rotary models: views that left the
                                    # window come back by heading while the camera only turns; loops beyond it)
    schedule: str = "arccos"        # MGM unmask-count schedule: arccos | cosine | linear | square | root
    fvd: bool = True                # false = skip FVD (PSNR/SSIM only; much faster)
    loops: list[str] = field(default_factory=list)  # loop-closure trials in live held-out mazes of data='s env: turnL
                                                    # (left L, right L) | circleN (left N; 30 = 360 deg), e.g.
                                                    # [turn15,circle30]
    loop_trials: int = 8            # mazes per loop (the same mazes for every loop)
    loop_real_turns: int = 0        # diagnostic: the first n turns of every loop are real (given as context), the
                                    # rest dreamed (0 = the whole loop dreamed)
    reward_trials: int = 0          # > 0: reward/termination recall on this many real goal reaches in live held-out
                                    # mazes (goal-seeking oracle), and false alarms away from them (0 = off)
    fvd_frames: int = 16            # FVD clip length (16 = standard; >= 9)
    separate_horizons: bool = False  # true = dream every horizon separately (default: shorter horizons are prefixes of
                                     # the longest dream)
    device: str = "cpu"             # cpu | cuda | auto
    precision: str = "auto"         # dtype of frame-by-frame rows: auto (bf16 where native, else fp32) | fp32 | bf16
    threads: int = 0                # torch CPU threads (0 = adapt to the cores other processes leave free)
    progress: bool = True           # tqdm progress bars

    # allowed ranges and choices beyond the rules of validate() (types come from the annotations above)
    CHECKS: ClassVar[dict[str, Check]] = {
        "split": one_of("train", "test"), "seed": SEED, "temperature": at_least(0, "0 = greedy"),
        "gumbel": at_least(0, "0 = off"), "gumbel_frame": at_least(0, "0 = off"), "schedule": one_of(*COUNT_MODES),
        "device": DEVICE, "threads": THREADS, "precision": PRECISION, "loop_trials": at_least(1),
        "loop_real_turns": at_least(0, "0 = the whole loop dreamed"),
        "reward_trials": at_least(0, "0 = off"), "history_guidance_recent": at_least(0, "0 = none"),
        "band_frames": at_least(0, "0 = the window k"),
        **{key: each(at_least(1), non_empty=True) for key in ("horizons", "comparison_horizons")},
    }

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first key of a wrong type or out of its range."""
        check_config(self)
        if not self.data:
            raise ConfigError("data=DIR is required: a frames dataset (its test split holds the held-out mazes)")
        for key in ("experiments", "long_experiments", "compare_experiments"):
            for name in getattr(self, key):
                if name == "fbf_rolling":
                    raise ConfigError(f"{key}: rolling diffusion keeps several partially masked frames and cannot "
                                      "run frame by frame; use full_rolling")
                if name not in EXPERIMENTS:
                    raise ConfigError(f"{key}: unknown experiment {name!r}; valid: {', '.join(EXPERIMENTS)}")
        if not self.experiments:
            raise ConfigError("experiments: give at least one experiment, e.g. [fbf_mgm]")
        for name in self.loops:
            try:
                parse_loop(name)
            except ConfigError as e:
                raise ConfigError(f"loops: {e}") from None
        for key in ("horizons", "comparison_horizons"):
            values = getattr(self, key)
            if not values or any(int(v) != v or v < 1 for v in values):
                raise ConfigError(f"{key} must be a non-empty list of extrapolation factors >= 1 (dreamed frames "
                                  f"= factor x window k), got {values}")
        for key in ("num_videos", "batch_size", "steps_frame", "steps_mgm", "steps_fm", "steps_df", "steps_rolling"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.fvd and self.num_videos < 2:
            raise ConfigError(f"num_videos={self.num_videos}: FVD fits a covariance and needs at least 2 videos "
                              "(headline numbers use 2048); raise num_videos or set fvd=false")
        if self.fvd_frames < MIN_FVD_FRAMES:
            raise ConfigError(f"fvd_frames={self.fvd_frames}: I3D needs clips of >= {MIN_FVD_FRAMES} frames (16 is "
                              "the standard protocol)")
        for key in ("action_guidance", "history_guidance"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"{key} must be >= 0 (0 = off), got {getattr(self, key)}")
        if self.full_context < 0:
            raise ConfigError(f"full_context must be >= 0 (0 = window/2), got {self.full_context}")


def experiment_steps(cfg: EvalConfig, mode: str, sampler: str) -> int:
    """Steps per frame (fbf MGM) or per chunk (full MGM, FM, DF) or per frame of time (rolling's S)."""
    if sampler in ("mgm", "mgm_tfree"):
        return cfg.steps_frame if mode == "fbf" else cfg.steps_mgm
    return {"fm": cfg.steps_fm, "df": cfg.steps_df, "rolling": cfg.steps_rolling}[sampler]


def plan_experiments(cfg: EvalConfig, k: int, full_context: int, compare: bool) -> list[Experiment]:
    """The experiments to run, main checkpoint first, with their contexts, strides and horizons in frames."""
    todo = [("main", n, "horizons" if n in cfg.long_experiments else "comparison_horizons") for n in cfg.experiments]
    if compare:
        todo += [("compare", n, "comparison_horizons") for n in cfg.compare_experiments]
    plan = []
    for role, name, key in todo:
        mode, sampler = name.split("_", 1)
        m = k - 1 if mode == "fbf" else full_context
        plan.append(Experiment(name, role, mode, sampler, experiment_steps(cfg, mode, sampler), m,
                               1 if mode == "fbf" else k - m, tuple(sorted({int(f) * k for f in getattr(cfg, key)})),
                               key))
    return plan


# -------------------------------------------------------------------------------------------- dreaming
def cached_rollout(ckpt: Checkpoint, exp: Experiment) -> bool:
    """Frame by frame on a causal model runs the KV-cached rollout (otherwise the chunkwise driver, s = 1);
    full-sequence rows run the chunkwise driver even at s = 1."""
    return runs_cached(ckpt.model, exp.stride, cache=exp.mode == "fbf")


def formula_nfe(ckpt: Checkpoint, exp: Experiment, scfg: SamplerConfig, frames: int) -> int:
    """NFE per video of a ``frames``-frame dream of ``exp`` (:func:`~worldmodel.sampling.imagine.planned_nfe`)."""
    return planned_nfe(ckpt.model, scfg, exp.context, frames, exp.stride, cache=exp.mode == "fbf")


def dream_videos(ckpt: Checkpoint, exp: Experiment, scfg: SamplerConfig, tokens: torch.Tensor, actions: torch.Tensor,
                 start: int, frames: int, batch_size: int, gen: torch.Generator, progress: bool, precision: str = "fp32"
                 ) -> tuple[torch.Tensor, int, np.ndarray]:
    """Dream ``frames`` frames of every video from real tokens (n f h w) before local index ``start``, driven
    by the real actions (n f), ``batch_size`` videos per :func:`~worldmodel.sampling.imagine.imagine` call.

    Returns the dreamed tokens (n frames h w), the NFE per video and the batch-summed seconds after each
    frame (cached rollout) or after each denoiser call (chunkwise)."""
    from tqdm.auto import tqdm

    m, n, cached = exp.context, len(tokens), cached_rollout(ckpt, exp)
    nfe = formula_nfe(ckpt, exp, scfg, frames)
    total = frames if cached else nfe
    out, stamps = [], np.zeros(total)
    bar = tqdm(total=total * -(-n // batch_size), desc=f"{exp.role}:{exp.name} {frames}f", leave=False,
               disable=not progress, unit="frame" if cached else "NFE", dynamic_ncols=True)
    for b0 in range(0, n, batch_size):
        sl = slice(b0, b0 + batch_size)
        dreamed = imagine(ckpt.model, scfg, tokens[sl, start - m:start], actions[sl, start - m:start],
                          actions[sl, start:start + frames], frames, gen, stride=exp.stride, cache=exp.mode == "fbf",
                          precision=precision, tick=bar.update)
        out.append(dreamed.tokens)
        stamps += dreamed.stamps
    bar.close()
    return torch.cat(out), nfe, stamps


def guidance(cfg: EvalConfig, ckpt: Checkpoint, exp: Experiment) -> dict[str, float]:
    """The guidance weights of one experiment: only cached frame-by-frame rows can guide (chunkwise rows
    and non-causal models run without)."""
    if not cached_rollout(ckpt, exp):
        return {}
    return {"action_guidance": cfg.action_guidance, "history_guidance": cfg.history_guidance,
            "history_guidance_recent": cfg.history_guidance_recent}


def run_experiment(cfg: EvalConfig, ckpt: Checkpoint, exp: Experiment, real: RealVideos, tokens: torch.Tensor,
                   bank: FVDBank, device: torch.device, new_view: np.ndarray) -> list[dict]:
    """Dream, decode and score one experiment at each of its horizons (``new_view``: see ``make_row``)."""
    k, start = ckpt.window, real.dream_start
    scfg = SamplerConfig(exp.sampler, steps=exp.steps, temperature=cfg.temperature,
                         gumbel=cfg.gumbel_frame if exp.mode == "fbf" else cfg.gumbel,
                         schedule=cfg.schedule, **guidance(cfg, ckpt, exp),
                         masking=ckpt.scheduler, seed=cfg.seed + zlib.crc32(f"{exp.role}:{exp.name}".encode()))
    gen = make_generator(scfg, device)
    actions = torch.as_tensor(real.actions, device=device)
    key = exp.name if exp.role == "main" else f"compare:{exp.name}"
    base = {"key": key, "experiment": exp.name, "checkpoint": exp.role, "model": ckpt.label,
            "training_masking": ckpt.masking, "mode": MODES[exp.mode], "sampler": exp.sampler, "steps": exp.steps,
            "context": exp.context, "stride": exp.stride, "kv_cache": cached_rollout(ckpt, exp),
            "nfe_context": exp.context if cached_rollout(ckpt, exp) else 0, **guidance(cfg, ckpt, exp)}
    runs = [(h,) for h in exp.horizons] if cfg.separate_horizons else [exp.horizons]
    rows = []
    for hs in runs:
        dreamed, nfe_max, stamps = dream_videos(ckpt, exp, scfg, tokens, actions, start, hs[-1], cfg.batch_size,
                                                gen, cfg.progress, cfg.precision)
        pred = rearrange(decode_tokens(ckpt.tokenizer, rearrange(dreamed, "n f h w -> (n f) h w")),
                         "(n f) y x c -> n f y x c", n=len(dreamed))
        truth = real.frames[:, start:start + hs[-1]]
        psnr, ssim = frame_scores(pred, truth)
        acc = (dreamed == tokens[:, start:start + hs[-1]]).float().mean(dim=(2, 3))      # (n f) token accuracy
        source = key if len(hs) > 1 else f"{key}@{hs[0]}"
        for h in hs:
            nfe = formula_nfe(ckpt, exp, scfg, h)
            # seconds of the first frames / NFE of the longest dream = what a dream of h frames costs
            at = (h if base["kv_cache"] else nfe) - 1
            seconds = stamps[min(at, len(stamps) - 1)] / len(dreamed)
            rows.append({**make_row(base, h, k, psnr, ssim, bank, source, pred, nfe, seconds, new_view,
                                    unit=cfg.band_frames),
                         "token_accuracy": acc[:, :h].mean().item(), "nfe_counted_longest": nfe_max})
    return rows


def results_file(path: str) -> Path:
    """An eval's results.json: ``path`` itself, or the results.json in the folder ``path``."""
    f = Path(path)
    return f / "results.json" if f.is_dir() else f


def read_results(path: str, name: str = "") -> Any:
    """The JSON of an eval's results.json, given it or the folder holding it; ``name`` (a key such as
    "pair_with=") prefixes the errors, so that they name what the user gave."""
    f = results_file(path)
    try:
        return json.loads(f.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{name}{path}: no eval results there (give an eval's out= folder or its results.json)") \
            from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{name}{path}: {f} is not a readable results.json ({e})") from None


def read_pairable(path: str, name: str) -> dict:
    """An eval's results that can be paired video by video (settings, videos, per-video scores): its results.json
    or the folder holding it; ``name`` (e.g. "pair_with=") prefixes the errors."""
    res = read_results(path, name)
    if not isinstance(res, dict) or not {"settings", "videos", "rows"} <= res.keys():
        raise ConfigError(f"{name}{path}: {results_file(path)} is not a `maskflow eval` results.json")
    if not any("psnr_bands_new_view" in r for r in res["rows"]):
        raise ConfigError(f"{name}{path}: {results_file(path)} carries no per-video scores (written by an older "
                          "version); re-run that eval to pair with it")
    return res


def load_earlier(path: str) -> dict | None:
    """The results of an earlier eval to pair with (``pair_with``): its results.json, or the folder holding it."""
    return read_pairable(path, "pair_with=") if path else None


def resolve_device(name: str) -> torch.device:
    """Torch device of ``device=``: "auto" is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run the evaluation and write its files to ``cfg.out``; returns what results.json holds."""
    from tqdm.auto import tqdm

    cfg.validate()                      # again: fields may have changed since construction
    out = Path(cfg.out)
    present = [name for name in OUTPUTS if (out / name).exists()]
    if present and not cfg.overwrite:
        raise ConfigError(f"{out} already holds an eval report; pass overwrite=true or choose another out=")
    if present and not (out / "results.json").is_file():    # overwrite replaces only a report this project wrote
        raise ConfigError(f"{out} holds {', '.join(present)} but no results.json, so they are not an eval report "
                          "this project wrote; overwrite=true will not replace them: choose another out=")
    governor(cfg.threads)           # 0: adapt to the cores other processes leave free
    t_start = time.perf_counter()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    main = load_checkpoint(cfg.checkpoint, device, "main")
    k = main.window
    if cfg.heading_recall and not cfg.loops:
        raise ConfigError("heading_recall=true applies to the loop-closure test: set loops=, e.g. loops=[turn30]")
    recall_stays(main.model, main.meta["action_space"]["meanings"], cfg.heading_recall, str(main.meta["path"]))
    compare = None
    notes = []
    if cfg.compare_checkpoint:
        compare = load_checkpoint(cfg.compare_checkpoint, device, "compare", cfg.compare_label)
        if compare.window != k:
            raise ConfigError(f"compare_checkpoint: its window k={compare.window} differs from the checkpoint's "
                              f"k={k}; horizons are multiples of k, so both models need the same window")
    else:
        notes.append("frame-level vs constant masking: skipped (no compare_checkpoint given; train one with "
                     "`maskflow train masking=constant` and pass compare_checkpoint=DIR)")
    m_full = cfg.full_context or k // 2
    if m_full >= k:
        raise ConfigError(f"full_context={m_full} must be below the window k={k} (full sequence keeps s = k - m >= 1)")
    plan = plan_experiments(cfg, k, m_full, compare is not None)
    if cfg.action_guidance > 0 or cfg.history_guidance > 0:
        unguided = [f"{e.role}:{e.name}" for e in plan if not cached_rollout(main if e.role == "main" else compare, e)]
        if unguided:
            notes.append("guidance applies to cached frame-by-frame rows of causal models only; these rows ran "
                         f"unguided: {', '.join(unguided)}")
    earlier = load_earlier(cfg.pair_with)
    real = load_videos(cfg.data, cfg.split, cfg.num_videos, cfg.seed, plan, k, main.tokenizer)
    if earlier is not None:       # before any dreaming: a mismatch costs nothing
        same_videos({"settings": dataclasses.asdict(cfg), "videos": real.picks}, earlier, ("this eval", "pair_with"))
    start = real.dream_start
    horizons = sorted({h for e in plan for h in e.horizons})
    bank = FVDBank(real.frames[:, start:], cfg.fvd_frames, cfg.fvd, device, cfg.progress)
    flat = rearrange(real.frames, "n f y x c -> (n f) y x c")
    tokens, enc_s = {}, 0.0
    for ck in (main, compare):
        if ck is not None:
            t0 = time.perf_counter()
            tokens[ck.role] = rearrange(encode_frames(ck.tokenizer, flat), "(n f) h w -> n f h w", n=len(real.frames))
            enc_s = enc_s or (time.perf_counter() - t0) / len(flat)
    new_view = new_views(real, max(horizons))                  # (n f): once for every row
    rows = baseline_rows(real, main, tokens["main"], enc_s, horizons, bank, k, new_view, cfg.band_frames)
    for exp in tqdm(plan, desc="experiments", disable=not cfg.progress, dynamic_ncols=True):
        ck = main if exp.role == "main" else compare
        rows += run_experiment(cfg, ck, exp, real, tokens[exp.role], bank, device, new_view)
    if real.kind == "tokens":
        notes.append("data is a token dataset: the real frames are the tokenizer's decode of its tokens, so the "
                     "reconstruction row is a decode -> encode -> decode round trip, not the tokenizer's ceiling")
    loops = None
    if cfg.loops:
        from worldmodel.evaluation.loops import loop_closure, loop_sheet, pair_loops

        env_id, env_kwargs = real.env                   # loops play fresh mazes of data='s env
        loops = loop_closure(cfg.checkpoint, cfg.loops, cfg.loop_trials, cfg.seed, cfg.steps_frame, cfg.precision,
                             str(device), threads=None, temperature=cfg.temperature, gumbel=cfg.gumbel_frame,
                             action_guidance=cfg.action_guidance, history_guidance=cfg.history_guidance,
                             history_guidance_recent=cfg.history_guidance_recent, real_turns=cfg.loop_real_turns,
                             heading_recall=cfg.heading_recall, env_id=env_id, env_kwargs=env_kwargs)
        out.mkdir(parents=True, exist_ok=True)
        loop_sheet(out / "loops.png", loops)
        for r in loops["loops"].values():
            r.pop("pictures")
        if earlier is not None and earlier.get("loops"):
            loops["paired"] = pair_loops(loops, earlier["loops"], cfg.seed)
    rewards = None
    if cfg.reward_trials > 0:
        from worldmodel.evaluation.rewards import reward_recall, reward_sheet

        rewards = reward_recall(cfg.checkpoint, cfg.reward_trials, cfg.seed, steps_per_frame=cfg.steps_frame,
                                precision=cfg.precision, device=str(device), threads=None)
        out.mkdir(parents=True, exist_ok=True)
        reward_sheet(out / "rewards.png", rewards)
        rewards.pop("pictures")
    paired = paired_margins(rows, cfg.seed, earlier["rows"] if earlier is not None else None)
    if earlier is not None:
        notes.append(f"pair_with: `pair_with:ROW` is ROW of the earlier eval {cfg.pair_with} (same videos)")
    results = {
        "settings": {**dataclasses.asdict(cfg), "window": k, "full_context_used": m_full,
                     "fbf_context": k - 1, "device_used": str(device), "torch_threads": torch.get_num_threads()},
        "models": {ck.role: describe(ck) for ck in (main, compare) if ck is not None},
        "videos": real.picks, "data_kind": real.kind, "num_videos": len(real.frames),
        "fvd_protocol": PROTOCOL, "rows": rows, "paired": paired, "notes": notes, "loops": loops,
        "rewards": rewards,
        "repeated_views": int((~new_view).sum()),
        "seconds_total": round(time.perf_counter() - t_start, 1),
    }
    write_report(out, results)
    return results


def run_eval(cfg: Any) -> dict[str, Any]:
    """CLI entry (``maskflow eval``): compose → :class:`EvalConfig` → :func:`evaluate`; prints a summary."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True)
    results = evaluate(EvalConfig(**plain))
    head = [r for r in results["rows"] if r["fvd_last"] is not None]
    print(json.dumps({"out": str(Path(plain["out"]).resolve()), "num_videos": results["num_videos"],
                      "seconds": results["seconds_total"],
                      "fvd": {r["id"]: round(r["fvd_last"]["fvd"], 2) for r in head}}, indent=1))
    return results
