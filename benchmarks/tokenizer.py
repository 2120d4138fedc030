"""Tokenizer throughput: encode and decode frames/s on CPU (and GPU where available).

    PYTHONPATH=. python benchmarks/tokenizer.py                       # untrained presets, random frames
    PYTHONPATH=. python benchmarks/tokenizer.py --checkpoint runs/tokenizer --data runs/data
    PYTHONPATH=. python benchmarks/tokenizer.py --sizes small --downsample 4 8 --batch 1 64 --threads 2

Speed does not depend on the weights, so untrained presets measure the architecture; a checkpoint
measures the tokenizer you ship. Reports the median of ``--repeats`` timed runs after a warm-up,
with batch size, thread count and device, as JSON lines (``--json FILE`` also writes them there); decoding
also in bf16 autocast (as the dream env decodes where the hardware has bf16), with the per-repeat ratio to fp32.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from worldmodel.tokenizer.files import load_tokenizer
from worldmodel.tokenizer.model import FrameTokenizer, build_tokenizer, tokenizer_config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_tokenizer(model: FrameTokenizer, frames: np.ndarray, batch: int, repeats: int) -> dict[str, float]:
    """Median encode and decode frames/s of ``model`` on uint8 frames (n, y, x, 3) in batches of ``batch``."""
    device = model.device
    x = torch.from_numpy(frames[:batch]).to(device)
    for _ in range(2):  # warm-up: oneDNN / cuDNN pick and cache their kernels on the first calls
        model.decode(model.encode(x))
    enc, dec, dec16 = [], [], []
    bf16 = device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        ids = model.encode(x)
        _sync(device)
        t1 = time.perf_counter()
        model.decode(ids)
        _sync(device)
        t2 = time.perf_counter()
        enc.append(batch / (t1 - t0))
        dec.append(batch / (t2 - t1))
        if bf16:                    # the dream env decodes in bf16 where the hardware has it (precision="auto")
            model.decode(ids, dtype=torch.bfloat16)         # (alternating with fp32: both see the same load)
            _sync(device)
            t3 = time.perf_counter()
            model.decode(ids, dtype=torch.bfloat16)
            _sync(device)
            dec16.append(batch / (time.perf_counter() - t3))
    out = {"encode_fps": statistics.median(enc), "decode_fps": statistics.median(dec)}
    if dec16:
        out["decode_bf16_fps"] = statistics.median(dec16)
        out["decode_bf16_vs_fp32"] = statistics.median(b / a for a, b in zip(dec, dec16, strict=True))
    return out


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), for the report."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark grid and print one JSON line per configuration."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", help="a tokenizer dir (or train-tokenizer run dir); default: untrained presets")
    ap.add_argument("--data", help="a frames dataset to take frames from (default: random frames)")
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small", "base"])
    ap.add_argument("--downsample", nargs="+", type=int, default=[4, 8])
    ap.add_argument("--quantizer", default="fsq", choices=["fsq", "vq"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="also append the results to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = max(args.batch)
    if args.data:
        from envs.dataset import EpisodeDataset

        ds = EpisodeDataset(args.data, "test")
        frames = np.concatenate([ds.episode(i)["frames"] for i in range(len(ds))])[:n]
        frames = np.resize(frames, (n, *frames.shape[1:]))
    else:
        frames = np.random.default_rng(0).integers(0, 256, size=(n, 64, 64, 3), dtype=np.uint8)
    if args.checkpoint:
        models = [("checkpoint", lambda: load_tokenizer(args.checkpoint))]
    else:
        models = [(f"{s}/ds{d}/{args.quantizer}",
                   (lambda s=s, d=d: build_tokenizer(tokenizer_config(s, d, quantizer=args.quantizer)).eval()))
                  for s in args.sizes for d in args.downsample]
    results = []
    for device in args.devices:
        if device == "cuda" and not torch.cuda.is_available():
            continue
        for name, make in models:
            model = make().to(device)
            for batch in args.batch:
                r = time_tokenizer(model, frames, batch, args.repeats)
                row = {"model": name, "params": sum(p.numel() for p in model.parameters()),
                       "token_grid": list(model.token_grid), "vocab_size": model.vocab_size, "device": device,
                       "batch": batch, "threads": torch.get_num_threads(), "cpu": cpu_name(),
                       **{k: round(v, 1) for k, v in r.items()}}
                print(json.dumps(row), flush=True)
                results.append(row)
    if args.json:
        with open(args.json, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)
    return results


if __name__ == "__main__":
    main()
