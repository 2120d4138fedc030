"""FVD of tokenizer reconstructions: 16-frame clips of held-out episodes vs the same clips encoded and decoded.

    python benchmarks/tokenizer_fvd.py runs/tokenizer --data runs/data --clips 64 [--out FILE.json]

The clips are non-overlapping 16-frame windows of the test split (held-out mazes), taken in order;
both sides go through the standard I3D (worldmodel.metrics.quality). With N clips this small the FVD is
noisy and biased upwards; N is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from envs.common.files import write_json
from envs.dataset import EpisodeDataset
from worldmodel.metrics.quality import frechet_video_distance
from worldmodel.tokenizer.codec import decode_tokens, encode_frames
from worldmodel.tokenizer.files import load_tokenizer, named_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tokenizer", help="tokenizer dir, train-tokenizer run dir, world-model dir, default or memory")
    ap.add_argument("--data", required=True, help="frames dataset (its test split is used)")
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--clip-len", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = load_tokenizer(named_tokenizer(args.tokenizer))
    ds = EpisodeDataset(args.data, "test")
    real = []
    for i in range(len(ds)):
        f = ds.episode(i)["frames"]
        real += [f[s:s + args.clip_len] for s in range(0, len(f) - args.clip_len + 1, args.clip_len)]
        if len(real) >= args.clips:
            break
    real = np.stack(real[:args.clips])
    t0 = time.perf_counter()
    with torch.no_grad():
        recon = np.stack([decode_tokens(tok, encode_frames(tok, clip)) for clip in real])
    fvd = frechet_video_distance(real, recon)
    res = {"tokenizer": args.tokenizer, "clips": len(real), "clip_len": args.clip_len, "fvd": fvd,
           "seconds": time.perf_counter() - t0}
    print(json.dumps(res, indent=1))
    if args.out:
        write_json(args.out, res)


if __name__ == "__main__":
    main()
