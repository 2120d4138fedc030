"""Train the world model on a lent GPU within a time budget, and pack the result for the way back.

    PYTHONPATH=. python benchmarks/gpu_train.py --data runs/tokens --out $OUT            # on the GPU machine
    PYTHONPATH=. python benchmarks/gpu_train.py --join FETCHED_DIR --into runs/world_gpu   # back here

On the GPU machine (no package index, a few files of at most 16 MiB come back): it checks first that CUDA is
there (``--device``), that the token dataset is a sealed ``maskflow tokenize`` output of at most
``--max-data-mb`` (60), then trains ``maskflow train``'s recipe (``worldmodel.training.loop.train``: the same objective,
EMA, bf16 where supported) with the memory recipe's window (``--clip-len`` 32), heading rotary (``--heading-pairs``
8), return-aligned clips (``--return-share`` 0.25 of each batch ends on a view held ``--return-gap`` 28+ frames back:
the data must hold loops, as ``maskflow collect policy=revisit`` makes) and dreamed returns (``--return-dream`` 27),
for ``--minutes`` (8) in a scratch run folder. From scratch it trains at ``--dim``/``--depth``/``--heads`` (default
~24 M parameters, 5x release 1); with ``--init memory|DIR`` it fine-tunes that checkpoint instead (its architecture).
A short timing probe first (``--probe-steps``) sizes the step count to the budget, so that the learning rate's
linear cooldown (``--cooldown`` of the steps) ends with it. It then exports the release (fp16 weights,
``SHA256SUMS.json``), and writes to ``--out`` only: the release as one tar split into parts of at most ``--part-mb``
(16) MiB, ``pack.json`` (each part's and the whole tar's sha256), ``summary.json`` (settings, steps, held-out
metrics, seconds) and ``curves.png``. It imports torch, numpy, einops, safetensors, h5py, matplotlib and
vector_quantize_pytorch only (no gymnasium, hydra or tensorboard). ``--join`` checks every sha256, unpacks the
release and verifies it.

On the H200 (docs/results.md, "On a GPU") fine-tuning paid and training from scratch did not: the dreamed
returns are ~100 small sequential forward passes a step (~1 s at any batch up to 256), so minutes buy
hundreds of steps; use a large batch, and ``--init``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

MiB = 2 ** 20


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / MiB


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack(release: Path, out: Path, part_mb: float) -> dict[str, Any]:
    """The release folder as one tar in parts of at most ``part_mb`` MiB, plus pack.json."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(release, arcname="release")
    blob, size = buf.getvalue(), int(part_mb * MiB)
    parts = []
    for i in range(0, len(blob), size):
        name = f"release.tar.part{i // size:02d}"
        (out / name).write_bytes(blob[i:i + size])
        parts.append({"name": name, "sha256": sha256(blob[i:i + size])})
    meta = {"format": "maskflow-gpu-pack", "tar_sha256": sha256(blob), "tar_bytes": len(blob), "parts": parts}
    (out / "pack.json").write_text(json.dumps(meta, indent=1))
    return meta


def join_tar(folder: Path, into: Path) -> Path:
    """Check and unpack what :func:`pack` wrote into ``into`` (a new folder); returns ``into``."""
    meta = json.loads((folder / "pack.json").read_text())
    chunks = []
    for p in meta["parts"]:
        data = (folder / p["name"]).read_bytes()
        if sha256(data) != p["sha256"]:
            raise SystemExit(f"{folder / p['name']}: sha256 differs from pack.json (a damaged transfer)")
        chunks.append(data)
    blob = b"".join(chunks)
    if sha256(blob) != meta["tar_sha256"]:
        raise SystemExit(f"{folder}: the joined parts do not give the packed tar (sha256 differs)")
    if into.exists():
        raise SystemExit(f"--into {into} exists; give a new folder")
    with tempfile.TemporaryDirectory(dir=into.parent if into.parent.exists() else None) as tmp:
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(tmp, filter="data")
        shutil.move(str(Path(tmp) / "release"), into)
    return into


