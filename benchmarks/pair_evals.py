"""Two finished `maskflow eval` reports of the same videos, A against B, paired video by video.

    PYTHONPATH=. python benchmarks/pair_evals.py runs/eval_bar_A runs/eval_bar_B [--out FILE.json]

`maskflow eval pair_with=B` pairs a new eval with an earlier one while it runs; this pairs two evals that
have both run already (two candidates scored against the same shipped baseline, say). Each argument is an
eval's out folder or its results.json; both must have scored the same clips (same data, split, seed,
num_videos and longest horizon), which is checked before anything is computed. Prints, for every dreamed
row both hold, the mean PSNR margin A − B per band with its percentile-bootstrap 95 % interval and the
share of videos A wins, as `maskflow eval` does (:func:`worldmodel.evaluation.stats.pair_rows`). Loops are
paired by ``benchmarks/loop_compare.py``.
"""

from __future__ import annotations

import argparse
from typing import Any

from envs.common.errors import ConfigError
from envs.common.files import write_json
from worldmodel.evaluation.evaluate import read_pairable
from worldmodel.evaluation.stats import format_margin, longest_rows, pair_rows, same_videos


def pair(a: str, b: str, seed: int = 0) -> dict[str, Any]:
    """Paired margins A − B of every dreamed row (at its longest horizon) both evals hold."""
    ra, rb = read_pairable(a, "A: "), read_pairable(b, "B: ")
    same_videos(ra, rb, ("A", "B"))
    rows_a, rows_b = longest_rows(ra["rows"]), longest_rows(rb["rows"])
    shared = [k for k, r in rows_a.items() if r["mode"] != "baseline" and k in rows_b]
    if not shared:
        raise ConfigError(f"A ({sorted(rows_a)}) and B ({sorted(rows_b)}) hold no dreamed row in common")
    margins = [m for k in shared for m in pair_rows(rows_a[k], rows_b[k], seed)]
    return {"a": a, "b": b, "videos": len(ra["videos"]), "margins": margins}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", help="eval A: its out folder or results.json")
    p.add_argument("b", help="eval B, of the same videos")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--out", default="", help="also write the margins here as JSON")
    args = p.parse_args()
    res = pair(args.a, args.b, args.seed)
    print(f"A = {args.a}\nB = {args.b}\n{res['videos']} videos; PSNR margin A − B [95 % bootstrap], share A wins")
    for m in res["margins"]:
        print(f"  {m['row']:<12} frames {m['band']:<8} {format_margin(m)}  wins {m['wins']:.0%}   "
              f"new views {format_margin(m['new_view'])}")
    if args.out:
        write_json(args.out, res)


if __name__ == "__main__":
    main()
