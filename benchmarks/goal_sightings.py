"""Finding the goal or reaching it: where a policy's goal reaches come from.

    PYTHONPATH=. python benchmarks/goal_sightings.py POLICY [POLICY ...] [--baselines random_walk uniform]
        [--episodes 50] [--seed 100000] [--window 40] [--out FILE.json]

Every actor plays the same *training* mazes (even maze seeds, the same spawns; never the held-out mazes the
RL issue is scored on) twice:

- **as it is**, counting its goal reaches, its turns in place, the cells it visits per episode, its
  *sightings* (steps where the goal's centre comes into view, ``envs.maze.dmlab.goal_in_view``, after at
  least one step out of view) and the share of sightings followed by a reach within ``--window`` steps;
- **with see-and-go**: wherever the goal is in view, the map-reading oracle (``GoalSeekingPolicy``'s shortest
  path) acts instead. This keeps the actor's exploration and gives it a perfect approach, so the gain over
  "as it is" is what better approaching could add, and sightings per 1,000 steps measure exploration.

Prints one line per actor; the paired difference (see-and-go − as it is) comes with a 95 % t interval over
the episodes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np


class SightingProbe:
    """Wraps an actor (``act(obs, info)``): counts sightings and reaches after them; ``see_and_go`` hands the
    step to the oracle while the goal is in view. A respawn (the pose jumping by more than half a cell) marks
    a reach."""

    def __init__(self, inner: Any, meanings: tuple[str, ...], see_and_go: bool = False, window: int = 40):
        from envs.policies import GoalSeekingPolicy

        self.inner, self.see_and_go, self.window = inner, see_and_go, window
        self.oracle = GoalSeekingPolicy(meanings, seed=0, seek_fraction=1.0)
        self.steps = self.in_view = self.sightings = self.converted = self.turns = 0
        self._turn_ids = {i for i, m in enumerate(meanings) if m in ("turn_left", "turn_right")}
        self.cells: list[int] = []          # distinct cells visited, per episode
        self._was_in_view, self._pose, self._open = False, None, None

    def reset(self, seed: int | None = None) -> None:
        if hasattr(self.inner, "reset"):
            self.inner.reset(seed)
        self._was_in_view, self._pose, self._open = False, None, None
        self._visited: set = set()
        self.cells.append(0)

    def act(self, obs=None, info: dict | None = None) -> int:
        from envs.maze.dmlab import goal_in_view

        action = self.inner.act(obs, info)   # always asked, so a stateful actor's state runs on as it would
        if not info or "goal" not in info:
            return action
        pose = np.asarray(info["pose"])[:2]
        if self._pose is not None and np.linalg.norm(pose - self._pose) > 0.5:      # respawned: a reach
            if self._open is not None and self.steps - self._open <= self.window:
                self.converted += 1
            self._open = None
        self._pose = pose
        if self._open is not None and self.steps - self._open > self.window:
            self._open = None
        seen = goal_in_view(info)
        if seen and not self._was_in_view and self._open is None:
            self.sightings += 1
            self._open = self.steps
        self._was_in_view = seen
        self.steps += 1
        self.in_view += seen
        if self.cells:
            self._visited.add(tuple(int(c) for c in info["cell"]))
            self.cells[-1] = len(self._visited)
        action = self.oracle.seek(info) if (self.see_and_go and seen) else action
        self.turns += action in self._turn_ids
        return action


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from agents.policy import goal_rate, policy_actor
    from agents.rl import world_meta
    from envs.common.files import write_json
    from envs.policies import make_policy
    from worldmodel.common.threads import governor

    sys.path.insert(0, str(Path(__file__).parent))
    from rl import t_interval  # benchmarks/rl.py: mean and 95 % t interval

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("policies", nargs="*", help="policy folders (policy.json + policy.safetensors)")
    p.add_argument("--baselines", nargs="*", default=["random_walk", "uniform"],
                   help="collection policies to score beside them (envs.policies names)")
    p.add_argument("--checkpoint", default="default", help="world model whose env the baselines play")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--episode-steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=100000)
    p.add_argument("--window", type=int, default=40, help="steps after a sighting in which a reach counts for it")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="", help="results JSON; a scatter of sightings against approach beside it (.png)")
    a = p.parse_args(argv)
    if a.episodes < 2 or a.window < 1:
        raise SystemExit(f"--episodes must be >= 2 and --window >= 1, got {a.episodes} and {a.window}")
    governor(a.threads)
    base_meta = world_meta(a.checkpoint)
    actors: list[tuple[str, Any, dict]] = []
    for name in a.baselines:
        actors.append((name, lambda name=name: make_policy(name, base_meta["meanings"], seed=0), base_meta))
    for path in a.policies:
        meta = policy_actor(path)[1]
        meta = {**meta, "meanings": tuple(meta["action_meanings"])}
        actors.append((str(path), lambda path=path: policy_actor(path)[0], meta))
    result: dict[str, Any] = {"mazes": "training (even maze seeds)", "episodes": a.episodes, "seed": a.seed,
                              "episode_steps": a.episode_steps, "window": a.window, "actors": {}}
    for name, make, meta in actors:
        row, per_episode = {}, {}
        for go in (False, True):
            probe = SightingProbe(make(), tuple(meta["meanings"]), see_and_go=go, window=a.window)
            played = goal_rate(probe, meta["env_id"], meta.get("env_kwargs"), a.episodes, a.seed, a.episode_steps,
                               actor_seed=0, training_mazes=True)
            key = "see_and_go" if go else "as_is"
            per_episode[key] = np.asarray(played["per_episode_reaches"], np.float64) * 1000.0 / a.episode_steps
            row[key] = {"reaches_per_1000": played["reaches_per_1000"],
                        "per_episode_reaches": played["per_episode_reaches"],
                        "sightings_per_1000": 1000.0 * probe.sightings / max(probe.steps, 1),
                        "reached_after_sighting": probe.converted / max(probe.sightings, 1),
                        "goal_in_view_share": probe.in_view / max(probe.steps, 1),
                        "turn_in_place_share": probe.turns / max(probe.steps, 1),
                        "cells_visited_per_episode": float(np.mean(probe.cells)) if probe.cells else 0.0}
        d = t_interval((per_episode["see_and_go"] - per_episode["as_is"]).tolist())
        row["see_and_go_gain"] = {"mean": d["mean"], "ci95": d["ci95"]}
        result["actors"][name] = row
        s, g = row["as_is"], row["see_and_go"]
        print(f"{name}: {s['reaches_per_1000']:.2f} reaches / 1000; turns in place {s['turn_in_place_share']:.0%}, "
              f"{s['cells_visited_per_episode']:.1f} cells an episode; sightings {s['sightings_per_1000']:.1f} / 1000, "
              f"{s['reached_after_sighting']:.0%} reached within {a.window} steps (the oracle's approach "
              f"{g['reached_after_sighting']:.0%}); with see-and-go {g['reaches_per_1000']:.2f} "
              f"({d['mean']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}])", flush=True)
        if a.out:
            write_json(Path(a.out), result)
    if a.out:
        plot(result, Path(a.out).with_suffix(".png"))
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    """Exploration (sightings per 1,000 steps) against approach (share of sightings reached), one point per
    actor, with curves of equal sightings x share (reaches that follow sightings, per 1,000 steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    xs = np.linspace(0.3, 6, 100)
    for level in (0.5, 1, 2, 3):
        ax.plot(xs, np.clip(level / xs, 0, 1), color="0.85", lw=1)
        ax.text(xs[-1], min(level / xs[-1], 1), f" {level}", color="0.5", fontsize=7, va="center")
    for name, row in result["actors"].items():
        s = row["as_is"]
        short = "/".join(Path(name).parts[-5:-3]) + "/" + Path(name).parts[-2] if "/" in name else name
        ax.scatter(s["sightings_per_1000"], s["reached_after_sighting"], s=18,
                   color="tab:orange" if "/" not in name else "tab:blue")
        ax.annotate(short, (s["sightings_per_1000"], s["reached_after_sighting"]), fontsize=6,
                    xytext=(3, 2), textcoords="offset points")
        if "/" not in name:                  # a baseline with the oracle's approach: what its exploration is worth
            g = row["see_and_go"]
            ax.scatter(g["sightings_per_1000"], g["reached_after_sighting"], s=24, facecolors="none",
                       edgecolors="tab:orange")
            ax.annotate(f"{name} + see-and-go ({g['reaches_per_1000']:.2f} / 1000)",
                        (g["sightings_per_1000"], g["reached_after_sighting"]), fontsize=6, xytext=(3, -8),
                        textcoords="offset points", color="tab:orange")
    ax.set_xlabel("goal sightings per 1,000 steps (exploration)")
    ax.set_ylabel(f"share reached within {result['window']} steps (approach)")
    ax.set_ylim(0, 1)
    ax.set_title(f"{result['episodes']} training-maze episodes; grey: sightings x share, per 1,000 steps; "
                 "hollow: with the oracle's approach",
                 fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