def join(folder: Path, into: Path) -> Path:
    """:func:`join_tar`, then verify the world-model release it held; returns the release path."""
    from worldmodel.model.export import verify_release

    join_tar(folder, into)
    verify_release(into)
    return into


def probe_pace(log: Path, fallback: float, column: str, skip: float, cumulative: bool = True) -> float:
    """Seconds per step of a probe's later steps, from its train_log.csv: the rows after the first ``skip`` share
    (a probe's first steps pay for CUDA's start and kernel autotuning). ``column`` holds cumulative seconds
    (differenced over those steps) or, with ``cumulative=False``, each logging window's seconds per step
    (averaged; the world model's ``step_s`` is timed after a device sync). ``fallback`` where the log cannot say."""
    import csv

    try:
        rows = [r for r in csv.DictReader(log.open()) if r.get(column)]
        k = max(0, math.ceil(len(rows) * skip) - 1)
        if len(rows) - k < 2:
            return fallback
        if not cumulative:
            return sum(float(r[column]) for r in rows[k + 1:]) / (len(rows) - k - 1)
        return ((float(rows[-1][column]) - float(rows[k][column]))
                / (float(rows[-1]["step"]) - float(rows[k]["step"])))
    except (OSError, ValueError, KeyError, ZeroDivisionError):
        return fallback


def add_transfer_args(p: argparse.ArgumentParser, max_data_mb: float, what: str) -> None:
    """The keys both GPU scripts share: the device, the size limits of the way there and back, --join."""
    p.add_argument("--device", default="cuda")
    p.add_argument("--max-data-mb", type=float, default=max_data_mb)
    p.add_argument("--part-mb", type=float, default=16.0)
    p.add_argument("--join", help="a folder of parts and pack.json to check and unpack (with --into)")
    p.add_argument("--into", help=f"--join: the new {what} folder")


def check_inputs(args: argparse.Namespace, kind: str, verb: str) -> tuple[Path, float, Path]:
    """Before any work: CUDA where asked, a dataset (``kind``, made by ``verb``) of at most --max-data-mb.
    Returns (data, its MiB, the --out folder, made)."""
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA GPU is visible (use --device cpu to test this script)")
    data = Path(args.data)
    if not (data / "manifest.json").is_file():
        raise SystemExit(f"--data {data}: not a {kind} (no manifest.json); make one with `{verb}`")
    mb = dir_mb(data)
    if mb > args.max_data_mb:
        raise SystemExit(f"--data {data} holds {mb:.1f} MiB, over --max-data-mb {args.max_data_mb}: carry less")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return data, mb, out


