"""Tokenizer throughput: encode and decode frames/s on CPU (and GPU where available).

    PYTHONPATH=. python benchmarks/tokenizer.py                       # untrained presets, random frames
    PYTHONPATH=. python benchmarks/tokenizer.py --checkpoint runs/tokenizer --data runs/data
    PYTHONPATH=. python benchmarks/tokenizer.py --sizes small --downsample 4 8 --batch 1 64 --threads 2
    PYTHONPATH=. python benchmarks/tokenizer.py --checkpoint default --data runs/data_speed --compile --threads 2

Speed does not depend on the weights, so untrained presets measure the architecture; a checkpoint
measures the tokenizer you ship. Reports the median of ``--repeats`` timed runs after a warm-up,
with batch size, thread count and device, as JSON lines (``--json FILE`` also writes them there); decoding
also in bf16 autocast (as the dream env decodes where the hardware has bf16), with the per-repeat ratio to fp32;
the round trip (encode + decode of a frame); with ``--compile``, the compiled tokenizer beside the eager one in
the same process, taking turns, with per-repeat ratios and the share of token ids they agree on.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import numpy as np
import torch

from worldmodel.tokenizer.files import load_tokenizer, named_tokenizer
from worldmodel.tokenizer.model import FrameTokenizer, build_tokenizer, tokenizer_config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_tokenizers(models: dict[str, FrameTokenizer], frames: np.ndarray, batch: int,
                    repeats: int) -> dict[str, dict[str, float]]:
    """Median encode / decode frames/s of each model on uint8 frames (n, y, x, 3) in batches of ``batch``.

    The models take turns within every repeat, so they see the same machine load; each timing covers at least
    64 frames (batch 1: 64 calls). Also per model: the per-repeat ratio to the first model, and the round trip
    (encode then decode one frame: 1 / (1/encode + 1/decode)), with decoding in fp32 and in bf16 autocast (as the
    dream env decodes where the hardware has bf16)."""
    first = next(iter(models.values()))
    device = first.device
    x = torch.from_numpy(frames[:batch]).to(device)
    calls = max(1, 64 // batch)
    bf16 = device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())
    kinds = ["encode", "decode"] + (["decode_bf16"] if bf16 else [])
    for model in models.values():   # warm-up: oneDNN / cuDNN pick kernels, torch.compile compiles this shape
        for _ in range(2):
            ids = model.encode(x)
            model.decode(ids)
            if bf16:
                model.decode(ids, dtype=torch.bfloat16)
    ids = first.encode(x)
    runs = {
        "encode": lambda m: m.encode(x),
        "decode": lambda m: m.decode(ids),
        "decode_bf16": lambda m: m.decode(ids, dtype=torch.bfloat16),
    }
    fps: dict[str, dict[str, list[float]]] = {name: {k: [] for k in kinds} for name in models}
    for _ in range(repeats):
        for kind in kinds:
            for name, model in models.items():
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(calls):
                    runs[kind](model)
                _sync(device)
                fps[name][kind].append(calls * batch / (time.perf_counter() - t0))
    out: dict[str, dict[str, float]] = {}
    base = fps[next(iter(models))]
    for name, model in models.items():
        row = {f"{k}_fps": statistics.median(v) for k, v in fps[name].items()}
        for dec in ("decode", "decode_bf16"):
            if dec in fps[name]:
                row[f"roundtrip_{dec.replace('decode', 'fp32') if dec == 'decode' else 'bf16'}_fps"] = \
                    statistics.median(1 / (1 / e + 1 / d) for e, d in zip(fps[name]["encode"], fps[name][dec],
                                                                            strict=True))
        if bf16:
            row["decode_bf16_vs_fp32"] = statistics.median(
                b / a for a, b in zip(fps[name]["decode"], fps[name]["decode_bf16"], strict=True))
        if model is not first:
            for k in kinds:
                row[f"{k}_vs_{next(iter(models))}"] = statistics.median(
                    b / a for a, b in zip(base[k], fps[name][k], strict=True))
            row["ids_equal"] = float((model.encode(x) == ids).float().mean())
        out[name] = row
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
    ap.add_argument("--checkpoint", help="a tokenizer dir, train-tokenizer run dir or shipped model name (default, "
                                         "memory); default: untrained presets")
    ap.add_argument("--data", help="a frames dataset to take frames from (default: random frames)")
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small", "base"])
    ap.add_argument("--downsample", nargs="+", type=int, default=[4, 8])
    ap.add_argument("--quantizer", default="fsq", choices=["fsq", "vq"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true",
                    help="also time each tokenizer torch.compile'd (FrameTokenizer.compile_nets), in turns with eager")
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
        models = [(args.checkpoint, lambda: load_tokenizer(named_tokenizer(args.checkpoint)))]
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
            variants = {"eager": model}
            if args.compile:
                variants["compiled"] = copy.deepcopy(model).compile_nets()     # the same weights
            for batch in args.batch:
                timed = time_tokenizers(variants, frames, batch, args.repeats)
                for variant, r in timed.items():
                    row = {"model": name, "variant": variant, "params": sum(p.numel() for p in model.parameters()),
                           "token_grid": list(model.token_grid), "vocab_size": model.vocab_size, "device": device,
                           "batch": batch, "threads": torch.get_num_threads(), "cpu": cpu_name(),
                           **{k: round(v, 3 if "_vs_" in k or k == "ids_equal" else 1) for k, v in r.items()}}
                    print(json.dumps(row), flush=True)
                    results.append(row)
    if args.json:
        with open(args.json, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)
    return results


if __name__ == "__main__":
    main()
