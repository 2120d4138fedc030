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
``--tradeoff PNG`` draws each tokenizer as a point, tokens kept from frame to frame against PSNR, with the
paired intervals against the first as error bars: the choice between stable ids and sharp frames at a glance.
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


def short_name(name: str) -> str:
    """A plot label: a run's folder name for RUN/tokenizer, else the name as given."""
    p = Path(name)
    return p.parent.name if p.name == "tokenizer" and p.parent.name else name


def save_tradeoff(result: dict, path: Path) -> None:
    """PNG: stability (x) against PSNR (y), one point per tokenizer; the error bars are the paired 95 % intervals
    against the reference, placed around the point (the reference itself has none). Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from envs.common.files import atomic_write

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ref = result["reference"]
    for name, s in result["summary"].items():
        x, y = 100 * s["stability"], s["psnr"]
        p = result["paired_vs_reference"].get(name)
        if p is None:
            ax.plot(x, y, "s", color="black")
        else:
            xe = [[100 * (p["stability"]["mean"] - p["stability"]["ci_low"])],
                  [100 * (p["stability"]["ci_high"] - p["stability"]["mean"])]]
            ye = [[p["psnr"]["mean"] - p["psnr"]["ci_low"]], [p["psnr"]["ci_high"] - p["psnr"]["mean"]]]
            ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", capsize=3)
        ax.annotate(short_name(name), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("token ids kept from frame to frame (%)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"{len(result['episodes'])} held-out episodes; bars: paired 95 % vs {short_name(ref)}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


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
    ap.add_argument("--tradeoff", default="", help="also plot stability against PSNR to this PNG")
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
    if args.tradeoff:
        save_tradeoff(result, Path(args.tradeoff))
    for name, p in paired.items():
        print(name, "-", ref, {m: f"{v['mean']:+.4f} [{v['ci_low']:+.4f}, {v['ci_high']:+.4f}]" for m, v in p.items()})


if __name__ == "__main__":
    main()
