"""Loop closure, model A against model B on the same mazes, pooled over several evals.

    PYTHONPATH=. python benchmarks/loop_compare.py --a runs/eval_A runs/eval_A_b --b runs/eval_B runs/eval_B_b \
        [--out FILE.json]

Each argument is a ``maskflow eval`` out folder, its ``results.json``, or a loop-results JSON as kept in
``benchmarks/results/loops/`` (``loop_closure``'s output). The evals of one side are pooled in the order given
(e.g. ``loop_trials=24``, then ``seed=24 loop_trials=40``: 64 mazes), and the other side must hold the very
same mazes in the same order. Prints, per loop, both sides' mean return / furthest-view PSNR and the paired
margins A − B of return PSNR and of return − far per maze, with percentile-bootstrap 95 % intervals
(:func:`worldmodel.evaluation.loops.pair_loops`).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from envs.common.errors import ConfigError
from envs.common.files import write_json
from worldmodel.evaluation.evaluate import read_results
from worldmodel.evaluation.loops import pair_loops
from worldmodel.evaluation.stats import format_margin


def read_loops(path: str) -> dict[str, Any]:
    """Loop results from an eval folder, its results.json, or a loop-results JSON."""
    d = read_results(path)
    d = d.get("loops", d) if isinstance(d, dict) and "settings" in d else d
    if not isinstance(d, dict) or not isinstance(d.get("loops"), dict):
        raise ConfigError(f"{path}: holds no loop-closure results (run `maskflow eval loops=[...]`)")
    return d


def compare(a: list[str], b: list[str], seed: int = 0) -> dict[str, Any]:
    """Means per side and the paired margins A − B, per loop both sides hold."""
    sides = [[read_loops(p) for p in ps] for ps in (a, b)]
    paired = pair_loops(*sides, seed=seed)
    out: dict[str, Any] = {"a": a, "b": b, "loops": {}}
    for name, m in paired.items():
        means = [{k: float(np.mean([t[k] for r in s for t in r["loops"][name]["per_trial"]]))
                  for k in ("return_psnr", "far_psnr", "ceiling_psnr")} for s in sides]
        out["loops"][name] = {"a": means[0], "b": means[1], **m}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--a", nargs="+", required=True, help="model A's evals (folders or JSON), pooled in order")
    p.add_argument("--b", nargs="+", required=True, help="model B's evals on the same mazes, in the same order")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--out", default="", help="also write the comparison here as JSON")
    args = p.parse_args()
    res = compare(args.a, args.b, args.seed)
    for name, r in res["loops"].items():
        print(f"{name} ({r['return_psnr']['n']} mazes): A {r['a']['return_psnr']:.2f} / {r['a']['far_psnr']:.2f} dB, "
              f"B {r['b']['return_psnr']:.2f} / {r['b']['far_psnr']:.2f} dB (return / far; ceiling "
              f"{r['a']['ceiling_psnr']:.2f}); A − B return {format_margin(r['return_psnr'])}, wins "
              f"{r['return_psnr']['wins']:.0%}; return − far {format_margin(r['return_minus_far'])}")
    if args.out:
        write_json(args.out, res)


if __name__ == "__main__":
    main()
