"""Does the dream show the goal again where the real agent turns back to it? The check behind ``sight_starts``.

    PYTHONPATH=. python benchmarks/sight_returns.py --checkpoint default --data runs/tokens_goal2 \
        --probe runs/sight_probe [--windows 96] [--frames 16] [--threads 1] [--out FILE.json] [--sheet PNG]

Three kinds of held-out windows (the test split of a token dataset whose episodes keep their poses), each dreamed
on from its real context with the real actions that followed, for up to ``--frames`` frames (cut at a real
reach, which moves the agent):

- **returns**: the context saw the goal and its last frame does not (the dream env's ``sight_starts`` windows),
  and the real goal comes back into view within the frames dreamed. The model's window holds the goal, so a
  dream that is right shows it again.
- **new sightings**: the context never saw the goal, and the real goal comes into view within the frames
  dreamed. The dream cannot know what it never saw: its rate here is what it makes up.
- **in view** (for scale): the goal is in view at the context's last frame and still in view later; a dream
  that is right keeps showing it (the approach that ``reward_starts`` dreams teach).

On each dreamed frame the geometry says whether the real goal's centre is in view
(``envs.maze.dmlab.goal_in_view``), and the sighting probe reads the dreamed frame and the real frame through
the tokenizer (the probe's ceiling). Prints, per kind, the probe's recall on frames with the goal really in
view (dream and real-decoded) and its false alarms on the others, each as a mean over windows with a 95 %
bootstrap interval.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def windows(data: str, split: str, length: int, frames: int) -> dict[str, list[tuple[int, int]]]:
    """(episode, last context frame) of every return and new-sighting window (module docstring) of ``data``."""
    from envs.dataset import EpisodeDataset
    from envs.maze.dmlab import goal_lost_ends, goal_seen

    ds = EpisodeDataset(data, split)
    out: dict[str, list[tuple[int, int]]] = {"in view": [], "returns": [], "new sightings": []}
    try:
        for i in range(len(ds)):
            ep = ds.arrays(i, ("poses", "rewards"))
            seen = goal_seen(ep, f"benchmarks/sight_returns.py (dataset {data}, {split})")
            reached = np.asarray(ep["rewards"]) > 0
            lost = np.zeros(len(seen), bool)
            lost[goal_lost_ends(seen, reached, length)] = True     # the dream env's sight_starts windows
            for end in range(length - 1, len(seen) - frames):
                s = end - length + 1
                first_reach = np.flatnonzero(reached[end + 1:end + 1 + frames])
                ahead = seen[end + 1:end + 1 + (first_reach[0] if first_reach.size else frames)]
                if reached[s + 1:end + 1].any() or not ahead.any():
                    continue                    # (a reach in the context, or in view only after a reach)
                kind = "in view" if seen[end] else "returns" if lost[end] else "new sightings"
                out[kind].append((i, end))
    finally:
        ds.close()
    return out


def interval(values: list[float], rng: np.random.Generator, n: int = 2000) -> list[float]:
    """Mean and 95 % bootstrap interval over windows."""
    v = np.asarray(values, float)
    boots = v[rng.integers(0, len(v), (n, len(v)))].mean(1)
    return [float(v.mean()), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]


def run(checkpoint: str, data: str, probe: str, n_windows: int = 96, frames: int = 16, steps_per_frame: int = 4,
        seed: int = 0, threads: int = 1, sheet: str = "", sheet_rows: int = 4) -> dict[str, Any]:
    import torch

    from agents.sighting import load_sight_probe, predict
    from envs.dataset import EpisodeDataset
    from envs.maze.dmlab import goal_seen
    from worldmodel.dream.env import MaskFlowDreamEnv
    from worldmodel.tokenizer.codec import decode_tokens

    torch.set_num_threads(threads)
    env = MaskFlowDreamEnv(checkpoint, context="given", steps_per_frame=steps_per_frame, max_episode_steps=None,
                           threads=None)
    length = env.core.context_length
    net, meta = load_sight_probe(probe)
    threshold = float(meta["threshold"])
    rng = np.random.default_rng(seed)
    ds = EpisodeDataset(data, "test")
    result: dict[str, Any] = {"checkpoint": checkpoint, "data": data, "probe": probe, "frames": frames,
                              "steps_per_frame": steps_per_frame, "seed": seed, "context": length, "kinds": {}}
    pictures: list[np.ndarray] = []        # per return window: (2 y x c) rows, real above dream
    try:
        for kind, found in windows(data, "test", length, frames).items():
            pick = rng.choice(len(found), min(n_windows, len(found)), replace=False)
            rec_dream, rec_real, fa_dream, fa_real = [], [], [], []
            for k in pick:
                i, end = found[k]
                ep = ds.episode(i)
                s = end - length + 1
                seen = goal_seen(ep, "benchmarks/sight_returns.py")
                reached = np.flatnonzero(np.asarray(ep["rewards"][end + 1:end + 1 + frames]) > 0)
                f = frames if not reached.size else int(reached[0])        # frames up to a real reach
                env.reset(seed=int(k), options={"context_tokens": np.asarray(ep["tokens"][s:end + 1], np.int64),
                                                "context_actions": np.asarray(ep["actions"][s:end + 1], np.int64)})
                dreamed = np.stack([env.step(int(a))[0] for a in ep["actions"][end + 1:end + 1 + f]])
                real = decode_tokens(env.core.tokenizer, np.asarray(ep["tokens"][end + 1:end + 1 + f], np.int64))
                truth = seen[end + 1:end + 1 + f]
                if kind == "returns" and len(pictures) < sheet_rows:
                    tail = decode_tokens(env.core.tokenizer,
                                         np.asarray(ep["tokens"][max(end - 3, 0):end + 1], np.int64))
                    tail = np.concatenate([np.zeros((4 - len(tail), *real.shape[1:]), np.uint8), tail])
                    pad = np.zeros((frames - f, *real.shape[1:]), np.uint8)
                    pictures.append(np.stack([np.concatenate([*tail, *real, *pad], 1),
                                              np.concatenate([*tail, *dreamed, *pad], 1)]))
                p_dream = predict(net, dreamed) >= threshold
                p_real = predict(net, real) >= threshold
                rec_dream.append(float(p_dream[truth].mean()))
                rec_real.append(float(p_real[truth].mean()))
                if (~truth).any():
                    fa_dream.append(float(p_dream[~truth].mean()))
                    fa_real.append(float(p_real[~truth].mean()))
            result["kinds"][kind] = {
                "windows": len(pick), "found": len(found),
                "recall_dream": interval(rec_dream, rng), "recall_real_decoded": interval(rec_real, rng),
                "recall_dream_minus_real": interval([a - b for a, b in zip(rec_dream, rec_real, strict=True)], rng),
                "false_alarms_dream": interval(fa_dream, rng), "false_alarms_real_decoded": interval(fa_real, rng),
                # per window, in the order drawn (the same windows for the same seed and context length: pair them)
                "windows_drawn": [list(found[k]) for k in pick], "per_window_recall_dream": rec_dream}
            r = result["kinds"][kind]
            print(f"{kind}: {r['windows']} windows of {r['found']}; goal back in view, probe sees it on the dream "
                  f"{r['recall_dream'][0]:.2f} [{r['recall_dream'][1]:.2f}, {r['recall_dream'][2]:.2f}], on the real "
                  f"frames {r['recall_real_decoded'][0]:.2f}; false alarms dream {r['false_alarms_dream'][0]:.3f}, "
                  f"real {r['false_alarms_real_decoded'][0]:.3f}", flush=True)
    finally:
        ds.close()
        env.close()
    if sheet and pictures:
        import imageio.v3 as iio

        # rows: real, dream, real, dream ...; columns: the context's last 4 frames, then the frames dreamed
        iio.imwrite(sheet, np.concatenate([row for pair in pictures for row in pair], 0))
        result["sheet"] = sheet
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--data", required=True, help="a token dataset of a maze env whose episodes keep their poses")
    ap.add_argument("--probe", required=True, help="a sighting probe folder (python -m agents.sighting)")
    ap.add_argument("--windows", type=int, default=96)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps-per-frame", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="")
    ap.add_argument("--sheet", default="", help="PNG: real above dream for the first return windows")
    ap.add_argument("--pair-with", default="", help="an earlier --out JSON of the same windows: paired differences")
    a = ap.parse_args(argv)
    other = pairable(a.pair_with) if a.pair_with else None          # refused before the run, not after it
    res = run(a.checkpoint, a.data, a.probe, a.windows, a.frames, a.steps_per_frame, a.seed, a.threads, a.sheet)
    try:
        if other is not None:
            res["paired_with"] = {"file": a.pair_with, "kinds": paired(res, other)}
            for kind, d in res["paired_with"]["kinds"].items():
                print(f"{kind}: dream recall, this - {a.pair_with}: {d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}]")
    finally:                                     # written even when the pairing fails: the run is kept
        if a.out:
            from envs.common.files import write_json

            write_json(a.out, res)
    return res


def pairable(path: str) -> dict[str, Any]:
    """An earlier ``--out`` JSON that keeps its per-window values (the windows it drew, their recalls)."""
    try:
        other = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"--pair-with {path}: cannot read it as an earlier --out JSON ({e})") from None
    kinds = other.get("kinds") or {}
    if not kinds or any("windows_drawn" not in r or "per_window_recall_dream" not in r for r in kinds.values()):
        raise SystemExit(f"--pair-with {path}: it keeps no per-window values (written by an earlier version); "
                         "measure that checkpoint again with this one")
    return other


def paired(a: dict[str, Any], b: dict[str, Any], seed: int = 0) -> dict[str, list[float]]:
    """Per kind, the mean of a's dream recall minus b's over the windows both drew, with a 95 % bootstrap
    interval; refused where the two did not draw the same windows."""
    out = {}
    for kind, ra in a["kinds"].items():
        rb = b["kinds"].get(kind)
        if rb is None or rb.get("windows_drawn") != ra["windows_drawn"]:
            raise SystemExit(f"{kind}: the two runs drew other windows (another seed, dataset or context length)")
        diff = [x - y for x, y in zip(ra["per_window_recall_dream"], rb["per_window_recall_dream"], strict=True)]
        out[kind] = interval(diff, np.random.default_rng(seed))
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
