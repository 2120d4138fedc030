"""Choose the temperature a policy acts at in the real maze (``act_temperature`` of ``maskflow rl``).

    PYTHONPATH=. python benchmarks/act_temperature.py POLICY [POLICY ...] [--temperatures 0.25 0.5 0.75 1]
        [--episodes 50] [--seed 200000] [--out FILE.json]

Every policy is played at every temperature on the same *training* mazes (even maze seeds; episode e of
every row plays maze 2 (seed + e) with the same spawn), so the choice never looks at the held-out mazes that
the RL issue's rows are scored on. Prints goal reaches per 1,000 steps per policy and temperature, paired
against temperature 1 (the sampling PPO trained with): the mean and 95 % t interval of the per-episode
differences. A policy saved with a frame stack or an action repeat plays with them (``agents.policy.policy_actor``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def per_episode(actor, meta: dict, episodes: int, seed: int, episode_steps: int) -> np.ndarray:
    """Goal reaches in each of ``episodes`` training-maze episodes (same mazes and spawns for every actor)."""
    from agents.policy import goal_rate

    played = goal_rate(actor, meta["env_id"], meta.get("env_kwargs"), episodes, seed, episode_steps, actor_seed=0,
                       training_mazes=True)
    return np.asarray(played["per_episode_reaches"], np.float64)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from agents.policy import PolicyActor, load_policy
    from envs.common.files import write_json
    from worldmodel.common.threads import governor

    sys.path.insert(0, str(Path(__file__).parent))
    from rl import t_interval  # benchmarks/rl.py: mean and 95 % t interval

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("policies", nargs="+", help="policy folders (policy.json + policy.safetensors)")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--episode-steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=200000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    if any(t <= 0 for t in a.temperatures):
        raise SystemExit(f"--temperatures must all be > 0, got {a.temperatures}")
    governor(a.threads)
    temps = sorted(set(a.temperatures) | {1.0})
    result: dict[str, Any] = {"mazes": "training (even maze seeds)", "episodes": a.episodes, "seed": a.seed,
                              "episode_steps": a.episode_steps, "policies": {}}
    for path in a.policies:
        policy, meta = load_policy(path)
        k, hold = int(meta.get("frame_stack", 1)), int(meta.get("action_repeat", 1))
        reaches = {t: per_episode(PolicyActor(policy, False, k, t, hold), meta, a.episodes, a.seed, a.episode_steps)
                   for t in temps}
        rows = {}
        for t in temps:
            d = t_interval(((reaches[t] - reaches[1.0]) * 1000.0 / a.episode_steps).tolist())
            lo, hi = d["ci95"]
            rows[str(t)] = {"reaches_per_1000": float(reaches[t].sum() * 1000.0 / (a.episodes * a.episode_steps)),
                            "vs_t1": d["mean"], "vs_t1_ci95": [lo, hi]}
            print(f"{path}  T={t:<5}  {rows[str(t)]['reaches_per_1000']:.2f} / 1000  "
                  f"vs T=1: {d['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}]", flush=True)
        result["policies"][str(path)] = rows
    if a.out:
        write_json(Path(a.out), result)
    print(json.dumps({p_: {t: round(r["reaches_per_1000"], 2) for t, r in rows.items()}
                      for p_, rows in result["policies"].items()}))
    return result


if __name__ == "__main__":
    main()
