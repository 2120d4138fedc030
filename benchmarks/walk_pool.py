"""Row (c), the exploration random walk, on many walk seeds, against row (a) of an RL results file.

    PYTHONPATH=. python benchmarks/walk_pool.py --results benchmarks/results/rl/results.json --seeds 40 \
        --out benchmarks/results/rl/walk_pool.json

In ``benchmarks/rl.py`` every seed scores the walk on the same held-out mazes; only the walk's own random draws
differ from seed to seed, so (c) does not depend on the training seed. One seed's (c) is 15,000 steps and ~11 goal
reaches: its counting noise, tripled, is about half the spread of the paired (a) − 3 × (c). This scores the walk for
walk seeds 0..K−1 with the settings the file's baselines were made for (seed s must give the file's own (c) of seed
s, or it stops: the maze or the walk changed since), and compares (a)'s mean over the file's seeds with 3 × the
walk's mean over the K seeds (Welch's interval: the two are no longer paired). Resumes seed by seed: OUT keeps each
seed's score and what it was made for, and is redone only for seeds it lacks. Writes OUT (JSON) and prints the
comparison.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

# what the walk's score depends on, of what a seed's baselines were made for
WALK_KEYS = ("checkpoint", "episode_steps", "eval_episodes", "eval_seed")


def rl_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_rl", Path(__file__).with_name("rl.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def walk_settings(results: dict[str, Any], path: str) -> dict[str, Any]:
    """The walk settings every seed's baselines in ``results`` were made for; an error if they differ."""
    bench = rl_bench()
    made = [bench.filled(b.get("made_for") or {}) for b in results["baselines_per_seed"].values()]
    if not made:
        raise SystemExit(f"{path}: no baselines_per_seed to take the walk's settings from")
    walk = [{k: m[k] for k in WALK_KEYS} for m in made]
    if any(w != walk[0] for w in walk):
        raise SystemExit(f"{path}: its seeds' baselines were made for different walk settings ({WALK_KEYS})")
    return walk[0]


def welch(a: list[float], c: list[float], factor: float) -> dict[str, Any]:
    """mean(a) − factor × mean(c) with Welch's 95 % interval (unpaired, unequal variances)."""
    from scipy import stats

    a_, c_ = np.asarray(a, np.float64), factor * np.asarray(c, np.float64)
    test = stats.ttest_ind(a_, c_, equal_var=False)
    ci = test.confidence_interval(0.95)
    return {"mean": float(a_.mean() - c_.mean()), "ci95": [float(ci.low), float(ci.high)], "df": float(test.df)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from agents.policy import goal_rate
    from agents.rl import world_meta
    from envs.common.files import read_json, write_json
    from envs.policies import make_policy

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True, help="an RL results file of benchmarks/rl.py")
    p.add_argument("--seeds", type=int, default=40, help="walk seeds 0..K-1 (at least 2)")
    p.add_argument("--out", required=True, help="the pooled walk's JSON (resumed if it exists)")
    p.add_argument("--factor", type=float, default=3.0, help="the goal's multiple of (c): (a) >= factor x (c)")
    args = p.parse_args(argv)
    if args.seeds < 2:
        raise SystemExit(f"--seeds {args.seeds}: at least 2 walk seeds are needed for an interval")
    results = read_json(args.results, "RL results")
    for key in ("curves", "baselines_per_seed", "real_steps_N"):
        if key not in results:
            raise SystemExit(f"{args.results}: not a results file of benchmarks/rl.py (no {key})")
    settings = walk_settings(results, args.results)
    out = Path(args.out)
    pool = read_json(out, "pooled walk") if out.exists() else {"made_for": settings, "per_seed": {}}
    if pool.get("made_for") != settings:
        raise SystemExit(f"{out}: made for {pool.get('made_for')}, not for {args.results}'s walk settings "
                         f"{settings}; give another --out")
    meta = world_meta(settings["checkpoint"])
    table_c = {s: b["random_walk"][0]["reaches_per_1000"] for s, b in results["baselines_per_seed"].items()}
    for s in range(args.seeds):
        if str(s) in pool["per_seed"]:
            continue
        actor = make_policy("random_walk", meta["meanings"], seed=s)
        r = goal_rate(actor, meta["env_id"], meta["env_kwargs"], settings["eval_episodes"], settings["eval_seed"],
                      settings["episode_steps"], actor_seed=s)
        if str(s) in table_c and abs(r["reaches_per_1000"] - table_c[str(s)]) > 1e-9:
            raise SystemExit(f"walk seed {s} scores {r['reaches_per_1000']:.4f} here and {table_c[str(s)]:.4f} in "
                             f"{args.results}: the maze or the walk changed since, so this pool is not its (c)")
        pool["per_seed"][str(s)] = {k: r[k] for k in ("reaches_per_1000", "reaches", "steps")}
        write_json(out, pool)  # one seed at a time: a stopped run resumes at the next
    walk = [pool["per_seed"][str(s)]["reaches_per_1000"] for s in range(args.seeds)]
    n = results["real_steps_N"]
    a = [curve[-1]["eval_reaches_per_1000"] for curve in results["curves"].values() if curve[-1]["real_steps"] == n]
    summary = {
        "results": str(args.results), "walk_seeds": args.seeds, "a_seeds": len(a), "real_steps_N": n,
        "a_mean": float(np.mean(a)), "walk_mean": float(np.mean(walk)),
        "walk_sd": float(np.std(walk, ddof=1)), "ratio": float(np.mean(a) / max(np.mean(walk), 1e-12)),
        f"a_minus_{args.factor:g}c": welch(a, walk, args.factor),
        "a_minus_c_paired_by": "nothing (Welch): the walk's seeds are not the training seeds",
    }
    pool["summary"] = summary
    write_json(out, pool)
    print(summary)
    return pool


if __name__ == "__main__":
    main()
