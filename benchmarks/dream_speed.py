"""Dream speed against release 1 in one run: frames/s of the dream env, single and batched, lever by lever.

    PYTHONPATH=. python benchmarks/dream_speed.py                  # CPU: the table, ratios vs release 1
    PYTHONPATH=. python benchmarks/dream_speed.py --device cuda    # GPU: rollout frames/s at N = 1, 64, 1,024
    PYTHONPATH=. python benchmarks/dream_speed.py --table rollout --batches 1 16   # the same table on the CPU

CPU (the default). Release 1 is the commit ``--baseline`` (09055c9, the last commit before the speed
work); it is exported with ``git archive`` into a temporary folder beside this tree (or taken from
``--baseline-dir``), and runs there with its own defaults: 20 unmasking steps per frame, fp32. Every
figure comes from a fresh worker process whose PYTHONPATH is one of the two trees, and the workers
alternate release 1 / this tree for ``--rounds`` rounds; each ratio is this tree's rate over release 1's
in the same round, and the median over rounds is printed. What is timed, for every variant:

- ``single``: ``gym.make("MaskFlowDream-v0", **settings)``, env steps/s (one frame each, decoded to RGB),
- ``vector``: ``gym.make_vec("MaskFlowDream-v0", num_envs=16, vectorization_mode="vector_entry_point")``,
  frames/s over all 16 dreams,

with seeded random actions from a live held-out maze context, after ``--warmup`` untimed steps. Variants
of this tree: release 1's settings (``steps_per_frame=20, precision="fp32"``: the code changes alone),
each lever alone (bf16; fewer steps), and the defaults (all levers).

GPU (``--device cuda``, or ``--table rollout`` on the CPU): the cached rollout itself (tokens, no
decoding; ``--decode`` adds it) at each of
``--batches`` (1, 64, 1,024) with the default sampler, in bf16 and fp32, from random context of the
shipped model; it needs only torch, numpy, einops and safetensors (no gymnasium), so it runs on a bare GPU
machine from a clean checkout.

``--out FILE`` writes every measurement as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from envs.common.files import write_json

ROOT = Path(__file__).resolve().parents[1]
RELEASE_1 = "09055c9"          # the last commit before the speed work (release 1's dream)

# name -> (tree, env settings); "release 1" runs in the baseline tree with its own defaults
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "release 1": ("baseline", {}),
    "this code, release 1 settings": ("this", {"steps_per_frame": 20, "precision": "fp32"}),
    "+ bf16 only": ("this", {"steps_per_frame": 20, "precision": "bf16"}),
    "+ default steps only": ("this", {"precision": "fp32"}),
    "defaults (all levers)": ("this", {}),
}


# ---------------------------------------------------------------------------------------------- CPU worker
def worker(kind: str, settings: dict[str, Any], num_envs: int, warmup: int, seconds: float, seed: int) -> dict:
    """Frames/s of one dream env (``single``) or one vector env of ``num_envs`` (``vector``), in this process."""
    import gymnasium as gym
    import numpy as np

    import envs  # noqa: F401  (registers MaskFlowDream-v0)

    rng = np.random.default_rng(seed)
    if kind == "single":
        env = gym.make("MaskFlowDream-v0", **settings)
        n, sample = 1, (lambda: int(rng.integers(env.action_space.n)))
    else:
        env = gym.make_vec("MaskFlowDream-v0", num_envs=num_envs, vectorization_mode="vector_entry_point", **settings)
        n, sample = num_envs, (lambda: rng.integers(env.single_action_space.n, size=num_envs))
    try:
        env.reset(seed=seed)
        for _ in range(warmup):
            out = env.step(sample())
            if kind == "single" and (out[2] or out[3]):
                env.reset()
        steps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            out = env.step(sample())
            steps += 1
            if kind == "single" and (out[2] or out[3]):
                env.reset()
        dt = time.perf_counter() - t0
    finally:
        env.close()
    return {"kind": kind, "num_envs": n, "steps": steps, "seconds": dt, "frames_per_s": n * steps / dt}


def export_baseline(ref: str, into: Path) -> Path:
    """Release 1's tree (``git archive ref``) unpacked into ``into``; its shipped model comes with it."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=False)
    if archive.returncode:
        raise SystemExit(f"--baseline {ref}: git archive failed ({archive.stderr.decode().strip()}); this needs a "
                         "git checkout with that commit, or give --baseline-dir DIR (a checkout of release 1)")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def run_worker(tree: Path, kind: str, settings: dict[str, Any], args: argparse.Namespace) -> dict:
    """One measurement in a fresh process whose imports come from ``tree``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--settings", json.dumps(settings),
           "--num-envs", str(args.num_envs), "--warmup", str(args.warmup), "--seconds", str(args.seconds),
           "--seed", str(args.seed)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"worker failed in {tree} ({kind}, {settings}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_table(args: argparse.Namespace) -> dict:
    """Alternate release 1 and this tree, round by round; print rates and paired ratios."""
    with tempfile.TemporaryDirectory(prefix="maskflow-release1-") as tmp:
        base = Path(args.baseline_dir) if args.baseline_dir else export_baseline(args.baseline, Path(tmp) / "r1")
        trees = {"baseline": base, "this": ROOT}
        names = [v for v in VARIANTS if v in args.variants]
        rows: list[dict] = []
        for r in range(args.rounds):
            for kind in args.kinds:
                for name in names:
                    tree, settings = VARIANTS[name]
                    if args.checkpoint != "default":
                        settings = {**settings, "checkpoint": args.checkpoint}
                    res = run_worker(trees[tree], kind, settings, args)
                    rows.append({"round": r, "variant": name, "tree": tree, "settings": settings, **res})
                    print(f"round {r + 1}/{args.rounds} {kind:<6} {name:<30} {res['frames_per_s']:7.2f} frames/s",
                          flush=True)
    summary = []
    for kind in args.kinds:
        base = {x["round"]: x["frames_per_s"] for x in rows if x["kind"] == kind and x["variant"] == "release 1"}
        for name in names:
            mine = [x for x in rows if x["kind"] == kind and x["variant"] == name]
            rates = [x["frames_per_s"] for x in mine]
            ratios = [x["frames_per_s"] / base[x["round"]] for x in mine if x["round"] in base]
            summary.append({"kind": kind, "variant": name, "median_frames_per_s": statistics.median(rates),
                            "ratios": ratios, "median_ratio": statistics.median(ratios) if ratios else None})
    print(f"\n{'':<8}{'variant':<32}{'frames/s':>10}{'vs release 1':>14}   ratios per round")
    for s in summary:
        ratio = f"{s['median_ratio']:.2f}x" if s["median_ratio"] is not None else "-"
        print(f"{s['kind']:<8}{s['variant']:<32}{s['median_frames_per_s']:>10.2f}{ratio:>14}   "
              + " ".join(f"{x:.2f}" for x in s["ratios"]))
    return {"baseline": args.baseline_dir or args.baseline, "rows": rows, "summary": summary}


# ---------------------------------------------------------------------------------------------- GPU
def gpu_table(args: argparse.Namespace) -> dict:
    """Rollout frames/s at each batch size on ``args.device`` (tokens; ``--decode`` adds decoding)."""
    import torch

    from worldmodel.common.threads import governor
    from worldmodel.model.checkpoint import load_world_model
    from worldmodel.sampling import SamplerConfig
    from worldmodel.sampling.rollout import DEFAULT_FRAME_GUMBEL, DEFAULT_FRAME_STEPS, CachedRollout
    from worldmodel.tokenizer.codec import decode_tokens

    governor(args.threads)                  # CPU threads as the dream's default: adapt to the load
    device = torch.device(args.device)
    model, tokenizer, _ = load_world_model(args.checkpoint, device=device)
    cfg = model.cfg
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}: torch {torch.__version__}, model {cfg.dim}x{cfg.depth}, window {cfg.max_frames}", flush=True)
    rows = []
    settings = [("defaults", DEFAULT_FRAME_STEPS, "auto"), ("release 1 settings", 20, "fp32")]
    for label, steps, precision in settings:
        for n in args.batches:
            sampler = SamplerConfig("mgm", steps=steps, gumbel=DEFAULT_FRAME_GUMBEL)
            try:
                ro = CachedRollout(model, sampler, n, device=device, precision=precision)
                g = torch.Generator(device=device).manual_seed(args.seed)
                ctx = torch.randint(0, cfg.vocab_size, (n, cfg.max_frames - 1, *cfg.token_grid), generator=g,
                                    device=device)
                ro.reset(ctx)
                acts = torch.randint(0, cfg.num_actions, (n,), generator=g, device=device)
                for _ in range(args.warmup):
                    out = ro.step(acts, g)
                sync()
                frames, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < args.seconds:
                    out = ro.step(acts, g)
                    if args.decode:
                        decode_tokens(tokenizer, out.tokens)
                    frames += n
                    sync()
                dt = time.perf_counter() - t0
            except torch.OutOfMemoryError:
                print(f"{label:<20} N={n:<5} out of memory", flush=True)
                continue
            row = {"settings": label, "steps": steps, "precision": precision, "dtype": str(ro.dtype), "batch": n,
                   "frames_per_s": frames / dt, "ms_per_step": 1e3 * dt / (frames / n), "decode": args.decode,
                   "device": name}
            if device.type == "cuda":
                row["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
            rows.append(row)
            print(f"{label:<20} N={n:<5} {ro.dtype!s:<15} {row['frames_per_s']:10.1f} frames/s "
                  f"({row['ms_per_step']:.1f} ms per batched frame)", flush=True)
            del ro
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for n in args.batches:
        new = [r for r in rows if r["batch"] == n and r["settings"] == "defaults"]
        old = [r for r in rows if r["batch"] == n and r["settings"] == "release 1 settings"]
        if new and old:
            print(f"N={n}: defaults {new[0]['frames_per_s'] / old[0]['frames_per_s']:.2f}x release 1's settings")
    return {"device": name, "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda (cuda: the rollout table)")
    p.add_argument("--table", choices=["env", "rollout"], help="env: vs release 1 (the CPU default); rollout: "
                   "the GPU table (the cuda default; on the CPU it tests that path)")
    p.add_argument("--baseline", default=RELEASE_1, help="git ref of release 1")
    p.add_argument("--baseline-dir", default="", help="a checkout of release 1 instead of exporting --baseline")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), help="subset of: " + " | ".join(VARIANTS))
    p.add_argument("--kinds", nargs="+", default=["single", "vector"], choices=["single", "vector"])
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default="default", help="the world model (default: each tree's shipped one)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024], help="GPU table: batch sizes")
    p.add_argument("--threads", type=int, default=0, help="rollout table on the CPU: torch threads (0 = adapt)")
    p.add_argument("--decode", action="store_true", help="GPU table: decode every frame to RGB too")
    p.add_argument("--out", default="", help="write the results as JSON here")
    p.add_argument("--worker", choices=["single", "vector"], help=argparse.SUPPRESS)
    p.add_argument("--settings", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        res = worker(args.worker, json.loads(args.settings), args.num_envs, args.warmup, args.seconds, args.seed)
        print(json.dumps(res))
        return res
    table = args.table or ("env" if args.device == "cpu" else "rollout")
    result = cpu_table(args) if table == "env" else gpu_table(args)
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
