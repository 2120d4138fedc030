"""Frames dataset → token dataset, with the tokenizer that made it recorded in the manifest.

The token dataset has the frames dataset's layout (same splits, shard files, episode ids and
attributes; kind "tokens"): ``tokens`` (L, h, w) uint16 plus ``actions``, ``rewards``,
``terminated`` and ``truncated`` copied. Each shard is written atomically and recorded in the
manifest with the sha256 of the source shard it came from, so an interrupted run resumes by
skipping shards whose output verifies and whose source is unchanged. An existing output made from
other frames or by another tokenizer is never overwritten unless ``overwrite=True``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from envs.common.config_check import DEVICE, THREADS, Check, at_least, check_config
from envs.common.errors import ConfigError, DatasetError
from envs.common.files import check_replaceable, is_temp_name, remove_entries
from envs.dataset import (
    DATASET_ENTRIES,
    EpisodeDataset,
    add_shard,
    is_dataset,
    load_manifest,
    new_manifest,
    shard_is_valid,
    write_manifest,
    write_shard,
)
from worldmodel.common import threads
from worldmodel.common.device import require_compiler, resolve_device
from worldmodel.common.threads import governor
from worldmodel.tokenizer.codec import encode_frames
from worldmodel.tokenizer.files import (
    identity_of_dir,
    load_tokenizer,
    named_tokenizer,
    read_tokenizer_meta,
    resolve_tokenizer_dir,
    same_encoder,
)

COPIED = ("actions", "rewards", "terminated", "truncated", "poses")


@dataclass
class TokenizeConfig:
    """Settings of one tokenization (the keys of ``configs/tokenize.yaml``)."""

    data: str                       # frames dataset directory
    checkpoint: str                 # tokenizer dir, a train-tokenizer run dir, a world-model dir, or default
    out: str = "runs/tokens"        # token dataset directory
    batch_size: int = 0             # frames encoded per forward pass (0: 16 on a CPU, 256 on a GPU; codec.pass_size)
    device: str = "cpu"             # cpu | cuda[:N] | auto
    compile: bool = False           # torch.compile the encoder: the same ids, ~1.4× the frames/s (needs a C++ compiler)
    overwrite: bool = False         # replace a token dataset made from other frames or by another tokenizer
    threads: int = 0                # torch CPU threads (0 = adapt to the cores other processes leave free)

    # allowed ranges and choices (types come from the annotations above; see envs.common.config_check)
    CHECKS: ClassVar[dict[str, Check]] = {"batch_size": at_least(0, "0 = by device"), "device": DEVICE,
                                          "threads": THREADS}

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first key of a wrong type or out of its range."""
        check_config(self)


def tokenizer_record(tokenizer_dir: str | os.PathLike) -> dict[str, Any]:
    """What identifies a tokenizer in a token dataset's manifest: its JSON, the sha256 of its weights and
    its encoder / decoder identities (the tokens depend only on the encoder; see tokenizer_identity)."""
    p = resolve_tokenizer_dir(tokenizer_dir)
    meta = read_tokenizer_meta(p)
    return {"path": str(p.resolve()), **identity_of_dir(p),
            "vocab_size": meta["vocab_size"], "token_grid": meta["token_grid"], "resolution": meta["resolution"],
            "config": meta["config"], "format_version": meta["format_version"]}


def _overlaps(a: Path, b: Path) -> bool:
    """Whether two paths are the same folder or one lies inside the other."""
    a, b = a.expanduser().resolve(), b.expanduser().resolve()
    return a == b or a in b.parents or b in a.parents


def _prepare_output(out: Path, src_root: Path, record: dict[str, Any], overwrite: bool) -> dict | None:
    """Return the existing manifest to resume from, None to start fresh; refuse a different output."""
    mpath = out / "manifest.json"
    if not mpath.exists():
        leftovers = [p for p in out.iterdir() if not p.name.startswith(".")] if out.is_dir() else []
        if leftovers:       # overwrite=true never deletes what tokenize did not write
            raise DatasetError(f"{out} exists and is not a token dataset ({len(leftovers)} entries); "
                               "choose another out= (overwrite=true only replaces a token dataset)")
        return None
    try:
        old = load_manifest(out)
    except DatasetError:
        old = None
    # a tokenizer with the same encoder gives the same ids, whatever its decoder: resume, recording it
    same = (old is not None and old.get("kind") == "tokens"
            and same_encoder(old.get("tokenizer") or {}, record)
            and old.get("source", {}).get("path") == str(src_root.resolve()))
    if same:
        old["tokenizer"] = record
        return old
    if not overwrite:
        why = "is not a token dataset" if old is None or old.get("kind") != "tokens" else \
            "was made by another tokenizer or from other frames"
        raise DatasetError(f"{out} already exists and {why}; choose another out= or pass overwrite=true to replace it")
    # replace only a token dataset tokenize wrote, never a frames dataset or anything else
    check_replaceable(out, own=lambda p: is_dataset(p, "tokens"), what="a token dataset (manifest.json)",
                      allowed=lambda name: name in DATASET_ENTRIES or is_temp_name(name))
    remove_entries(out, [e.name for e in out.iterdir()])
    return None


