"""A tokenizer on disk: ``tokenizer.safetensors`` + ``tokenizer.json``, written, found, checked and read.

Everything downstream (token datasets, world-model checkpoints, the dream env) finds a tokenizer
through :func:`resolve_tokenizer_dir` and rebuilds it with :func:`load_tokenizer`, which checks the
files against the sha256 their JSON records and against what the caller needs. The JSON also
records the tokenizer's encoder and decoder identities (see :mod:`worldmodel.tokenizer.identity`);
:func:`identity_of_dir` computes them from the files, and :func:`same_encoder` decides whether two
tokenizer records give token ids the same meaning. A training run may start from a trained
tokenizer (``init=``): :func:`load_init` copies its weights in.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from envs.common.errors import CheckpointError, ConfigError
from envs.common.files import (
    INTEGRITY_KEY,
    SUMS_NAME,
    load_state_dict_strict,
    load_weights,
    read_format_json,
    read_json,
    save_weights,
    sha256_file,
    verify_files,
    write_sealed_json,
)
from worldmodel.common.assets import is_shipped, shipped_tokenizer
from worldmodel.tokenizer.identity import ENCODER_PREFIXES, tokenizer_identity
from worldmodel.tokenizer.model import FrameTokenizer, TokenizerConfig

FORMAT = "maskflow-tokenizer"
FORMAT_VERSION = 1
WEIGHTS_NAME = "tokenizer.safetensors"
CONFIG_NAME = "tokenizer.json"


def config_digest(cfg: TokenizerConfig) -> str:
    """sha256 of the canonical config JSON; stored in the weights so a swapped JSON is detected."""
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()


def save_tokenizer(model: FrameTokenizer, out_dir: str | os.PathLike,
                   provenance: Mapping[str, Any] | None = None) -> Path:
    """Write ``tokenizer.safetensors`` + ``tokenizer.json`` (config, format version, encoder and decoder
    identities, provenance) atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    prov = dict(model.provenance, **(provenance or {}))
    state = model.state_dict()
    save_weights(out / WEIGHTS_NAME, state, metadata={"format": FORMAT, "config_sha256": config_digest(cfg)})
    write_sealed_json(out / CONFIG_NAME, {
        "format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg.to_dict(),
        "vocab_size": cfg.vocab_size, "token_grid": list(cfg.token_grid), "resolution": cfg.resolution,
        **tokenizer_identity(cfg.to_dict(), state), "provenance": prov,
    }, files=(WEIGHTS_NAME,))
    return out


def resolve_tokenizer_dir(path: str | os.PathLike) -> Path:
    """Accept a tokenizer dir, or a training run dir holding ``tokenizer/``."""
    p = Path(path)
    if not (p / CONFIG_NAME).is_file() and (p / "tokenizer" / CONFIG_NAME).is_file():
        p = p / "tokenizer"
    if not (p / CONFIG_NAME).is_file():
        raise CheckpointError(f"no tokenizer found at {path}: expected {CONFIG_NAME} and {WEIGHTS_NAME} there "
                              "(train one with `maskflow train-tokenizer data=... out=...`)")
    return p


