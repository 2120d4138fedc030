"""Collection throughput of DMLabMaze-v0 at 64×64, resets included, with 1 and 2 workers.

    python benchmarks/collect.py [--episodes 8] [--steps 300]

Prints frames/s per worker count and the ratio against 1 worker (measured in the same process).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from envs.collect import CollectConfig, collect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    results = {}
    for w in args.workers:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            s = collect(CollectConfig(out=f"{d}/data", episodes=args.episodes, steps=args.steps, workers=w,
                                      seed=0, episodes_per_shard=args.episodes), progress=False)
            wall = time.perf_counter() - t0
        results[w] = s["frames"] / wall
        print(f"workers={w}: {s['frames']} frames in {wall:.1f} s (process start-up, resets and HDF5 "
              f"writes included) -> {results[w]:.0f} frames/s")
    if 1 in results:
        for w, fps in results.items():
            print(f"ratio vs 1 worker: workers={w}: {fps / results[1]:.2f}x")


if __name__ == "__main__":
    main()
