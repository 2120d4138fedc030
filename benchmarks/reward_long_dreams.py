"""False alarms of the reward head on long open-loop dreams, paired across checkpoints on the same episodes.

    PYTHONPATH=. python benchmarks/reward_long_dreams.py CKPT [CKPT ...] [--episodes 8] [--frames 360]
        [--seed 300] [--away 4] [--out FILE.json]

``maskflow eval reward_trials=`` scores the head within a few frames of real context. An agent in the dream
meets it further out, where the dream has drifted: blurred yellow walls look like the golden box. Here each
checkpoint dreams ``frames`` frames of the same live held-out episodes (the random walk's actions; episode e
is ``maskflow dream seed=S+e``), and every dreamed frame with no real reward within ``away`` frames (the real
episode, same actions) counts as a false alarm where the reward probability passes the checkpoint's own
threshold (its calibration, else 0.5). Prints the false-alarm share per checkpoint, and each against the
first, paired by episode (mean and 95 % t interval of the per-episode differences). Checkpoints that differ
only in their heads (``maskflow train heads_only=true``) dream the very same frames, so the pairing is exact.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def episode_alarms(checkpoint: str, seed: int, frames: int, away: int, threads: int) -> dict[str, Any]:
    """Dream one live held-out episode; the reward probabilities and the false alarms among them."""
    from worldmodel.dream.verb import DreamConfig, dream

    with tempfile.TemporaryDirectory(prefix="reward-long-") as tmp:
        s = dream(DreamConfig(checkpoint=checkpoint, frames=frames, seed=seed, out=tmp, gif=False, scale=1,
                              progress=False, threads=threads))
    p = np.asarray(s["per_frame"]["reward_prob"], np.float64)                      # (frames,)
    real = np.flatnonzero(np.asarray(s["per_frame"]["real_reward"]) > 0)
    near = np.zeros(len(p), bool)
    for t in real:
        near[max(0, t - away):t + away + 1] = True
    thr = float(s["reward_threshold"])
    fires = (p > thr) & ~near
    return {"seed": seed, "threshold": thr, "real_rewards": real.tolist(), "frames_away": int((~near).sum()),
            "false_alarms": int(fires.sum()), "share": float(fires.sum() / max(1, (~near).sum())),
            "reward_prob": [round(float(x), 4) for x in p]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from envs.common.files import write_json

    sys.path.insert(0, str(Path(__file__).parent))
    from rl import t_interval  # benchmarks/rl.py: mean and 95 % t interval

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--frames", type=int, default=360)
    ap.add_argument("--seed", type=int, default=300)
    ap.add_argument("--away", type=int, default=4, help="frames around a real reward that are not false alarms")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    if a.episodes < 2 or a.frames < 1 or a.away < 0:
        raise SystemExit("--episodes must be >= 2 (an interval needs two), --frames >= 1, --away >= 0")
    rows = {c: [episode_alarms(c, a.seed + e, a.frames, a.away, a.threads) for e in range(a.episodes)]
            for c in a.checkpoints}
    first = a.checkpoints[0]
    result: dict[str, Any] = {"episodes": a.episodes, "frames": a.frames, "seed": a.seed, "away": a.away,
                              "checkpoints": {}}
    for c, eps in rows.items():
        share = [e["share"] for e in eps]
        entry = {"threshold": eps[0]["threshold"], "false_alarm_share": t_interval(share),
                 "false_alarms": sum(e["false_alarms"] for e in eps), "frames_away": sum(e["frames_away"] for e in eps),
                 "per_episode": eps}
        if c != first:
            entry["minus_first"] = t_interval([x - e["share"] for x, e in zip(share, rows[first], strict=True)])
        result["checkpoints"][c] = entry
        line = (f"{c}: threshold {entry['threshold']:.3f}, false alarms {entry['false_alarms']} of "
                f"{entry['frames_away']} frames away from real rewards ({entry['false_alarm_share']['mean']:.3f})")
        if "minus_first" in entry:
            m = entry["minus_first"]
            line += f"; minus {first}: {m['mean']:+.3f} [{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}]"
        print(line, flush=True)
    if a.out:
        write_json(Path(a.out), result)
    return result


if __name__ == "__main__":
    main()
