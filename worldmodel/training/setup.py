"""What a world-model run is built from, checked before the first step: processes, data, model, init.

The training loop (:mod:`worldmodel.training.loop`) calls these once: the torchrun environment and
autocast dtype, the dataset directories of ``data=``, the tokenizer to ship beside the model, a fresh
model sized from the dataset or the model of ``init=`` (checked against the dataset), and on resume
the check that the data is the run's own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from envs.common.errors import ConfigError, DatasetError
from envs.common.files import sha256_file
from envs.loops import action_yaw
from worldmodel.model.checkpoint import WEIGHTS_NAME, load_world_model, read_world_model_meta, resolve_checkpoint
from worldmodel.model.latte import Latte, model_config
from worldmodel.tokenizer.files import WEIGHTS_NAME as TOK_WEIGHTS
from worldmodel.tokenizer.files import same_encoder
from worldmodel.training.data import TokenClips


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process under torchrun; (0, 1, 0) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where it pays: CUDA, or a CPU with native bf16 dot products (AVX512-BF16 / AMX)."""
    if precision == "fp32":
        return None
    if precision not in ("auto", "bf16"):
        raise ConfigError(f"precision={precision!r}; use auto, bf16 or fp32")
    if precision == "bf16" or device.type == "cuda":
        return torch.bfloat16
    try:
        native = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return torch.bfloat16 if native else None


