"""Export a trained checkpoint directory as a compact, verifiable release (the shipped default model).

    python -m worldmodel.model.export runs/world worldmodel/assets/world_model [--fp32] [--overwrite]
    python -m worldmodel.model.export SRC DST --decoder runs/decoder_small   # with a new decoder (same encoder)

The release holds ``model.safetensors`` + ``model.json`` and ``tokenizer/`` exactly as
:func:`worldmodel.model.checkpoint.load_world_model` reads them, with float32 weights stored as float16
(halves the size; loading casts back to float32), plus ``SHA256SUMS.json`` recording every file's
sha256 and where the release came from. :func:`verify_release` checks a release against that record.
The release is built in a temporary directory beside ``dst`` and renamed into place. ``--decoder``
first swaps in a tokenizer trained on the checkpoint's frozen encoder
(:func:`worldmodel.model.checkpoint.swap_decoder`, which refuses any other encoder).

Provenance paths in ``model.json`` (where the release, its init and its tokenizer came from, the
training run's data and out) are stored relative to the working directory, or as the bare folder
name when outside it: a release is read on other machines, where this machine's absolute paths mean
nothing and would only leak its layout. Nothing reads them on load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from envs.common.errors import CheckpointError
from envs.common.files import (
    INTEGRITY_KEY,
    SUMS_NAME,
    atomic_dir,
    check_replaceable,
    is_temp_name,
    load_weights,
    read_json,
    save_weights,
    sha256_file,
    verify_sums,
    write_json,
    write_sealed_json,
)
from worldmodel.model.checkpoint import CALIBRATION_NAME, CONFIG_NAME, TOKENIZER_DIR, WEIGHTS_NAME

# a release's entries; `maskflow calibrate` may add its reward calibration (and list it in the sums)
RELEASE_ENTRIES = (CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_DIR, SUMS_NAME, CALIBRATION_NAME)


def _half(path: Path, dst: Path) -> None:
    """Copy a safetensors file with float32 tensors stored as float16 (metadata kept)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        has_fp32 = any(f.get_slice(k).get_dtype() == "F32" for k in f.keys())
    if not has_fp32:
        # already half: keep the bytes, so its sha256 (which token datasets record) stays the same
        shutil.copy2(path, dst)
        return
    state = load_weights(path)
    save_weights(dst, {k: v.half() if v.dtype == torch.float32 else v for k, v in state.items()}, metadata)