def train_and_pack(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from worldmodel.model.export import export_checkpoint
    from worldmodel.training.loop import TrainConfig, train

    data, mb, out = check_inputs(args, "token dataset", "maskflow tokenize")
    with tempfile.TemporaryDirectory(prefix="maskflow-gpu-train-") as tmp:
        run, release = Path(tmp) / "run", Path(tmp) / "release"
        arch = {} if args.init else {"dim": args.dim, "depth": args.depth, "heads": args.heads}

        def config(out_dir: Path, steps: int, minutes: float, **over: Any) -> TrainConfig:
            return TrainConfig(**over, data=str(data), out=str(out_dir), size="small", init=args.init or "", **arch,
                               tokenizer=args.tokenizer,
                               clip_len=args.clip_len, heading_pairs=args.heading_pairs,
                               return_share=args.return_share, return_gap=args.return_gap,
                               return_dream=args.return_dream if args.return_share > 0 else 0,
                               steps=steps, batch_size=args.batch_size, lr=args.lr,
                               warmup_steps=min(args.warmup_steps, steps // 4),
                               cooldown_steps=int(args.cooldown * steps), eval_every=args.eval_every,
                               ckpt_every=args.eval_every, max_minutes=minutes, device=args.device,
                               tensorboard=False, progress=False, seed=args.seed, threads=args.threads)

        t0 = time.time()
        probe_s = None
        steps = args.max_steps
        if args.probe_steps > 0:
            # seconds per step at these settings, timed over the probe's second half: its first steps pay for
            # CUDA's start and kernel autotuning (on the H200 they doubled the mean, and the runs ended early)
            half = max(1, args.probe_steps // 2)
            probe = train(config(Path(tmp) / "probe", 2 * half, 0.0, log_every=half))
            probe_s = max(1e-3, probe_pace(Path(tmp) / "probe" / "train_log.csv",
                                           probe["elapsed_s"] / max(1, probe["steps"]), "step_s", 0.5,
                                           cumulative=False))
            left = 60 * args.minutes - (time.time() - t0)
            steps = max(1, min(args.max_steps, int(0.9 * left / probe_s)))
            shutil.rmtree(Path(tmp) / "probe")
            print(f"probe: {probe_s:.3f} s/step over {probe['steps']} steps -> {steps} steps in the budget")
        cfg = config(run, steps, max(0.05, args.minutes - (time.time() - t0) / 60))
        summary = train(cfg)
        seconds = time.time() - t0
        export_checkpoint(run, release, half=True)
        packed = pack(release, out, args.part_mb)
        if (run / "curves.png").is_file():
            shutil.copy(run / "curves.png", out / "curves.png")
        device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        result = {"device": device, "seconds": seconds, "data": str(data), "data_mib": mb,
                  "settings": {k: v for k, v in vars(args).items()}, "probe_s_per_step": probe_s, "steps": steps,
                  "train_summary": summary,
                  "release_mib": dir_mb(release), "parts": len(packed["parts"])}
    (out / "summary.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: result[k] for k in ("device", "seconds", "release_mib", "parts")}))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any] | Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="token dataset (maskflow tokenize), at most --max-data-mb")
    p.add_argument("--out", help="where the packed release, pack.json, summary.json and curves.png go")
    p.add_argument("--minutes", type=float, default=8.0, help="training budget")
    p.add_argument("--dim", type=int, default=320, help="width (320 x 6 pairs: ~24 M parameters, 48 MiB fp16)")
    p.add_argument("--depth", type=int, default=6, help="(spatial, temporal) block pairs")
    p.add_argument("--heads", type=int, default=5)
    p.add_argument("--init", default="", help="fine-tune this checkpoint (memory | default | DIR; its architecture, "
                   "so --dim/--depth/--heads are ignored); empty: train from scratch")
    p.add_argument("--tokenizer", default="",
                   help="the tokenizer to ship beside the model, where the one the dataset records is not on this "
                        "machine (e.g. worldmodel/assets/world_model_memory/tokenizer)")
    p.add_argument("--clip-len", type=int, default=32, help="window k (32: the memory recipe)")
    p.add_argument("--heading-pairs", type=int, default=8, help="heading rotary pairs per temporal head (0 = off)")
    p.add_argument("--return-share", type=float, default=0.25,
                   help="share of each batch from clips ending on a view held --return-gap+ frames back (0 = off)")
    p.add_argument("--return-gap", type=int, default=28,
                   help="return clips end on a view held this many frames back or more (the release: 28)")
    p.add_argument("--return-dream", type=int, default=27,
                   help="on those clips, dream up to this many frames before the return (0 = off; ignored "
                        "when --return-share is 0)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--cooldown", type=float, default=0.3, help="share of the steps over which lr decays to 0")
    p.add_argument("--probe-steps", type=int, default=20,
                   help="timed steps before the run that size its step count to --minutes (0: --max-steps)")
    p.add_argument("--max-steps", type=int, default=1_000_000, help="at most this many steps")
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    add_transfer_args(p, max_data_mb=60.0, what="release")
    args = p.parse_args(argv)
    if args.join:
        if not args.into:
            p.error("--join needs --into")
        return join(Path(args.join), Path(args.into))
    if not args.data or not args.out:
        p.error("--data and --out are required (or --join with --into)")
    return train_and_pack(args)


if __name__ == "__main__":
    main()
