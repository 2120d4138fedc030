"""Dream-env benchmark: env steps/s of MaskFlowDreamEnv and of MaskFlowDreamVectorEnv at N = 1, 16, 64.

    PYTHONPATH=. python benchmarks/dream_env.py                                  # the default model
    PYTHONPATH=. python benchmarks/dream_env.py --checkpoint DIR --steps 20 --sizes 1 4   # smoke size
    PYTHONPATH=. python benchmarks/dream_env.py --decode-ab --sizes 16 --rounds 4         # bf16 vs fp32 decoding

Each measurement resets (context from ``--data`` or live episodes), takes ``--warmup`` untimed steps,
then times ``--steps`` steps with seeded random actions (autoresets included, as in RL). Reported
with the batch size, NFE per frame, milliseconds per batched step, device, CPU threads and CPU model,
plus the speed-up of each vector size over the single env. ``--out FILE`` writes the results as JSON.

``--decode-ab`` times instead, in one vector env per size, the frames decoded at the dream's precision (bf16
where the CPU has it) against the same env decoding in fp32, alternating ``--rounds`` times, and prints the
ratio of each round's pair: what decoding at the dream's precision gains (the world model runs as set in both).
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import numpy as np
import torch


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_single(checkpoint: str, steps: int, warmup: int, seed: int, **kw: Any) -> dict[str, Any]:
    """Steps/s of one MaskFlowDreamEnv."""
    from worldmodel.dream.env import MaskFlowDreamEnv

    env = MaskFlowDreamEnv(checkpoint, **kw)
    try:
        rng = np.random.default_rng(seed)
        env.reset(seed=seed)
        nfe = 0

        def run(n: int) -> None:
            nonlocal nfe
            for _ in range(n):
                _, _, term, trunc, info = env.step(int(rng.integers(env.action_space.n)))
                nfe += info["nfe"]
                if term or trunc:
                    env.reset()

        run(warmup)
        nfe = 0
        t0 = time.perf_counter()
        run(steps)
        dt = time.perf_counter() - t0
        return {"kind": "single", "n": 1, "env_steps_per_s": steps / dt, "ms_per_step": 1000 * dt / steps,
                "nfe_per_frame": nfe / steps}
    finally:
        env.close()


def time_vector(checkpoint: str, n: int, steps: int, warmup: int, seed: int, **kw: Any) -> dict[str, Any]:
    """Env steps/s (N × batched steps / s) of a MaskFlowDreamVectorEnv of N dreams."""
    from worldmodel.dream.vector_env import MaskFlowDreamVectorEnv

    venv = MaskFlowDreamVectorEnv(n, checkpoint, **kw)
    try:
        venv.action_space.seed(seed)
        venv.reset(seed=seed)
        for _ in range(warmup):
            venv.step(venv.action_space.sample())
        nfe = frames = 0
        t0 = time.perf_counter()
        for _ in range(steps):
            _, _, _, _, info = venv.step(venv.action_space.sample())
            imagined = info["_reward_prob"]                  # envs that dreamed a frame (not autoresetting)
            nfe += int(info["nfe"][imagined].sum())
            frames += int(imagined.sum())
        dt = time.perf_counter() - t0
        return {"kind": "vector", "n": n, "env_steps_per_s": n * steps / dt, "ms_per_step": 1000 * dt / steps,
                "nfe_per_frame": nfe / max(1, frames)}
    finally:
        venv.close()


def time_decode_ab(checkpoint: str, n: int, steps: int, warmup: int, seed: int, rounds: int,
                   **kw: Any) -> dict[str, Any]:
    """Env steps/s of one vector env of ``n`` dreams decoding at its precision and (the baseline) in fp32,
    alternating ``rounds`` times; per round the ratio precision / fp32."""
    from worldmodel.dream.vector_env import MaskFlowDreamVectorEnv

    venv = MaskFlowDreamVectorEnv(n, checkpoint, **kw)
    core = venv.core
    as_set = core.frames

    def fp32_frames(tokens: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return core.tokenizer.decode(tokens, dtype=torch.float32).cpu().numpy()

    try:
        venv.action_space.seed(seed)
        venv.reset(seed=seed)
        pairs = []
        for r in range(rounds):
            rate = {}
            for name, frames in (("fp32", fp32_frames), ("precision", as_set)):
                core.frames = frames
                for _ in range(warmup):
                    venv.step(venv.action_space.sample())
                t0 = time.perf_counter()
                for _ in range(steps):
                    venv.step(venv.action_space.sample())
                rate[name] = n * steps / (time.perf_counter() - t0)
            pairs.append({"round": r, **rate, "ratio": rate["precision"] / rate["fp32"]})
            print(f"N={n} round {r}: decode at the dream's precision ({core.rollout.dtype}) {rate['precision']:.1f} "
                  f"env steps/s, fp32 decode {rate['fp32']:.1f}: {pairs[-1]['ratio']:.2f}x", flush=True)
        ratios = [p_["ratio"] for p_ in pairs]
        return {"kind": "decode_ab", "n": n, "dtype": str(core.rollout.dtype), "rounds": pairs,
                "ratio_median": float(np.median(ratios)), "ratio_min": min(ratios), "ratio_max": max(ratios)}
    finally:
        core.frames = as_set
        venv.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="default", help="world-model directory (default: the shipped model)")
    p.add_argument("--data", default=None, help="dataset for context (default: live episodes of the real env)")
    p.add_argument("--steps", type=int, default=200, help="timed env steps (batched steps for the vector env)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 64], help="vector env sizes N")
    p.add_argument("--steps-per-frame", type=int, default=None, help="unmasking steps per frame (default: the dream's)")
    p.add_argument("--sampler", default="mgm")
    p.add_argument("--max-episode-steps", type=int, default=300)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = adapt to the load)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="write the results as JSON here")
    p.add_argument("--decode-ab", action="store_true", help="time decoding at the dream's precision against fp32")
    p.add_argument("--rounds", type=int, default=4, help="alternations of --decode-ab")
    a = p.parse_args(argv)
    from envs.common.errors import CheckpointError
    from worldmodel.model.checkpoint import resolve_checkpoint

    try:
        resolve_checkpoint(a.checkpoint)
    except CheckpointError as e:
        p.error(f"{e}\n(pass --checkpoint DIR until a default model is installed)")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    kw = dict(data=a.data, steps_per_frame=a.steps_per_frame, sampler=a.sampler, device=a.device,
              max_episode_steps=a.max_episode_steps, timing_info=False)
    hw = {"device": a.device, "torch_threads": torch.get_num_threads(), "cpu": cpu_name(),
          "cuda": torch.cuda.get_device_name() if a.device.startswith("cuda") else None}
    if a.decode_ab:
        rows = [time_decode_ab(a.checkpoint, n, a.steps, a.warmup, a.seed, a.rounds, **kw) for n in a.sizes]
        for r in rows:
            print(f"N={r['n']}: decoding in {r['dtype']} instead of fp32: {r['ratio_median']:.2f}x median "
                  f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) over {len(r['rounds'])} rounds")
    else:
        rows = [time_single(a.checkpoint, a.steps, a.warmup, a.seed, **kw)]
        rows += [time_vector(a.checkpoint, n, a.steps, a.warmup, a.seed, **kw) for n in a.sizes]
        single = rows[0]["env_steps_per_s"]
        for r in rows:
            r["ratio_vs_single"] = r["env_steps_per_s"] / single
        print(f"dream env throughput — {a.checkpoint} on {hw['device']} ({hw['cpu']}, {hw['torch_threads']} threads)")
        print(f"{'env':>8} {'N':>4} {'env steps/s':>12} {'ms/step':>9} {'NFE/frame':>10} {'vs single':>10}")
        for r in rows:
            print(f"{r['kind']:>8} {r['n']:>4} {r['env_steps_per_s']:>12.1f} {r['ms_per_step']:>9.1f} "
                  f"{r['nfe_per_frame']:>10.2f} {r['ratio_vs_single']:>9.2f}x")
    result = {"checkpoint": a.checkpoint, "hardware": hw, "settings": vars(a), "results": rows}
    if a.out:
        from envs.common.files import write_json

        write_json(a.out, result)
    return result


if __name__ == "__main__":
    main()
