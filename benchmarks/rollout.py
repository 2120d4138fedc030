"""Rollout benchmark: cached vs uncached frame-by-frame speed, a 360-frame dream, and quality vs steps.

(Speed against release 1, lever by lever and through the dream envs, is ``benchmarks/dream_speed.py``.)

    PYTHONPATH=. python benchmarks/rollout.py                       # speed on a random `small` model
    PYTHONPATH=. python benchmarks/rollout.py --checkpoint DIR --data TOKENS   # + quality vs steps/frame

Speed: frames/s, NFE per frame and ms per model call of :class:`CachedRollout` and :class:`WindowRollout`
at batch 1 and 16 (window k = 36 by default, the DMLab setting), on the CPU and on CUDA when present;
then the wall-clock of a 360-frame dream of the default model at the default steps per frame, and the
cost of history guidance on that model (frames/s with and without, its passes batched or not).
Quality: next-frame token accuracy and PSNR (decoded prediction vs decoded ground-truth tokens) of a
trained checkpoint, teacher-forced on held-out episodes, for 1, 2, 4, 8, 12, 20 steps per frame; the
suggested default is the smallest count within ``--tol-acc`` / ``--tol-psnr`` of the best.
Results are printed and, with ``--out``, written as JSON.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from envs.common.files import write_json
from worldmodel.model.cache import LatteCache
from worldmodel.model.latte import Latte, model_config
from worldmodel.sampling import SamplerConfig
from worldmodel.sampling.rollout import DEFAULT_FRAME_STEPS, CachedRollout, WindowRollout


def random_model(size: str, window: int, seed: int = 0) -> Latte:
    """A preset model with random weights (the zero-initialised heads perturbed so logits are not flat)."""
    torch.manual_seed(seed)
    model = Latte(model_config(size, max_frames=window, temporal="causal")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def time_rollout(model: Latte, sampler: SamplerConfig, batch: int, frames: int, cached: bool,
                 device: str = "cpu", compile: bool = False, warmup: int = 1, cls: type | None = None) -> dict:
    """Frames/s, NFE/frame and ms per call of a rollout from a full (k − 1)-frame context."""
    cls = cls or (CachedRollout if cached else WindowRollout)
    kwargs = {"compile": compile} if cached else {}
    ro = cls(model, sampler, batch, device=device, **kwargs)
    cfg = model.cfg
    g = torch.Generator(device=device).manual_seed(0)
    ctx = torch.randint(0, cfg.vocab_size, (batch, cfg.max_frames - 1, *cfg.token_grid), generator=g, device=device)
    ro.reset(ctx)
    actions = torch.zeros(batch, dtype=torch.long, device=device)
    for _ in range(warmup):
        ro.step(actions, g)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    nfe0, t0 = ro.nfe, time.perf_counter()
    for _ in range(frames):
        ro.step(actions, g)
    sync()
    dt = time.perf_counter() - t0
    calls = ro.nfe - nfe0
    return {"path": "cached" if cached else "uncached", "compile": compile, "device": device, "batch": batch,
            "steps": sampler.num_steps, "window": cfg.max_frames, "frames": frames, "seconds": dt,
            "frames_per_s": batch * frames / dt, "nfe_per_frame": calls / frames, "ms_per_call": 1e3 * dt / calls}


def dream_seconds(model: Latte, sampler: SamplerConfig, frames: int = 360, compile: bool = False) -> dict:
    """Wall-clock of one dream of ``frames`` frames (batch 1, cached), model build and warm-up excluded."""
    r = time_rollout(model, sampler, 1, frames, cached=True, compile=compile)
    return {"frames": frames, "steps": sampler.num_steps, "window": model.cfg.max_frames, "compile": compile,
            "seconds": r["seconds"], "frames_per_s": r["frames_per_s"]}


class BatchedPassRollout(CachedRollout):
    """The alternative to the shipped guidance (one model call per pass): all passes of a step as one batch
    against a per-pass copy of the cache, the no-history rows with every slot marked empty."""

    def _guided_frame_logits(self, tokens, t, actions):
        if self.passes == 1:
            return super()._guided_frame_logits(tokens, t, actions)
        branches, c = self._branches(actions), self.cache
        n = len(branches)
        copy = LatteCache([k.repeat(n, 1, 1, 1, 1) for k in c.keys], [v.repeat(n, 1, 1, 1, 1) for v in c.values],
                          torch.cat([c.valid if h else torch.zeros_like(c.valid) for _, h in branches]),
                          c.positions.repeat(n))
        logits = self._new_frame(tokens.repeat(n, 1, 1), t.repeat(n), torch.cat([a for a, _ in branches]),
                                 copy).logits[:, 0]
        return self._guide(list(logits.chunk(n)))


def guidance_cost(model: Latte, sampler: SamplerConfig, batches: list[int], frames: int) -> list[dict]:
    """Frames/s of history guidance (weight 1) relative to no guidance, as shipped (one call per pass) and with
    the passes batched, at each batch size; every row from the same context and seed."""
    rows = []
    guided = replace(sampler, history_guidance=1.0)
    for b in batches:
        base = time_rollout(model, sampler, b, frames, cached=True)
        shipped = time_rollout(model, guided, b, frames, cached=True)
        batched = time_rollout(model, guided, b, frames, cached=True, cls=BatchedPassRollout)
        row = {"batch": b, "steps": sampler.num_steps, "frames_per_s": base["frames_per_s"],
               "guided_frames_per_s": shipped["frames_per_s"], "guided_batched_frames_per_s": batched["frames_per_s"],
               "slowdown": base["frames_per_s"] / shipped["frames_per_s"],
               "slowdown_batched": base["frames_per_s"] / batched["frames_per_s"]}
        print(f"history guidance at batch {b}: {row['slowdown']:.2f}x the time per frame (one call per pass), "
              f"{row['slowdown_batched']:.2f}x with the passes batched", flush=True)
        rows.append(row)
    return rows


def teacher_forced_cases(episodes: list[dict], context: int, samples: int, seed: int) -> dict:
    """Pick ``samples`` (episode, frame) targets with ``context`` true frames before each: a dict of
    context (n c h w), context_actions (n c), target (n h w), action (n,) tensors."""
    rng = np.random.default_rng(seed)
    pool = [(e, i) for e, ep in enumerate(episodes) for i in range(context, len(ep["tokens"]))]
    if not pool:
        raise SystemExit(f"no held-out episode is longer than the context of {context} frames")
    pick = [pool[j] for j in rng.choice(len(pool), size=min(samples, len(pool)), replace=False)]
    ctx = np.stack([episodes[e]["tokens"][i - context:i] for e, i in pick]).astype(np.int64)
    ctx_a = np.stack([episodes[e]["actions"][i - context:i] for e, i in pick]).astype(np.int64)
    tgt = np.stack([episodes[e]["tokens"][i] for e, i in pick]).astype(np.int64)
    act = np.array([episodes[e]["actions"][i] for e, i in pick], dtype=np.int64)
    return {"context": torch.from_numpy(ctx), "context_actions": torch.from_numpy(ctx_a),
            "target": torch.from_numpy(tgt), "action": torch.from_numpy(act)}


@torch.inference_mode()
def quality_vs_steps(model: Latte, tokenizer, cases: dict, steps_list: list[int], sampler: str = "mgm",
                     schedule: str = "arccos", batch: int = 32, seed: int = 0) -> list[dict]:
    """Next-frame token accuracy and PSNR for each steps-per-frame count (same cases and seed for all)."""
    from worldmodel.metrics.quality import psnr_per_frame

    n = len(cases["target"])
    truth_px = None
    if tokenizer is not None:
        truth_px = np.concatenate([tokenizer.decode(cases["target"][i:i + batch]).cpu().numpy()
                                   for i in range(0, n, batch)])
    rows = []
    for steps in steps_list:
        cfg = SamplerConfig(name=sampler, steps=steps, schedule=schedule, seed=seed)
        preds = []
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            sl = slice(i, min(i + batch, n))
            ro = CachedRollout(model, cfg, sl.stop - sl.start)
            ro.reset(cases["context"][sl], cases["context_actions"][sl])
            g = torch.Generator().manual_seed(seed + i)
            preds.append(ro.step(cases["action"][sl], g).tokens)
        pred = torch.cat(preds)
        row = {"sampler": sampler, "schedule": schedule, "steps": steps,
               "accuracy": float((pred == cases["target"]).float().mean()), "seconds": time.perf_counter() - t0}
        if tokenizer is not None:
            px = np.concatenate([tokenizer.decode(pred[i:i + batch]).cpu().numpy() for i in range(0, n, batch)])
            row["psnr"] = float(np.minimum(psnr_per_frame(px, truth_px), 100.0).mean())
        rows.append(row)
        print(f"  {sampler}/{schedule} steps {steps:>2}: accuracy {row['accuracy']:.4f}" +
              (f"  PSNR {row['psnr']:.2f} dB" if "psnr" in row else "") + f"  ({row['seconds']:.1f} s)")
    return rows


def saturation_steps(rows: list[dict], tol_acc: float, tol_psnr: float) -> int:
    """Smallest steps count whose accuracy (and PSNR) is within tolerance of the best one measured."""
    best_acc = max(r["accuracy"] for r in rows)
    best_psnr = max((r["psnr"] for r in rows if "psnr" in r), default=None)
    for r in sorted(rows, key=lambda r: r["steps"]):
        if r["accuracy"] >= best_acc - tol_acc and (best_psnr is None or r["psnr"] >= best_psnr - tol_psnr):
            return r["steps"]
    return max(r["steps"] for r in rows)


def print_speed(rows: list[dict]) -> None:
    print(f"{'path':<9}{'compile':>8}{'device':>7}{'batch':>6}{'k':>4}{'T':>4}{'frames/s':>11}{'NFE/frame':>11}"
          f"{'ms/call':>10}")
    for r in rows:
        print(f"{r['path']:<9}{r['compile']!s:>8}{r['device']:>7}{r['batch']:>6}{r['window']:>4}{r['steps']:>4}"
              f"{r['frames_per_s']:>11.3f}{r['nfe_per_frame']:>11.1f}{r['ms_per_call']:>10.1f}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small", help="preset of the random speed model (tiny|small|base)")
    p.add_argument("--window", type=int, default=36, help="k of the speed comparison (DMLab: 36)")
    p.add_argument("--sampler", default="mgm", help="mgm | mgm_tfree | fm | df")
    p.add_argument("--steps", type=int, default=DEFAULT_FRAME_STEPS, help="unmasking steps per frame")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--frames", type=int, default=4, help="timed frames per cached run")
    p.add_argument("--uncached-frames", type=int, default=1, help="timed frames per uncached run")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = adapt to the load)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd cached passes")
    p.add_argument("--dream-frames", type=int, default=360)
    p.add_argument("--dream-window", type=int, default=16, help="k of the default model (train clip_len)")
    p.add_argument("--checkpoint", default="", help="trained model dir (or 'default'): dream + quality sweep")
    p.add_argument("--data", default="", help="token dataset for the quality sweep (test split)")
    p.add_argument("--quality-steps", type=int, nargs="+", default=[1, 2, 4, 8, 12, 20])
    p.add_argument("--quality-samples", type=int, default=256)
    p.add_argument("--schedule", default="arccos", help="MGM unmask-count schedule of the speed runs")
    p.add_argument("--quality-samplers", nargs="+", default=["mgm", "mgm_tfree"])
    p.add_argument("--quality-schedules", nargs="+", default=["arccos", "cosine"])
    p.add_argument("--tol-acc", type=float, default=0.005)
    p.add_argument("--tol-psnr", type=float, default=0.1)
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--guidance-batches", type=int, nargs="*", default=[1, 8],
                   help="batch sizes of the history-guidance cost (on the dream model; none to skip)")
    p.add_argument("--out", default="", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict = {"threads": torch.get_num_threads(), "default_steps": DEFAULT_FRAME_STEPS}
    sampler = SamplerConfig(name=args.sampler, steps=args.steps, schedule=args.schedule)

    if not args.skip_speed:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        rows = []
        for device in devices:
            model = random_model(args.size, args.window).to(device)
            for b in args.batches:
                c = time_rollout(model, sampler, b, args.frames, cached=True, device=device)
                rows.append(c)
                if args.compile and device == "cpu":
                    rows.append(time_rollout(model, sampler, b, args.frames, cached=True, device=device,
                                             compile=True))
                u = time_rollout(model, sampler, b, args.uncached_frames, cached=False, device=device, warmup=0)
                rows.append(u)
                print(f"[{device} b={b}] cached is {c['frames_per_s'] / u['frames_per_s']:.1f}x faster than "
                      f"uncached at k={args.window}", flush=True)
            print_speed(rows)
        result["speed"] = rows

    if args.checkpoint:
        from worldmodel.model.checkpoint import load_world_model

        model, tokenizer, meta = load_world_model(args.checkpoint)
        print(f"checkpoint {meta['path']}: window {model.cfg.max_frames}, grid {model.cfg.token_grid}")
    else:
        model, tokenizer = random_model(args.size, args.dream_window), None
    for compile in [False] + ([True] if args.compile else []):
        d = dream_seconds(model, sampler, args.dream_frames, compile=compile)
        print(f"dream: {d['frames']} frames, k={d['window']}, {d['steps']} steps/frame, compile={compile}: "
              f"{d['seconds']:.1f} s ({d['frames_per_s']:.2f} frames/s) on {result['threads']} threads")
        result.setdefault("dream", []).append(d)
    if args.guidance_batches:
        result["guidance_cost"] = guidance_cost(model, sampler, args.guidance_batches, args.frames)

    if args.checkpoint and args.data:
        from envs.dataset import EpisodeDataset

        ds = EpisodeDataset(args.data, split="test")
        episodes = [ds.episode(i) for i in range(len(ds))]
        cases = teacher_forced_cases(episodes, model.cfg.max_frames - 1, args.quality_samples, seed=0)
        print(f"quality vs steps per frame ({len(cases['target'])} held-out next frames):")
        result["quality"], result["saturation_steps"] = [], {}
        for name in args.quality_samplers:
            for schedule in args.quality_schedules:
                rows = quality_vs_steps(model, tokenizer, cases, args.quality_steps, name, schedule)
                best = saturation_steps(rows, args.tol_acc, args.tol_psnr)
                print(f"{name}/{schedule}: quality saturates at {best} steps per frame "
                      f"(current default {DEFAULT_FRAME_STEPS})")
                result["quality"] += rows
                result["saturation_steps"][f"{name}/{schedule}"] = best
    elif args.checkpoint or args.data:
        print("quality sweep needs both --checkpoint and --data")

    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
