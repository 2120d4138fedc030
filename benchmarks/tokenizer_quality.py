"""Tokenizers side by side on held-out frames: PSNR, SSIM and token stability per episode, paired.

    PYTHONPATH=. python benchmarks/tokenizer_quality.py --tokenizers default runs/tok_r2_all/tokenizer \
        runs/tok_r2_stab/tokenizer --data runs/data_rw1 runs/data_goal2 --split test \
        --out benchmarks/results/tokenizer_downstream/quality.json

Every tokenizer encodes and decodes the same episodes (each episode is a maze the tokenizers may not have seen),
scored per episode by ``worldmodel.tokenizer.evaluation.evaluate_tokenizer``. Each later tokenizer is paired with
the first, episode by episode: mean difference with a percentile-bootstrap 95 % interval, as ``maskflow eval``
pairs its videos. Episodes, not frames, are the unit: frames of one episode are far from independent.
``default`` names the shipped model's tokenizer. ``--samples PNG`` draws 8 frames (one per episode, spread over
the set) real on top, then each tokenizer's reconstruction below, at 3x so brick joints and floor tiles show.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

METRICS = ("psnr", "ssim", "stability", "stability_moved", "stability_static")


def episodes(data: list[str], split: str, limit: int) -> list[dict[str, np.ndarray]]:
    """Every ``split`` episode of each dataset (up to ``limit`` per dataset, 0 = all), frames and actions."""
    from envs.dataset import EpisodeDataset

    out = []
    for root in data:
        ds = EpisodeDataset(root, split=split)
        try:
            n = len(ds.lengths()) if limit <= 0 else min(limit, len(ds.lengths()))
            for e in range(n):
                ep = ds.episode(e)
                out.append({"frames": np.asarray(ep["frames"], np.uint8), "actions": np.asarray(ep["actions"]),
                            "name": f"{root}:{int(ep['id'])}"})
        finally:
            ds.close()
    return out


def save_samples(tokenizers: dict[str, object], eps: list[dict[str, np.ndarray]], path: Path, n: int = 8) -> None:
    """PNG: one frame from each of ``n`` episodes spread over ``eps`` (mid-episode), real above every tokenizer's
    reconstruction, each row labelled; written atomically."""
    from PIL import Image, ImageDraw

    from envs.common.files import atomic_write

    picks = np.linspace(0, len(eps) - 1, min(n, len(eps))).astype(int)
    real = np.stack([eps[i]["frames"][len(eps[i]["frames"]) // 2] for i in picks])       # (n, y, x, c)
    rows = [("real", real)] + [(name, tok.decode(tok.encode(torch.from_numpy(real))).cpu().numpy())
                               for name, tok in tokenizers.items()]
    scale, label = 3, 14
    tiles = []
    for name, imgs in rows:
        strip = np.concatenate(list(np.asarray(imgs, np.uint8)), axis=1).repeat(scale, 0).repeat(scale, 1)
        head = Image.new("RGB", (strip.shape[1], label), "white")
        ImageDraw.Draw(head).text((2, 1), name, fill="black")
        tiles += [np.asarray(head), strip]
    sheet = np.concatenate(tiles, axis=0)
    with atomic_write(path) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizers", nargs="+", required=True, help="tokenizer dirs (or default); the first is the "
                                                                   "reference every other is paired with")
    ap.add_argument("--data", nargs="+", required=True, help="frames datasets")
    ap.add_argument("--split", default="test")
    ap.add_argument("--episodes", type=int, default=0, help="at most this many episodes per dataset (0 = all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, help="results JSON")
    ap.add_argument("--samples", default="", help="also draw real frames above each reconstruction to this PNG")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from envs.common.files import write_json
    from worldmodel.evaluation.stats import paired_margin
    from worldmodel.tokenizer.evaluation import evaluate_tokenizer
    from worldmodel.tokenizer.files import load_tokenizer, named_tokenizer

    eps = episodes(args.data, args.split, args.episodes)
    if not eps:
        raise SystemExit(f"--data {args.data}: no {args.split} episodes")
    toks = {name: load_tokenizer(named_tokenizer(name)) for name in args.tokenizers}
    if args.samples:
        save_samples(toks, eps, Path(args.samples))
    per: dict[str, dict[str, list[float]]] = {}
    summary: dict[str, dict[str, float]] = {}
    for name in args.tokenizers:
        tok = toks[name]
        t0 = time.perf_counter()
        rows = [evaluate_tokenizer(tok, [ep]) for ep in eps]
        per[name] = {m: [r[m] for r in rows] for m in METRICS}
        frames = sum(r["frames"] for r in rows)
        summary[name] = {**{m: float(np.nanmean(per[name][m])) for m in METRICS}, "frames": frames,
                         "seconds": time.perf_counter() - t0}
        print(name, json.dumps({k: round(v, 4) for k, v in summary[name].items()}), flush=True)
    ref = args.tokenizers[0]
    paired = {name: {m: paired_margin(per[name][m], per[ref][m]) for m in METRICS}
              for name in args.tokenizers[1:]}
    result = {"data": args.data, "split": args.split, "episodes": [e["name"] for e in eps], "reference": ref,
              "summary": summary, "paired_vs_reference": paired, "per_episode": per}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    for name, p in paired.items():
        print(name, "-", ref, {m: f"{v['mean']:+.4f} [{v['ci_low']:+.4f}, {v['ci_high']:+.4f}]" for m, v in p.items()})


if __name__ == "__main__":
    main()
