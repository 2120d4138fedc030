"""Throughput on a shared CPU: dream and train, quiet and beside one busy process, adaptive vs fixed threads.

    PYTHONPATH=. python benchmarks/contention.py                  # both workloads, ~4 minutes on 2 cores
    PYTHONPATH=. python benchmarks/contention.py --workloads dream --seconds 20 --out results.json

Each figure comes from a fresh worker process that runs its workload at default settings for a
warm-up, then counts what it finishes in ``--seconds`` of wall time:
- ``dream``: the default model's frame-by-frame rollout with the dream's default sampler (frames/s);
- ``train``: ``maskflow train``'s own loop on the ``small`` preset, batch 8 x 16 frames, on random
  tokens (steps/s, from the median step time in ``train_log.csv``).
Settings per workload: quiet with ``threads=0`` (the default: adapt to the cores other processes
leave free, :mod:`worldmodel.common.threads`), quiet with threads fixed at every core (release 1's default,
torch's own), and both again beside one single-threaded busy loop. It prints the two goal ratios:
busy/quiet at the default (goal >= 0.40) and quiet default / quiet release-1 setting (goal >= 0.95).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from envs.common.files import write_json

BUSY = "while True: pass"


def dream_worker(threads: int, warmup: float, seconds: float) -> float:
    """Frames/s of the default model's cached frame-by-frame rollout (the dream's default sampler)."""
    import torch

    from worldmodel.common.threads import governor
    from worldmodel.dream.verb import DreamConfig, sampler_config
    from worldmodel.model.checkpoint import load_world_model
    from worldmodel.sampling.rollout import CachedRollout

    governor(threads)
    model, _, meta = load_world_model("default")
    masking = str(meta.get("train_config", {}).get("scheduler", "sigmoid"))      # as `maskflow dream` does
    rollout = CachedRollout(model, sampler_config(DreamConfig(), masking), 1)
    gen = torch.Generator().manual_seed(0)
    k, (h, w) = int(meta["window"]), meta["token_grid"]
    n_actions = int(meta["action_space"]["n"])
    context = torch.randint(0, int(meta["vocab_size"]), (1, k - 1, h, w), generator=gen)
    rollout.reset(context, torch.full((1, k - 1), -1, dtype=torch.long))
    t_end, frames, t0 = time.perf_counter() + warmup + seconds, 0, None
    with torch.no_grad():
        while time.perf_counter() < t_end:
            rollout.step(torch.randint(0, n_actions, (1,), generator=gen), gen)
            now = time.perf_counter()
            if t0 is None and now >= t_end - seconds:
                t0, frames = now, 0
            elif t0 is not None:
                frames += 1
    return frames / (time.perf_counter() - t0) if t0 else 0.0


def train_worker(threads: int, warmup: float, seconds: float) -> float:
    """Steps/s of the real training loop (``small``, batch 8 x 16) on random tokens."""
    import csv

    from envs.dataset import write_dataset
    from worldmodel.training.loop import TrainConfig, train

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        eps = [{"id": i, "tokens": rng.integers(0, 1000, (48, 16, 16)), "actions": rng.integers(-1, 3, 48),
                "rewards": np.zeros(48), "terminated": np.zeros(48, bool), "truncated": np.zeros(48, bool)}
               for i in range(8)]
        for split in ("train", "test"):
            write_dataset(Path(tmp) / "tokens", eps, split=split, kind="tokens", env_id="DMLabMaze-v0",
                          action_meanings=["turn_left", "turn_right", "forward"])
        cfg = TrainConfig(data=str(Path(tmp) / "tokens"), out=str(Path(tmp) / "run"), size="small", steps=100000,
                          batch_size=8, clip_len=16, eval_every=10**6, ckpt_every=10**6, log_every=1,
                          max_minutes=(warmup + seconds) / 60, threads=threads, progress=False, tensorboard=False,
                          vocab_size=1000, device="cpu")
        train(cfg)
        with open(Path(tmp) / "run" / "train_log.csv") as f:
            rows = [r for r in csv.DictReader(f)]
        step_s = [float(r["step_s"]) for r in rows if r.get("step_s")]
    t, kept = 0.0, []                                       # drop the warm-up's steps
    for s in step_s:
        t += s
        if t > warmup:
            kept.append(s)
    kept = kept or step_s[-1:]
    return 1.0 / float(np.median(kept)) if kept else 0.0


WORKERS = {"dream": (dream_worker, "frames/s"), "train": (train_worker, "steps/s")}


def measure(workload: str, threads: int, busy: bool, warmup: float, seconds: float) -> float:
    """Run one worker in a fresh process (beside a busy loop when ``busy``); returns its throughput."""
    hog = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
    try:
        out = subprocess.run([sys.executable, __file__, "--worker", workload, "--threads", str(threads),
                              "--warmup", str(warmup), "--seconds", str(seconds)],
                             capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(
                                 Path(__file__).resolve().parents[1])})
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", nargs="+", default=list(WORKERS), choices=list(WORKERS))
    ap.add_argument("--seconds", type=float, default=15.0, help="measured wall time per figure")
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--out", default="", help="write the figures as JSON here")
    ap.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(WORKERS[a.worker][0](a.threads, a.warmup, a.seconds))
        return
    from worldmodel.common.threads import usable_cores

    cores = usable_cores()
    results = {"cores": cores, "seconds": a.seconds, "workloads": {}}
    for name in a.workloads:
        unit = WORKERS[name][1]
        fig = {}
        for label, threads, busy in (("quiet_default", 0, False), ("quiet_release1", cores, False),
                                     ("busy_default", 0, True), ("busy_release1", cores, True)):
            fig[label] = measure(name, threads, busy, a.warmup, a.seconds)
            print(f"{name:6s} {label:15s} threads={threads or 'adapt':<6} {fig[label]:8.2f} {unit}", flush=True)
        fig["busy_over_quiet_default"] = fig["busy_default"] / fig["quiet_default"]
        fig["quiet_default_over_release1"] = fig["quiet_default"] / fig["quiet_release1"]
        fig["busy_release1_over_quiet_release1"] = fig["busy_release1"] / fig["quiet_release1"]
        print(f"{name:6s} beside a busy process the default keeps {fig['busy_over_quiet_default']:.0%} of its quiet "
              f"throughput (goal >= 40 %; release 1's setting kept {fig['busy_release1_over_quiet_release1']:.0%}); "
              f"quiet, it runs at {fig['quiet_default_over_release1']:.0%} of release 1's setting (goal >= 95 %)",
              flush=True)
        results["workloads"][name] = {"unit": unit, **fig}
    if a.out:
        write_json(a.out, results)


if __name__ == "__main__":
    main()