def portable_path(path: str | os.PathLike) -> str:
    """``path`` as a release records it: relative to the working directory when inside it (POSIX
    separators), else just its last component; relative paths are kept as they are."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return p.name


def _portable(v: Any) -> Any:
    if isinstance(v, str) and v:
        return portable_path(v)
    return [_portable(x) for x in v] if isinstance(v, list) else v


def _portable_tree(v: Any) -> Any:
    """``v`` with every absolute path string in it (at any depth) made :func:`portable_path`."""
    if isinstance(v, dict):
        return {k: _portable_tree(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_portable_tree(x) for x in v]
    return portable_path(v) if isinstance(v, str) and v.startswith("/") else v


def _portable_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with every provenance path made :func:`portable_path`."""
    meta = dict(meta)
    # init's checkpoint is what init= was given: an absolute path there (a GPU run's /tmp/ft1) leaked once
    for section, keys in (("init", ("path", "checkpoint")), ("tokenizer", ("source",)),
                          ("decoder_swap", ("checkpoint",)), ("train_config", ("data", "out", "init", "tokenizer"))):
        rec = meta.get(section)
        if isinstance(rec, dict):
            meta[section] = {k: _portable(v) if k in keys else v for k, v in rec.items()}
    return meta


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, half: bool = True,
                      overwrite: bool = False, notes: dict[str, Any] | None = None,
                      decoder: str | os.PathLike | None = None) -> Path:
    """Write a release of checkpoint ``src`` to ``dst``; returns ``dst``. Loads it back to check it.
    ``decoder``: a tokenizer with ``src``'s encoder whose decoder replaces the one in ``src``."""
    from worldmodel.model.checkpoint import (
        load_world_model,
        read_world_model_meta,
        resolve_checkpoint,
        sealed_files,
        swap_decoder,
    )
    from worldmodel.tokenizer.files import CONFIG_NAME as TOK_CONFIG
    from worldmodel.tokenizer.files import WEIGHTS_NAME as TOK_WEIGHTS
    from worldmodel.tokenizer.files import identity_of_dir

    src, dst = Path(src), Path(dst)
    if decoder is not None:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{dst.name}-swap-", dir=dst.parent) as work:
            swapped = swap_decoder(src, decoder, Path(work) / "swapped")
            return export_checkpoint(swapped, dst, half=half, overwrite=overwrite,
                                     notes={"source": portable_path(resolve_checkpoint(src).resolve()),
                                            **dict(notes or {})})
    meta = read_world_model_meta(src)
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise CheckpointError(f"{dst} is not empty; pass --overwrite to replace it")
    if overwrite:       # replace only a release this project wrote, and nothing beside it
        check_replaceable(dst, own=lambda p: (p / SUMS_NAME).is_file() and (p / "model.json").is_file(),
                          what=f"a release ({SUMS_NAME})", key="dst", inputs=(src,),
                          allowed=lambda name: name in RELEASE_ENTRIES or is_temp_name(name))
    with atomic_dir(dst) as tmp:
        (tmp / TOKENIZER_DIR).mkdir()
        copy = _half if half else (lambda a, b: shutil.copy2(a, b))
        copy(src / WEIGHTS_NAME, tmp / WEIGHTS_NAME)
        copy(src / TOKENIZER_DIR / TOK_WEIGHTS, tmp / TOKENIZER_DIR / TOK_WEIGHTS)
        tok_meta = read_json(src / TOKENIZER_DIR / TOK_CONFIG, "tokenizer config")
        if INTEGRITY_KEY in tok_meta:       # its weights may now be halved: record the exported bytes
            tok_meta.pop(INTEGRITY_KEY)
            if "encoder_sha256" in tok_meta:    # halving rounds an fp32 encoder: identities of what is written
                tok_meta.update(_identity(tmp / TOKENIZER_DIR / TOK_WEIGHTS, tok_meta["config"]))
            tok_meta["provenance"] = _portable_tree(tok_meta.get("provenance", {}))
            write_sealed_json(tmp / TOKENIZER_DIR / TOK_CONFIG, tok_meta, files=(TOK_WEIGHTS,))
        else:                               # a release from before sealed JSONs: keep its bytes
            shutil.copy2(src / TOKENIZER_DIR / TOK_CONFIG, tmp / TOKENIZER_DIR / TOK_CONFIG)
        # the model.json records its tokenizer's sha256: point it at the exported copy
        meta.pop("path", None)
        meta["tokenizer"] = {**meta["tokenizer"], **identity_of_dir(tmp / TOKENIZER_DIR)}
        if "env_kwargs" not in meta:
            meta["env_kwargs"] = recorded_env_kwargs(meta)
        meta = _portable_meta(meta)
        meta["release"] = {"source": portable_path(src.resolve()), "dtype": "float16" if half else "float32",
                           **dict(notes or {})}
        meta.pop(INTEGRITY_KEY, None)
        write_sealed_json(tmp / CONFIG_NAME, meta, files=sealed_files(tmp))
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        write_json(tmp / SUMS_NAME, {"files": {f: sha256_file(tmp / f) for f in files},
                                     "bytes": sum((tmp / f).stat().st_size for f in files)})
        load_world_model(tmp)                                  # refuse to ship something that does not load
        verify_release(tmp)
    return dst


def _identity(weights: Path, config: dict[str, Any]) -> dict[str, str]:
    from worldmodel.tokenizer.identity import tokenizer_identity
    from worldmodel.tokenizer.model import TokenizerConfig

    return tokenizer_identity(TokenizerConfig.from_dict(config).to_dict(), load_weights(weights))


def recorded_env_kwargs(meta: dict[str, Any]) -> dict[str, Any]:
    """The env settings of the frames a model was trained on, followed through the token dataset's
    manifest (for checkpoints written before ``model.json`` recorded them); {} when not findable."""
    from envs.dataset import load_manifest

    try:
        data = meta["train_config"]["data"]
        tokens = load_manifest(data if isinstance(data, str) else data[0])
        source = tokens.get("source", {})
        if "env_kwargs" in source:
            return dict(source["env_kwargs"])
        return dict(load_manifest(source["path"]).get("config", {}).get("env_kwargs", {}))
    except Exception:  # noqa: BLE001  (a moved or deleted dataset only means "unknown")
        return {}


def verify_release(path: str | os.PathLike) -> dict[str, str]:
    """Check every file of a release against ``SHA256SUMS.json``; raises :class:`CheckpointError` naming a
    changed, missing or unlisted file. Returns the recorded {file: sha256}."""
    return verify_sums(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="checkpoint directory written by `maskflow train`")
    parser.add_argument("dst", help="release directory (e.g. worldmodel/assets/world_model)")
    parser.add_argument("--fp32", action="store_true", help="keep float32 weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing release")
    parser.add_argument("--decoder", metavar="TOKENIZER", default=None,
                        help="a tokenizer trained on src's frozen encoder (train-tokenizer freeze_encoder=true) "
                             "whose decoder replaces src's")
    args = parser.parse_args(argv)
    out = export_checkpoint(args.src, args.dst, half=not args.fp32, overwrite=args.overwrite, decoder=args.decoder)
    total = read_json(out / SUMS_NAME)["bytes"]
    print(f"release written to {out} ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