def read_tokenizer_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``tokenizer.json`` without loading weights."""
    return read_format_json(resolve_tokenizer_dir(path) / CONFIG_NAME, "tokenizer config", FORMAT, FORMAT_VERSION,
                            required=("config",), hint="Re-export the tokenizer with this version.")


def load_tokenizer(path: str | os.PathLike, expect: Mapping[str, Any] | TokenizerConfig | None = None,
                   device: str | torch.device = "cpu") -> FrameTokenizer:
    """Rebuild a tokenizer from its directory and check it against what the caller needs.

    ``expect`` holds any of ``resolution``, ``vocab_size``, ``token_grid``, ``downsample`` or other
    config keys (or a whole :class:`TokenizerConfig`); any disagreement raises :class:`CheckpointError`
    naming the key, both values and the file. A missing or corrupt file raises it too. Returns an
    eval-mode model on ``device``.
    """
    p = resolve_tokenizer_dir(path)
    meta = read_tokenizer_meta(p)
    try:
        cfg = TokenizerConfig.from_dict(meta["config"])
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{p / CONFIG_NAME} holds an invalid tokenizer config: {e}") from e
    stated = {"vocab_size": meta.get("vocab_size"), "token_grid": meta.get("token_grid"),
              "resolution": meta.get("resolution")}
    actual = {"vocab_size": cfg.vocab_size, "token_grid": list(cfg.token_grid), "resolution": cfg.resolution}
    if stated != actual:
        raise CheckpointError(f"{p / CONFIG_NAME} is inconsistent: it states {stated} but its config gives {actual}")
    if expect is not None:
        want = expect.to_dict() if isinstance(expect, TokenizerConfig) else dict(expect)
        have = dict(cfg.to_dict(), vocab_size=cfg.vocab_size, token_grid=list(cfg.token_grid))
        for key, value in want.items():
            if key not in have:
                raise ConfigError(f"load_tokenizer: cannot check unknown key {key!r}; valid: {sorted(have)}")
            v = list(value) if isinstance(value, tuple | list) else value
            if have[key] != v:
                raise CheckpointError(f"tokenizer at {p} has {key}={have[key]} but {v} is required here "
                                      f"(data or config mismatch); use a tokenizer trained for {key}={v}")
    verify_tokenizer_files(p, meta)
    state = load_weights(p / WEIGHTS_NAME)
    model = FrameTokenizer(cfg)
    _check_digest(p / WEIGHTS_NAME, cfg)
    load_state_dict_strict(model, state, source=str(p / WEIGHTS_NAME))
    model.provenance = dict(meta.get("provenance") or {})
    return model.to(device).eval()


def verify_tokenizer_files(p: Path, meta: Mapping[str, Any]) -> None:
    """Check the tokenizer's files against the sha256 its JSON records or, for a tokenizer inside a
    release written before JSONs recorded them, against the release's ``SHA256SUMS.json``."""
    seal = meta.get(INTEGRITY_KEY)
    if isinstance(seal, dict):
        verify_files(p, seal.get("files", {}), source=p / CONFIG_NAME)
        return
    sums_path = p.parent / SUMS_NAME
    if sums_path.is_file():
        sums = read_json(sums_path, "release checksums").get("files", {})
        mine = {k.split("/", 1)[1]: v for k, v in sums.items() if k.startswith(p.name + "/")}
        verify_files(p, mine, source=sums_path)


def _check_digest(weights: Path, cfg: TokenizerConfig) -> None:
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        digest = (f.metadata() or {}).get("config_sha256")
    if digest is not None and digest != config_digest(cfg):
        raise CheckpointError(f"{weights} was saved with a different tokenizer config than "
                              f"{weights.parent / CONFIG_NAME}; the two files do not belong together — "
                              "re-export the tokenizer")


def identity_of_dir(path: str | os.PathLike) -> dict[str, str]:
    """``{"weights_sha256", "encoder_sha256", "decoder_sha256"}`` of the tokenizer at ``path`` (a tokenizer
    dir, a train-tokenizer run or a world-model checkpoint), computed from its files after checking them."""
    p = resolve_tokenizer_dir(path)
    meta = read_tokenizer_meta(p)
    verify_tokenizer_files(p, meta)
    cfg = TokenizerConfig.from_dict(meta["config"]).to_dict()      # canonical form: defaults filled in
    return {"weights_sha256": sha256_file(p / WEIGHTS_NAME), **tokenizer_identity(cfg, load_weights(p / WEIGHTS_NAME))}


def encoder_of(record: Mapping[str, Any]) -> str | None:
    """The encoder identity of a tokenizer record (a token dataset's or a model.json's): its
    ``encoder_sha256``, or for an older record the identity of the tokenizer at its ``path`` when that
    file still has the recorded ``weights_sha256``; None when unknown."""
    if record.get("encoder_sha256"):
        return str(record["encoder_sha256"])
    path, want = record.get("path"), record.get("weights_sha256")
    if not path or not want:
        return None
    try:
        ident = identity_of_dir(path)
    except Exception:  # noqa: BLE001  (a moved, deleted or corrupt tokenizer only means "unknown")
        return None
    return ident["encoder_sha256"] if ident["weights_sha256"] == want else None


def same_encoder(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two tokenizer records give token ids the same meaning: equal encoder identities when both
    are known, else (records from before encoder identities) the same whole tokenizer file."""
    if a.get("weights_sha256") and a.get("weights_sha256") == b.get("weights_sha256"):
        return True
    ea, eb = encoder_of(a), encoder_of(b)
    if ea and eb:
        return ea == eb
    return a.get("weights_sha256") == b.get("weights_sha256")


def named_tokenizer(name: str | os.PathLike) -> Path:
    """A shipped model's name ("default", "memory") → the tokenizer shipped inside it; any other value is a
    path, returned unchecked (callers resolve it and name the key in their errors)."""
    return shipped_tokenizer(str(name)) if is_shipped(name) else Path(name)


def init_tokenizer_dir(init: str) -> Path:
    """The tokenizer of ``init=``: a shipped model's name → that model's; else a tokenizer, train-tokenizer run
    or world-model checkpoint directory."""
    return resolve_tokenizer_dir(named_tokenizer(init))


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
