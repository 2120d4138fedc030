"""Real-maze curves of several `maskflow rl` recipes side by side, from their runs' `rl_log.csv` files.

    R=benchmarks/results/rl; python benchmarks/rl_curves.py --out $R/curves_prior_free.png \\
        --curve "the table's recipe" "$R/rl_log_sight_seed[01].csv" \\
        --curve "clone of the walk" "$R/rl_log_imitate_seed*.csv" \\
        --curve "clone, prior_kl=0.1" "$R/rl_log_prior_kl_seed*.csv" \\
        --curve "clone, prior_kl=0.03" "$R/rl_log_prior_kl003_seed*.csv" \\
        --curve "clone, prior_kl=0.1 free in view" "$R/rl_log_prior_free_seed*.csv"

Each recipe is drawn as its seeds' mean (thick) over its seeds (thin), goal reaches per 1,000 real steps in the
held-out mazes against real steps; the mean is taken where every seed has a point. Prints the means per budget.
"""

from __future__ import annotations

import argparse
import csv
import glob


def read_curve(path: str) -> dict[int, float]:
    """{real steps: held-out reaches per 1,000 steps} of one run's rl_log.csv."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "eval_reaches_per_1000" not in rows[0]:
        raise SystemExit(f"{path} is not a `maskflow rl` log (no eval_reaches_per_1000 column)")
    return {int(r["real_steps"]): float(r["eval_reaches_per_1000"]) for r in rows}


def main(argv: list[str] | None = None) -> dict[str, dict[int, float]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--curve", nargs=2, action="append", metavar=("LABEL", "GLOB"), required=True,
                    help="a recipe's label and a glob of its seeds' rl_log.csv files")
    ap.add_argument("--out", required=True, help="the PNG to write")
    args = ap.parse_args(argv)
    import matplotlib.pyplot as plt

    from envs.common.video import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.2))
    means: dict[str, dict[int, float]] = {}
    for i, (label, pattern) in enumerate(args.curve):
        paths = sorted(glob.glob(pattern))
        if not paths:
            raise SystemExit(f"--curve {label!r}: no file matches {pattern}")
        curves = [read_curve(p) for p in paths]
        colour = f"C{i}"
        for c in curves:
            steps = sorted(c)
            ax.plot(steps, [c[s] for s in steps], color=colour, alpha=0.3, lw=1)
        common = sorted(set.intersection(*(set(c) for c in curves)))
        means[label] = {s: sum(c[s] for c in curves) / len(curves) for s in common}
        ax.plot(common, [means[label][s] for s in common], color=colour, lw=2.5, marker="o",
                label=f"{label} ({len(curves)} seed{'s' * (len(curves) > 1)})")
        print(f"{label}: " + ", ".join(f"{s}: {m:.2f}" for s, m in means[label].items()))
    ax.set_xlabel("real env steps")
    ax.set_ylabel("goal reaches / 1,000 steps, held-out mazes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, args.out)
    return means


if __name__ == "__main__":
    main()
