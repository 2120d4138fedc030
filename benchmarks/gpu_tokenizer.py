"""Train release 2's frame tokenizer on a lent GPU within a time budget, and pack it for the way back.

    PYTHONPATH=. python benchmarks/gpu_tokenizer.py --data runs/frames --out $OUT/tok        # on the GPU machine
    PYTHONPATH=. python benchmarks/gpu_tokenizer.py --join FETCHED_DIR --into runs/tok_gpu    # back here

On the GPU machine: it checks that CUDA is there (``--device``) and that ``--data`` is a frames dataset
(``maskflow collect``) of at most ``--max-data-mb`` (40), reads its frames, then trains
``maskflow train-tokenizer``'s recipe (``worldmodel.tokenizer.training.train_tokenizer``: L1 + L2, EMA,
the patch GAN switching on at ``--disc-start`` of the steps) at ``--size`` (small) for ``--minutes`` (4).
A short timing probe first (``--probe-steps``, the GAN on, so an over-estimate) sizes the step count to
the budget, so that the cosine schedule and the GAN's start fit it. The final evaluation (PSNR, SSIM, code
use, token stability on the held-out episodes) runs there too. ``--out`` gets: the run (``tokenizer/``,
``summary.json``, ``train_log.csv``) as one tar in parts of at most ``--part-mb`` (16) MiB with
``pack.json`` (sha256 of each), plus ``samples.png`` and ``curves.png``: four files. It imports torch,
numpy, einops, h5py, safetensors, matplotlib, torchmetrics and vector_quantize_pytorch only.
``--join`` checks every sha256, unpacks the run into a new folder and loads its tokenizer.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_train import add_transfer_args, check_inputs, join_tar, pack, probe_pace  # noqa: E402  (the sibling script: one packing format)


def train_and_pack(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from worldmodel.tokenizer.config import TokenizerTrainConfig
    from worldmodel.tokenizer.data import load_frames_for_training
    from worldmodel.tokenizer.training import train_tokenizer

    data, mb, out = check_inputs(args, "frames dataset", "maskflow collect")
    train, val, names, prov = load_frames_for_training(data)
    print(f"{len(train)} training frames, {len(val)} held-out episodes from {data} ({mb:.1f} MiB)")

    def config(steps: int, minutes: float, **over: Any) -> TokenizerTrainConfig:
        keys = dict(size=args.size, steps=steps, batch_size=args.batch_size, lr=args.lr,
                    warmup=min(args.warmup, steps // 10), disc_start=int(args.disc_start * steps),
                    disc_ramp=max(1, int(args.disc_ramp * steps)), disc_weight=args.disc_weight,
                    quant_weight=args.quant_weight,
                    eval_every=max(1, steps // args.evals), ckpt_every=steps, log_every=max(1, steps // 200),
                    final_eval_frames=args.final_eval_frames, device=args.device, seed=args.seed,
                    max_minutes=minutes)
        keys.update(over)
        return TokenizerTrainConfig(**keys)

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="maskflow-gpu-tokenizer-") as tmp:
        probe_s, steps = None, args.max_steps
        if args.probe_steps > 0:
            # the GAN on from the first step: the dearer half of the run sets the pace; timed over the probe's
            # last two thirds, as its first steps pay for CUDA's start and autotuning (2.6x the pace on the H200)
            probe = train_tokenizer(config(args.probe_steps, 0.0, disc_start=0, disc_ramp=1, warmup=1, log_every=1),
                                    train, None, Path(tmp) / "probe")
            probe_s = max(1e-4, probe_pace(Path(tmp) / "probe" / "train_log.csv",
                                           probe["train_seconds"] / max(1, probe["steps"]), "time", 1 / 3))
            # leave room for the evals on the way and the final one
            left = 60 * args.minutes - (time.time() - t0) - args.eval_reserve_s
            steps = max(10, min(args.max_steps, int(0.92 * left / probe_s)))
            print(f"probe: {probe_s * 1e3:.1f} ms/step over {probe['steps']} steps -> {steps} steps in the budget")
        run = Path(tmp) / "run"
        cfg = config(steps, max(0.05, args.minutes - (time.time() - t0) / 60 - args.eval_reserve_s / 60))
        summary = train_tokenizer(cfg, train, val, run, action_names=names, provenance=prov)
        seconds = time.time() - t0
        device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        result = {"device": device, "seconds": round(seconds, 1), "data": str(data), "data_mib": round(mb, 1),
                  "train_frames": int(len(train)), "settings": vars(args), "probe_s_per_step": probe_s,
                  "planned_steps": steps, "summary": summary}
        (run / "gpu_summary.json").write_text(json.dumps(result, indent=1, default=str))
        keep = Path(tmp) / "pack"
        keep.mkdir()
        for name in ("tokenizer", "summary.json", "train_log.csv", "gpu_summary.json"):
            src = run / name
            if src.is_dir():
                shutil.copytree(src, keep / name)
            elif src.is_file():
                shutil.copy(src, keep / name)
        packed = pack(keep, out, args.part_mb)
        for name in ("samples.png", "curves.png"):
            if (run / name).is_file():
                shutil.copy(run / name, out / name)
    ev = summary.get("eval") or {}
    print(json.dumps({"device": device, "seconds": result["seconds"], "steps": summary["steps"],
                      "parts": len(packed["parts"]),
                      **{k: ev.get(k) for k in ("psnr", "ssim", "code_usage", "stability")}}))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any] | Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="frames dataset (maskflow collect), at most --max-data-mb")
    p.add_argument("--out", help="where the packed run, pack.json, samples.png and curves.png go")
    p.add_argument("--minutes", type=float, default=4.0, help="the whole budget: probe, training, evals")
    p.add_argument("--size", default="small", help="tiny | small | base")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--disc-start", type=float, default=0.4, help="share of the steps before the patch GAN joins")
    p.add_argument("--disc-ramp", type=float, default=0.05, help="share of the steps over which its weight ramps")
    p.add_argument("--disc-weight", type=float, default=0.1)
    p.add_argument("--quant-weight", type=float, default=0.03,
                   help="FSQ's pull to the bin centres: higher keeps token ids steadier (stability) at some PSNR")
    p.add_argument("--evals", type=int, default=4, help="held-out evaluations during the run")
    p.add_argument("--final-eval-frames", type=int, default=8192)
    p.add_argument("--eval-reserve-s", type=float, default=25.0, help="seconds kept back for the evaluations")
    p.add_argument("--probe-steps", type=int, default=30,
                   help="timed steps that size the step count to --minutes (0: --max-steps)")
    p.add_argument("--max-steps", type=int, default=200_000, help="at most this many steps")
    p.add_argument("--seed", type=int, default=3)
    add_transfer_args(p, max_data_mb=40.0, what="run")
    args = p.parse_args(argv)
    if args.join:
        if not args.into:
            p.error("--join needs --into")
        into = join_tar(Path(args.join), Path(args.into))
        from worldmodel.tokenizer.files import load_tokenizer

        load_tokenizer(into / "tokenizer")      # checks the weights' sha256 and the config digest
        return into
    if not args.data or not args.out:
        p.error("--data and --out are required (or --join with --into)")
    return train_and_pack(args)


if __name__ == "__main__":
    main()