def data_roots(data: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The token dataset directories of ``data=``: one directory or a list of them."""
    items = [data] if isinstance(data, (str, os.PathLike)) else list(data or [])
    roots = [Path(d) for d in items if str(d)]
    if not roots:
        raise ConfigError("train needs data=DIR (a token dataset) or data=[DIR,DIR,...]")
    if len({r.resolve() for r in roots}) != len(roots):
        raise ConfigError(f"data= names a dataset twice: {[str(r) for r in roots]}")
    return roots


def tokenizer_dir(override: str, manifest: Mapping[str, Any]) -> Path | None:
    """The tokenizer to ship beside the model: ``tokenizer=`` if given, else the one that made the dataset."""
    if override:
        return Path(override)
    rec = manifest.get("tokenizer")
    if not rec:
        return None
    p = Path(rec["path"])
    if not p.is_dir():
        raise DatasetError(f"the tokenizer that made this dataset is not at {p} any more; pass tokenizer=DIR")
    return p


def heading_settings(clips: TokenClips, heading_pairs: int) -> dict[str, Any]:
    """The model keys of heading rotary (``heading_pairs`` > 0): the pairs and the degrees each of the dataset's
    actions turns the camera; {} when off."""
    if heading_pairs <= 0:
        return {}
    return {"heading_pairs": heading_pairs, "action_yaw": action_yaw(clips.action_meanings, clips.env_kwargs)}


def new_model(clips: TokenClips, size: str, vocab_size: int, clip_len: int, temporal: str,
              overrides: Mapping[str, int], heading_pairs: int = 0) -> Latte:
    """A fresh model of preset ``size`` (with ``overrides`` of dim / depth / heads / patch) for the dataset's
    token grid and actions; ``vocab_size`` 0 takes the vocabulary of the dataset's tokenizer; ``heading_pairs``
    > 0 turns on heading rotary."""
    rec = clips.manifest.get("tokenizer") or {}
    vocab = vocab_size or rec.get("vocab_size") or 0
    if not vocab:
        raise DatasetError("the dataset records no tokenizer; pass vocab_size=N (the number of token ids)")
    if clips.max_token() >= vocab:
        raise DatasetError(f"the dataset holds token id {clips.max_token()} but the vocabulary has {vocab} ids")
    mcfg = model_config(size, vocab_size=int(vocab), token_grid=clips.token_grid, max_frames=clip_len,
                        num_actions=clips.num_actions, temporal=temporal, **overrides,
                        **heading_settings(clips, heading_pairs))
    return Latte(mcfg)


def model_from_init(init: str, clips: TokenClips, data: str, clip_len: int, temporal: str,
                    overrides: Mapping[str, int], heading_pairs: int = 0, new_tokenizer: bool = False,
                    keep_token_io: bool = False) -> Latte:
    """The model of checkpoint ``init`` (its architecture and weights), checked against the dataset.

    The weights only make sense on tokens of the same tokenizer and actions of the same action space,
    so every mismatch is an error that names it; the architecture is the checkpoint's, except what no
    weight depends on: a longer window and ``heading_pairs`` > 0 (heading rotary; 0 keeps the checkpoint's).
    ``new_tokenizer``: the dataset's ids come from another encoder (same vocabulary and grid) on purpose;
    the ids' embedding and the output layer restart (:meth:`Latte.reset_token_io`), the rest carries over;
    with ``keep_token_io`` they carry over too (an encoder trained on from the init's: an FSQ id names the same code
    in both, and most ids of a frame agree).
    """
    if overrides:
        raise ConfigError(f"init={init} fixes the architecture; drop {', '.join(f'{k}=' for k in overrides)} "
                          "(the model is the checkpoint's)")
    model, _, meta = load_world_model(init)
    src, mcfg = meta["path"], model.cfg
    rec = clips.manifest.get("tokenizer") or {}
    problems = []
    if mcfg.temporal != temporal:
        problems.append(f"temporal {mcfg.temporal} vs temporal={temporal}")
    if mcfg.max_frames != clip_len and not (mcfg.temporal == "causal" and clip_len > mcfg.max_frames):
        problems.append(f"window {mcfg.max_frames} frames vs clip_len={clip_len} (a causal model's window may only "
                        "grow)")
    if list(mcfg.token_grid) != list(clips.token_grid):
        problems.append(f"token grid {list(mcfg.token_grid)} vs the dataset's {list(clips.token_grid)}")
    if rec.get("vocab_size") and mcfg.vocab_size != rec["vocab_size"]:
        problems.append(f"vocabulary {mcfg.vocab_size} vs the dataset's {rec['vocab_size']}")
    if list(meta.get("action_space", {}).get("meanings", [])) != list(clips.action_meanings):
        problems.append(f"actions {meta.get('action_space', {}).get('meanings')} vs the dataset's "
                        f"{list(clips.action_meanings)}")
    tok = meta.get("tokenizer") or {}      # load_world_model fills in its encoder identity
    same = not (tok.get("weights_sha256") and rec.get("weights_sha256")) or same_encoder(tok, rec)
    if not same and not new_tokenizer:
        problems.append("its tokenizer's encoder is not the one that made this dataset, so the token ids mean "
                        "different things (new_tokenizer=true carries the model over to the new ids)")
    if same and new_tokenizer:
        problems.append("new_tokenizer=true, but the dataset's tokens come from the init's own encoder (or carry no "
                        "tokenizer record); drop new_tokenizer")
    if problems:
        raise ConfigError(f"init={init} ({src}) does not fit data={data}: " + "; ".join(problems))
    if new_tokenizer and not keep_token_io:
        model.reset_token_io()
    heading = heading_settings(clips, heading_pairs)
    if clip_len != mcfg.max_frames or heading:
        # no weight depends on the window or the heading (rotary), so the same weights serve both
        wide = Latte(replace(mcfg, max_frames=clip_len, **heading))
        wide.load_state_dict(model.state_dict())
        model = wide
    return model.float().train()


def init_record(init: str, tokenizer_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Where a fine-tuned model started (``init=``; {} for a fresh one): recorded in its model.json. A fine-tune
    whose tokenizer (``tokenizer_dir``) is the init's keeps the init's decoder-swap record too."""
    if not init:
        return {}
    p = resolve_checkpoint(init)
    meta = read_world_model_meta(p)
    rec: dict[str, Any] = {"init": {"checkpoint": init, "path": str(p), "weights_sha256": sha256_file(p / WEIGHTS_NAME),
                                    "train_step": meta.get("train_step")}}
    if "decoder_swap" in meta and tokenizer_dir:        # hashed only where there is a history to keep
        weights = Path(tokenizer_dir) / TOK_WEIGHTS
        if weights.is_file() and sha256_file(weights) == (meta.get("tokenizer") or {}).get("weights_sha256"):
            rec["decoder_swap"] = meta["decoder_swap"]
    return rec


def check_same_data(out: Path, meta: Mapping[str, Any], clips: TokenClips) -> None:
    """A resumed run must see the training clips it started with (same datasets, same order): its batch
    order and learning-rate schedule refer to them. States written before this check carry no record."""
    saved = meta.get("data")
    if saved is None or [d["sha256"] for d in saved] == [d["sha256"] for d in clips.fingerprint]:
        return

    def names(sets: list[dict]) -> str:
        return "[" + ", ".join(f"{d['dataset']} ({d['episodes']} episodes, {d['frames']} frames)" for d in sets) + "]"

    raise ConfigError(f"{out} was trained on {names(saved)} but this run was given {names(clips.fingerprint)}; "
                      "resume with the same data= (same datasets, same order), or train on new data in a new "
                      f"out= with init={out}")


# Keys that only say how a run is watched, paced or placed: a resume may change them without notice.
RUN_ONLY_KEYS = frozenset({"out", "resume", "progress", "tensorboard", "threads", "nice", "device", "eval_every",
                           "eval_clips", "log_every", "ckpt_every", "keep_states", "max_minutes", "compile"})


def changed_settings(meta: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """The training settings a resumed run changes against its saved state, as "key saved -> now" (extending a
    run with more ``steps`` is allowed, but it moves the learning-rate schedule, so it should not pass unseen)."""
    saved = meta.get("config") or {}
    return [f"{k} {saved[k]!r} -> {v!r}" for k, v in config.items()
            if k in saved and k not in RUN_ONLY_KEYS and saved[k] != v]
