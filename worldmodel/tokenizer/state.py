"""Files of a tokenizer training run: frames in (from a frames dataset), resumable full state out.

A run may start from a trained tokenizer (``init=``): :func:`load_init` copies its weights in.
A training checkpoint is a directory ``checkpoints/step-NNNNNNNN/`` holding ``state.safetensors``
(model, EMA, discriminator and optimizer tensors, torch RNG) and ``state.json`` (counters, optimizer
hyper-parameters, NumPy/Python RNG, the log rows, the run config). It is written to a temp directory
and renamed into place, then ``checkpoints/latest.json`` is switched to it atomically, so a job killed
at any moment leaves the previous checkpoint intact. Nothing is unpickled.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import random
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from envs.common.errors import CheckpointError, DatasetError
from envs.common.files import (
    atomic_write,
    load_weights,
    read_json,
    read_sealed_json,
    save_weights,
    write_json,
    write_sealed_json,
)
from worldmodel.tokenizer.identity import ENCODER_PREFIXES, tokenizer_identity
from worldmodel.tokenizer.model import FrameTokenizer, load_tokenizer, resolve_tokenizer_dir

if TYPE_CHECKING:
    from worldmodel.tokenizer.training import Trainer

STATE_FORMAT = "maskflow-tokenizer-train-state"
STATE_VERSION = 1
# keys of TokenizerTrainConfig that change the shapes of saved tensors or what is trained: must match to resume
ARCH_KEYS = ("size", "downsample", "quantizer", "fsq_levels", "vq_codebook_size", "norm", "disc_width",
             "init", "freeze_encoder", "decoder_size")


def _flatten_optimizer(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{name}/{idx}/{k}"] = v
            else:
                scalars[f"{idx}/{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith(name + "/"):
            _, idx, k = key.split("/", 2)
            state.setdefault(int(idx), {})[k] = v
    for key, v in meta["scalars"].items():
        idx, k = key.split("/", 1)
        state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_train_state(tr: Trainer, out: Path, rng: np.random.Generator, rows: list[dict[str, float]]) -> Path:
    """Write a full-state checkpoint of ``tr`` under ``out/checkpoints`` atomically; prune old ones."""
    ck = Path(out) / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for k, m in tr.modules().items():
        tensors.update({f"{k}/{n}": t for n, t in m.state_dict().items()})
    opt_meta = {}
    for k, o in tr.optimizers().items():
        t, opt_meta[k] = _flatten_optimizer(k, o)
        tensors.update(t)
    tensors["rng/torch"] = torch.get_rng_state()
    py_state = random.getstate()
    meta = {"format": STATE_FORMAT, "format_version": STATE_VERSION, "step": tr.step, "lr_scale": tr.lr_scale,
            "restores": tr.restores, "train_seconds": tr.train_seconds, "loss_ema": tr.loss_ema,
            "unique_ema": tr.unique_ema, "config": dataclasses.asdict(tr.cfg), "optimizers": opt_meta,
            "rng_numpy": rng.bit_generator.state, "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
            "rows": rows}
    final = ck / f"step-{tr.step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=ck))
    try:
        save_weights(tmp / "state.safetensors", tensors)
        write_sealed_json(tmp / "state.json", meta, files=("state.safetensors",))
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    write_json(ck / "latest.json", {"checkpoint": final.name, "step": tr.step})
    for old in sorted(ck.glob("step-*"))[: -max(1, tr.cfg.keep_checkpoints)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_train_state(tr: Trainer, out: Path, rng: np.random.Generator) -> list[dict[str, float]]:
    """Resume ``tr`` (and ``rng``) from the newest readable checkpoint in ``out``; return the log rows.

    No checkpoint: returns [] and leaves ``tr`` fresh. A checkpoint from a different architecture
    raises :class:`CheckpointError`; a corrupt newest checkpoint falls back to an older one.
    """
    ck = Path(out) / "checkpoints"
    if not ck.is_dir():
        return []
    for stale in ck.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    candidates = sorted(ck.glob("step-*"), reverse=True)
    if (ck / "latest.json").is_file():
        try:
            latest = ck / read_json(ck / "latest.json", "checkpoint pointer")["checkpoint"]
            candidates = [latest] + [c for c in candidates if c != latest]
        except (CheckpointError, KeyError, TypeError):
            pass
    errors = []
    for cand in candidates:
        try:
            return _load_one(tr, cand, rng)
        except CheckpointError as e:
            if "different" in str(e):
                raise
            errors.append(str(e))
            warnings.warn(f"skipping unreadable checkpoint {cand}: {e}", stacklevel=2)
    if candidates:
        raise CheckpointError(f"no readable checkpoint in {ck}: {'; '.join(errors)}; delete the directory "
                              "to start over")
    return []


def _load_one(tr: Trainer, path: Path, rng: np.random.Generator) -> list[dict[str, float]]:
    from envs.common.files import load_state_dict_strict

    meta = read_sealed_json(path / "state.json", "training state")
    if meta.get("format") != STATE_FORMAT or meta.get("format_version") != STATE_VERSION:
        raise CheckpointError(f"{path / 'state.json'} is not a version-{STATE_VERSION} tokenizer training state")
    # a state saved before a key existed ran with its default
    defaults = {f.name: f.default for f in dataclasses.fields(tr.cfg)}
    saved, now = {**defaults, **meta["config"]}, dataclasses.asdict(tr.cfg)
    diff = {k: (saved.get(k), now[k]) for k in ARCH_KEYS
            if (list(saved[k]) if isinstance(saved.get(k), list | tuple) else saved.get(k))
            != (list(now[k]) if isinstance(now[k], tuple) else now[k])}
    if diff:
        raise CheckpointError(f"{path.parent.parent} holds a run with different settings "
                              f"({', '.join(f'{k}: saved {a} vs now {b}' for k, (a, b) in diff.items())}); "
                              "use a new out= directory or the same settings to resume")
    tensors = load_weights(path / "state.safetensors", device=tr.device)
    for k, m in tr.modules().items():
        load_state_dict_strict(m, {n[len(k) + 1:]: t for n, t in tensors.items() if n.startswith(k + "/")},
                               source=f"{path} ({k})")
    for k, o in tr.optimizers().items():
        o.load_state_dict(_unflatten_optimizer(k, tensors, meta["optimizers"][k]))
    torch.set_rng_state(tensors["rng/torch"].cpu())
    rng.bit_generator.state = meta["rng_numpy"]
    v, st, g = meta["rng_python"]
    random.setstate((v, tuple(st), g))
    tr.step, tr.lr_scale, tr.restores = int(meta["step"]), float(meta["lr_scale"]), int(meta["restores"])
    tr.train_seconds, tr.loss_ema, tr.unique_ema = meta["train_seconds"], meta["loss_ema"], meta["unique_ema"]
    return list(meta["rows"])


def init_tokenizer_dir(init: str) -> Path:
    """The tokenizer of ``init=``: "default" → the shipped world model's; else a tokenizer, train-tokenizer
    run or world-model checkpoint directory."""
    if init == "default":
        from worldmodel.model.checkpoint import TOKENIZER_DIR, resolve_checkpoint

        return resolve_checkpoint("default") / TOKENIZER_DIR
    return resolve_tokenizer_dir(init)


def load_init(model: FrameTokenizer, init: str) -> dict[str, Any]:
    """Copy the init tokenizer's encoder and quantizer into ``model`` (and its decoder when the
    architectures agree); returns the init's record for the provenance."""
    src_dir = init_tokenizer_dir(init)
    src = load_tokenizer(src_dir)
    same_decoder = (src.cfg.dec_widths, src.cfg.dec_res_blocks) == (model.cfg.dec_widths, model.cfg.dec_res_blocks)
    keep = ENCODER_PREFIXES + (("decoder.",) if same_decoder else ())
    state = {k: v for k, v in src.state_dict().items() if k.startswith(keep)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("decoder.") for k in missing), (missing, unexpected)
    return {"init": str(init), "path": str(src_dir), "decoder_from_init": same_decoder,
            **tokenizer_identity(src.cfg.to_dict(), src.state_dict())}