def tokenize_dataset(frames_root: str | os.PathLike, tokenizer_dir: str | os.PathLike, out_root: str | os.PathLike,
                     batch_size: int = 0, device: str = "cpu", overwrite: bool = False,
                     progress: bool = True, compile: bool = False) -> Path:
    """Tokenize every split of a frames dataset into ``out_root``; resumable; returns ``out_root``."""
    from tqdm.auto import tqdm

    TokenizeConfig(str(frames_root), str(tokenizer_dir), str(out_root), batch_size=batch_size, device=device,
                   compile=compile, overwrite=overwrite).validate()
    if compile:                                 # before any reading: a missing compiler is known now
        require_compiler(resolve_device(device), "compile=true")

    src_root, out = Path(frames_root), Path(out_root)
    for name, path in (("data", src_root), ("checkpoint", Path(tokenizer_dir))):
        if _overlaps(out, path):
            raise ConfigError(f"out={out} overlaps the input {name}={path}; the token dataset needs a folder of "
                              "its own (outside the frames dataset and the tokenizer)")
    src = load_manifest(src_root)
    if src["kind"] != "frames":
        raise DatasetError(f"{src_root} is a {src['kind']!r} dataset; tokenize needs a frames dataset")
    if not src.get("complete", True):
        raise DatasetError(f"{src_root} is incomplete (collection still running or interrupted); finish it first")
    res = int(src["obs_shape"][0])
    model = load_tokenizer(tokenizer_dir, expect={"resolution": res}, device=resolve_device(device))
    if compile:
        model.compile_nets(decoder=False)
    record = tokenizer_record(tokenizer_dir)
    manifest = _prepare_output(out, src_root, record, overwrite)
    if manifest is None:
        manifest = new_manifest("tokens", src["env_id"], src["action_meanings"], list(model.token_grid),
                                config={"batch_size": batch_size})
        # the env settings travel along so a trained model can open a live env that looks like its data
        manifest.update(tokenizer=record, source={"path": str(src_root.resolve()), "obs_shape": src["obs_shape"],
                                                  "env_kwargs": src.get("config", {}).get("env_kwargs", {})})
    manifest["complete"] = False
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, manifest)
    done = {s["file"]: s for s in manifest["shards"]}
    total = sum(s["frames"] for s in src["shards"])
    bar = tqdm(total=total, desc="tokenize", unit="frame", disable=not progress, dynamic_ncols=True)
    for split in sorted({s["split"] for s in src["shards"]}):
        ds = EpisodeDataset(src_root, split)
        for si, entry in enumerate(ds.shards):
            prev = done.get(entry["file"])
            if prev and prev.get("source_sha256") == entry["sha256"] and shard_is_valid(out, prev):
                bar.update(entry["frames"])
                continue
            episodes = []
            for i in (i for i, (s, _) in enumerate(ds.index) if s == si):
                ep = ds.episode(i)
                threads.tick()
                ids = encode_frames(model, ep["frames"], batch_size).cpu().numpy()
                assert ids.size == 0 or (ids.min() >= 0 and ids.max() < model.vocab_size), "id outside vocabulary"
                tokens = ids.astype(np.uint16)                  # the token files' dtype
                episodes.append({"id": ep["id"], "tokens": tokens, "attrs": ep["attrs"],
                                 **{k: ep[k] for k in COPIED if k in ep}})
                bar.update(len(tokens))
            write_shard(out / entry["file"], episodes, "tokens", src["env_id"], src["action_meanings"])
            add_shard(out, manifest, entry["file"], split, episodes)
            # remember which source shard this came from, so a changed source is re-tokenized on resume
            next(s for s in manifest["shards"] if s["file"] == entry["file"])["source_sha256"] = entry["sha256"]
            write_manifest(out, manifest)
        ds.close()
    bar.close()
    manifest["complete"] = True
    write_manifest(out, manifest)
    return out


def run_tokenize(cfg: Any) -> Path:
    """CLI entry (`maskflow tokenize data=DIR checkpoint=DIR out=DIR`)."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True)
    c["checkpoint"] = str(named_tokenizer(c["checkpoint"]))     # "default"/"memory": the tokenizer shipped inside
    governor(int(c.get("threads") or 0))      # 0: adapt to the cores other processes leave free
    out = tokenize_dataset(c["data"], c["checkpoint"], c["out"], batch_size=int(c["batch_size"]),
                           device=str(c["device"]), overwrite=bool(c["overwrite"]), compile=bool(c["compile"]))
    m = load_manifest(out)
    print(f"token dataset written to {out}: {sum(s['frames'] for s in m['shards'])} frames, "
          f"{len(m['shards'])} shards, grid {m['obs_shape']}, vocabulary {m['tokenizer']['vocab_size']}")
    return out