def load_frames_for_training(root: str | os.PathLike, max_train_frames: int = 0, holdout_episodes: int = 4
                             ) -> tuple[np.ndarray, list[dict[str, np.ndarray]], list[str] | None, dict[str, Any]]:
    """Read a frames dataset: all train frames into one uint8 array (n, y, x, 3); test episodes as held-out
    episodes (frames + actions). Without a test split the last ``holdout_episodes`` train episodes are held out.
    Returns (train frames, held-out episodes, action names, provenance)."""
    from envs.dataset import EpisodeDataset

    train_ds = EpisodeDataset(root, "train")
    if getattr(train_ds, "kind", "frames") != "frames":
        raise DatasetError(f"{root} is a {train_ds.kind!r} dataset; train-tokenizer needs a frames dataset")
    try:
        test_ds = EpisodeDataset(root, "test")
        test_eps = [test_ds.episode(i) for i in range(len(test_ds))]
        held = 0
    except (DatasetError, FileNotFoundError):
        held = min(holdout_episodes, len(train_ds) - 1)
        if held < 1:
            raise DatasetError(f"{root} has no test split and too few train episodes to hold one out") from None
        warnings.warn(f"{root} has no test split; holding out the last {held} train episodes", stacklevel=2)
        test_eps = [train_ds.episode(i) for i in range(len(train_ds) - held, len(train_ds))]
    n_train = len(train_ds) - held
    parts, total = [], 0
    for i in range(n_train):
        f = train_ds.episode(i)["frames"]
        if max_train_frames:
            f = f[: max(0, max_train_frames - total)]
        if len(f):
            parts.append(np.asarray(f, dtype=np.uint8))
            total += len(f)
    if not parts:
        raise DatasetError(f"{root} has no training frames")
    frames = np.concatenate(parts)
    val = [{"frames": np.asarray(e["frames"]), "actions": np.asarray(e["actions"])} for e in test_eps]
    prov = {"data": str(Path(root).resolve()), "train_episodes": n_train, "test_episodes": len(val)}
    return frames, val, list(getattr(train_ds, "action_meanings", None) or []) or None, prov


def write_log(rows: list[dict[str, float]], out: Path, plot: bool = True) -> None:
    """Write ``train_log.csv`` (and ``curves.png`` if ``plot``) atomically; the whole file each time (small)."""
    keys = sorted({k for r in rows for k in r} - {"step", "time"})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["step", "time", *keys])
    w.writeheader()
    w.writerows(rows)
    with atomic_write(out / "train_log.csv") as tmp:
        tmp.write_text(buf.getvalue())
    if rows and plot:
        from worldmodel.tokenizer.evaluation import save_curves

        save_curves(rows, out / "curves.png")


def catch_stop_signals(stop: dict[str, int | None]) -> dict[int, Any]:
    """Ctrl-C / SIGTERM finish the current step, then checkpoint and stop (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        stop["signal"] = signum

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def restore_signals(previous: dict[int, Any]) -> None:
    """Put back the handlers replaced by :func:`catch_stop_signals`."""
    import signal

    for sig, h in previous.items():
        signal.signal(sig, h)
