"""Self-contained world-model checkpoint directories: everything `dream`, `eval` and the dream env need.

    DIR/model.safetensors   EMA weights of the unwrapped Latte (no DDP / compile prefixes)
    DIR/model.json          format, model config, action space (n + meanings), env id, token grid and
                            vocabulary, the tokenizer's identity, the training config and progress
    DIR/tokenizer/          a copy of the tokenizer the token dataset was made with

``model.json`` is written last (atomically), so a directory with a readable ``model.json`` always
has the weights it describes. It records the sha256 of the weights and of the tokenizer's files and a
digest of its own content (see :func:`envs.common.files.write_sealed_json`); a release also carries
``SHA256SUMS.json``. ``load_world_model(DIR)`` checks all of these, then rebuilds the model and
tokenizer from these files alone and checks that they belong together: the tokenizer's encoder must
be the one the model was trained with (``tokenizer.encoder_sha256``; the whole file's sha256 for
checkpoints that predate it), while its decoder may be a newer one (:func:`swap_decoder`,
``python -m worldmodel.model.export SRC DST --decoder TOKENIZER``). A checkpoint may name only
one of this project's registered env ids (``envs.ENV_IDS``): the id is later given to ``gym.make``,
whose ``module:Env`` form would import any installed module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from envs.common.errors import CheckpointError, ConfigError
from envs.common.files import (
    INTEGRITY_KEY,
    SUMS_NAME,
    atomic_dir,
    check_replaceable,
    load_state_dict_strict,
    load_weights,
    read_format_json,
    read_json,
    save_weights,
    sha256_file,
    verify_files,
    verify_sums,
    write_json,
    write_sealed_json,
)
from worldmodel.common.assets import is_shipped, shipped_checkpoint
from worldmodel.model.latte import Latte, ModelConfig
from worldmodel.tokenizer.files import CONFIG_NAME as TOK_CONFIG
from worldmodel.tokenizer.files import WEIGHTS_NAME as TOK_WEIGHTS
from worldmodel.tokenizer.files import identity_of_dir, load_tokenizer, read_tokenizer_meta, resolve_tokenizer_dir
from worldmodel.tokenizer.identity import short, tokenizer_identity

FORMAT = "maskflow-world-model"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "model.json"
CALIBRATION_NAME = "reward_calibration.json"     # the reward threshold picked for these weights (optional)
CALIBRATION_FORMAT = "maskflow-reward-calibration"
DEFAULT_REWARD_THRESHOLD = 0.5      # the dream's reward threshold for weights without a calibration
TOKENIZER_DIR = "tokenizer"


def config_digest(cfg: ModelConfig) -> str:
    """sha256 of the canonical model-config JSON, stored inside the weights file."""
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()


def resolve_checkpoint(name_or_dir: str | os.PathLike) -> Path:
    """A shipped model's name (``"default"``, ``"memory"``: see :mod:`worldmodel.common.assets`) → its
    directory; otherwise a directory holding ``model.json``."""
    if is_shipped(name_or_dir):
        return shipped_checkpoint(str(name_or_dir))
    p = Path(name_or_dir)
    if (p / CONFIG_NAME).is_file():
        return p
    if (p / "state").is_dir():
        raise CheckpointError(f"{p} is a training run that has not exported a model yet (no {CONFIG_NAME}); "
                              "wait for its first checkpoint (ckpt_every steps) or let it finish")
    raise CheckpointError(f"no world model found at {p}: expected {CONFIG_NAME} and {WEIGHTS_NAME} "
                          "(train one with `maskflow train data=TOKENS out=DIR`)")


def _copy_tokenizer(src: Path, dst: Path) -> None:
    src = resolve_tokenizer_dir(src)
    if (dst / TOK_WEIGHTS).is_file() and sha256_file(dst / TOK_WEIGHTS) == sha256_file(src / TOK_WEIGHTS) \
            and (dst / TOK_CONFIG).read_bytes() == (src / TOK_CONFIG).read_bytes():
        return
    with atomic_dir(dst) as tmp:
        for name in (TOK_CONFIG, TOK_WEIGHTS):
            shutil.copy2(src / name, tmp / name)


def save_world_model(out_dir: str | os.PathLike, cfg: ModelConfig, weights: Mapping[str, torch.Tensor], *,
                     action_meanings: list[str], env_id: str, tokenizer_dir: str | os.PathLike | None,
                     train_config: Mapping[str, Any] | None = None,
                     extra: Mapping[str, Any] | None = None) -> Path:
    """Write a self-contained checkpoint directory (weights, tokenizer copy, then ``model.json``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_record = None
    if tokenizer_dir is not None:
        _copy_tokenizer(Path(tokenizer_dir), out / TOKENIZER_DIR)
        tmeta = read_tokenizer_meta(out / TOKENIZER_DIR)
        if tmeta["vocab_size"] != cfg.vocab_size or list(tmeta["token_grid"]) != list(cfg.token_grid):
            raise CheckpointError(f"tokenizer {tokenizer_dir} (vocabulary {tmeta['vocab_size']}, grid "
                                  f"{tmeta['token_grid']}) does not match the model (vocabulary {cfg.vocab_size}, "
                                  f"grid {list(cfg.token_grid)})")
        tok_record = {"dir": TOKENIZER_DIR, "source": str(tokenizer_dir), **identity_of_dir(out / TOKENIZER_DIR)}
    save_weights(out / WEIGHTS_NAME, weights, metadata={"format": FORMAT, "config_sha256": config_digest(cfg)})
    write_sealed_json(out / CONFIG_NAME, {
        "format": FORMAT, "format_version": FORMAT_VERSION, "model": cfg.to_dict(),
        "action_space": {"n": len(action_meanings), "meanings": list(action_meanings)},
        "env_id": env_id, "token_grid": list(cfg.token_grid), "vocab_size": cfg.vocab_size,
        "mask_id": cfg.mask_id, "window": cfg.max_frames, "temporal": cfg.temporal,
        "tokenizer": tok_record, "train_config": dict(train_config or {}), **dict(extra or {}),
    }, files=sealed_files(out))
    return out


def sealed_files(root: Path) -> tuple[str, ...]:
    """The files a checkpoint's ``model.json`` records the sha256 of (relative to the checkpoint): the
    weights. The tokenizer's files are checked by its own ``tokenizer.json`` and, against swaps, by
    the ``tokenizer.weights_sha256`` that ``model.json`` records."""
    return (WEIGHTS_NAME,)


def check_env_id(env_id: Any, source: Path) -> None:
    """A checkpoint may name one of this project's registered envs, or none ("" or a dataset label
    such as "synthetic" that is not a Gymnasium id); never ``module:Env`` or another package's id."""
    import envs

    if env_id in (None, "") or env_id in envs.ENV_IDS:
        return
    registry = envs.registry if envs.registry is not None else {}      # no gymnasium (a bare GPU machine)
    if not isinstance(env_id, str) or ":" in env_id or "/" in env_id or env_id in registry:
        raise CheckpointError(f"{source} names env_id {env_id!r}, which is not one of this project's envs "
                              f"({', '.join(envs.ENV_IDS)}); a checkpoint may name only those")


def read_world_model_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``model.json`` of a checkpoint directory, without loading weights."""
    p = resolve_checkpoint(path)
    meta = read_format_json(p / CONFIG_NAME, "world-model config", FORMAT, FORMAT_VERSION, required=("model",))
    check_env_id(meta.get("env_id"), p / CONFIG_NAME)
    return meta


def verify_checkpoint(p: Path, meta: dict[str, Any]) -> None:
    """Check a checkpoint's files against their recorded sha256: a release's ``SHA256SUMS.json``, and the
    sums in ``model.json``; a checkpoint written before either existed loads with a warning."""
    summed = verify_sums(p) if (p / SUMS_NAME).is_file() else {}
    seal = meta.get(INTEGRITY_KEY)
    if isinstance(seal, dict):             # a file SHA256SUMS.json already checked is not hashed again
        verify_files(p, {k: v for k, v in seal.get("files", {}).items() if summed.get(k) != v},
                     source=p / CONFIG_NAME)
    elif not summed:
        warnings.warn(f"{p} records no checksums (written by an older version), so corruption cannot be "
                      "detected; re-export it with this version", stacklevel=3)


def load_world_model(path: str | os.PathLike, device: str | torch.device = "cpu"
                     ) -> tuple[Latte, Any, dict[str, Any]]:
    """Rebuild (model in eval mode, tokenizer or None, meta) from a checkpoint directory or "default".

    Raises :class:`CheckpointError` naming the file for a missing, corrupt or mismatched part.
    """
    p = resolve_checkpoint(path)
    meta = read_world_model_meta(p)
    verify_checkpoint(p, meta)
    try:
        cfg = ModelConfig(**meta["model"])
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{p / CONFIG_NAME} holds an invalid model config: {e}") from e
    state = load_weights(p / WEIGHTS_NAME, device="cpu")
    from safetensors import safe_open

    with safe_open(str(p / WEIGHTS_NAME), framework="pt") as f:
        digest = (f.metadata() or {}).get("config_sha256")
    if digest is not None and digest != config_digest(cfg):
        raise CheckpointError(f"{p / WEIGHTS_NAME} was saved for a different model config than "
                              f"{p / CONFIG_NAME}; the two files do not belong together")
    model = Latte(cfg)
    load_state_dict_strict(model, state, source=str(p / WEIGHTS_NAME))
    tokenizer = None
    rec = meta.get("tokenizer")
    if rec is not None:
        tdir = p / rec.get("dir", TOKENIZER_DIR)
        _check_tokenizer_record(rec, tdir, p / CONFIG_NAME)
        tokenizer = load_tokenizer(tdir, expect={"vocab_size": cfg.vocab_size, "token_grid": list(cfg.token_grid)},
                                   device=device)
        # callers compare the encoder identity with token datasets' (older model.json files lack it)
        meta["tokenizer"] = {**tokenizer_identity(tokenizer.cfg.to_dict(), tokenizer.state_dict()), **rec}
    calibration = read_reward_calibration(p, meta)
    if calibration is not None:
        meta["reward_calibration"] = calibration
    meta["path"] = str(p)
    return model.to(device).eval(), tokenizer, meta


def write_reward_calibration(path: str | os.PathLike, threshold: float, record: Mapping[str, Any]) -> Path:
    """Write ``CALIBRATION_NAME`` into the checkpoint ``path``: the dream's reward threshold for these weights
    (``maskflow calibrate``), sealed with the weights' sha256 so that it never applies to other weights.
    In a release (``SHA256SUMS.json``), whose every file is listed, the sums are checked first and then
    rewritten to list the calibration too, so that the release stays verifiable."""
    p = resolve_checkpoint(path)
    out = p / CALIBRATION_NAME
    release = (p / SUMS_NAME).is_file()
    if release:                   # bless nothing that was already changed; an older calibration that predates
        verify_sums(p, unlisted_ok=(CALIBRATION_NAME,))   # listing in the sums is this project's and replaced
    write_sealed_json(out, {"format": CALIBRATION_FORMAT, "format_version": 1, "reward_threshold": float(threshold),
                            **dict(record)}, files=(WEIGHTS_NAME,))
    if release:
        sums = read_json(p / SUMS_NAME, what="release checksums")
        sums["files"][CALIBRATION_NAME] = sha256_file(out)
        sums["bytes"] = sum((p / f).stat().st_size for f in sums["files"])
        write_json(p / SUMS_NAME, sums)
    return out


def read_reward_calibration(p: Path, meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's reward calibration, or None without one; :class:`CheckpointError` naming the file
    when it is corrupt or was made for other weights (after a fine-tune, say)."""
    f = p / CALIBRATION_NAME
    if not f.is_file():
        return None
    cal = read_format_json(f, "reward calibration", CALIBRATION_FORMAT, 1, required=("reward_threshold",))
    made_for = cal.get(INTEGRITY_KEY, {}).get("files", {}).get(WEIGHTS_NAME)
    seal = meta.get(INTEGRITY_KEY, {})
    weights = seal.get("files", {}).get(WEIGHTS_NAME) if isinstance(seal, dict) else None
    if made_for != (weights or sha256_file(p / WEIGHTS_NAME)):
        raise CheckpointError(f"{f} was made for other weights than {p / WEIGHTS_NAME}; run `maskflow calibrate "
                              f"checkpoint={p}` again or delete it (the dream then uses the 0.5 threshold)")
    t = cal["reward_threshold"]
    if not isinstance(t, (int, float)) or not 0 < t < 1:
        raise CheckpointError(f"{f}: reward_threshold={t!r} must lie in (0, 1)")
    return cal


def calibrated_threshold(calibration: Mapping[str, Any] | None) -> float:
    """The dream's reward threshold: the calibrated one (``maskflow calibrate``), else 0.5."""
    return float(calibration["reward_threshold"]) if calibration else DEFAULT_REWARD_THRESHOLD


def _check_tokenizer_record(rec: Mapping[str, Any], tdir: Path, source: Path) -> None:
    """Refuse a tokenizer whose token ids are not those the model was trained on: a different encoder
    (``encoder_sha256``), or, for a record that predates encoder identities, a different file."""
    if not (tdir / TOK_WEIGHTS).is_file():
        return                                        # load_tokenizer names the missing file
    if rec.get("weights_sha256") and sha256_file(tdir / TOK_WEIGHTS) == rec["weights_sha256"]:
        return                                        # the very file it was trained with
    if rec.get("encoder_sha256"):
        try:
            have = identity_of_dir(tdir)["encoder_sha256"]
        except CheckpointError as e:
            raise CheckpointError(f"{tdir / TOK_WEIGHTS} is not the tokenizer this model was trained with (sha256 "
                                  f"differs from {source}) and cannot be checked for the same encoder: {e}") from e
        if have != rec["encoder_sha256"]:
            raise CheckpointError(f"{tdir} has a different encoder (encoder sha256 {short(have)}…) than the "
                                  f"tokenizer this model was trained with ({short(rec['encoder_sha256'])}… in "
                                  f"{source}): the token ids would mean other things; restore the original "
                                  "tokenizer/ (only its decoder may be replaced)")
    elif rec.get("weights_sha256"):
        raise CheckpointError(f"{tdir / TOK_WEIGHTS} is not the tokenizer this model was trained with (sha256 "
                              f"differs from {source}, which predates encoder identities, so the whole file must "
                              "match); restore the original tokenizer/, or swap its decoder with "
                              "worldmodel.model.checkpoint.swap_decoder, which checks the encoder")


def swap_decoder(checkpoint: str | os.PathLike, tokenizer_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 overwrite: bool = False) -> Path:
    """Write ``out_dir``: checkpoint ``checkpoint``'s world model with the tokenizer at ``tokenizer_dir``,
    whose encoder must be the checkpoint tokenizer's (e.g. a decoder trained with ``maskflow
    train-tokenizer init=CHECKPOINT freeze_encoder=true``). The token ids, hence the world model, are
    unchanged; only the frames they decode to differ. Returns ``out_dir``.

    Refuses (:class:`CheckpointError`) a tokenizer with a different encoder, a checkpoint whose own
    tokenizer does not match its record, and a non-empty ``out_dir`` unless ``overwrite`` (which
    replaces only a world-model checkpoint).
    """
    src = resolve_checkpoint(checkpoint)
    meta = read_world_model_meta(src)
    verify_checkpoint(src, meta)
    rec = meta.get("tokenizer")
    if rec is None:
        raise CheckpointError(f"{src} carries no tokenizer, so there is no encoder to keep; nothing to swap")
    old_dir = src / rec.get("dir", TOKENIZER_DIR)
    _check_tokenizer_record(rec, old_dir, src / CONFIG_NAME)          # the old file is the trained-with one
    old = identity_of_dir(old_dir)
    new_dir = resolve_tokenizer_dir(tokenizer_dir)
    new = identity_of_dir(new_dir)
    if new["encoder_sha256"] != old["encoder_sha256"]:
        raise CheckpointError(f"{new_dir} has a different encoder (encoder sha256 {short(new['encoder_sha256'])}…) "
                              f"than {src}'s tokenizer ({short(old['encoder_sha256'])}…): the token ids would mean "
                              "other things. Train a decoder on this encoder: `maskflow train-tokenizer "
                              f"init={src} freeze_encoder=true ...`")
    cfg = ModelConfig(**meta["model"])
    load_tokenizer(new_dir, expect={"vocab_size": cfg.vocab_size, "token_grid": list(cfg.token_grid)})
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CheckpointError(f"{out} is not empty; choose another output or pass overwrite=True")
        check_replaceable(out, own=lambda q: (q / CONFIG_NAME).is_file(), what=f"a world model ({CONFIG_NAME})",
                          inputs=(src, new_dir))
    with atomic_dir(out) as tmp:
        shutil.copy2(src / WEIGHTS_NAME, tmp / WEIGHTS_NAME)
        _copy_tokenizer(new_dir, tmp / TOKENIZER_DIR)
        for key in (INTEGRITY_KEY, "path"):
            meta.pop(key, None)
        swap = {"checkpoint": str(src), "old_tokenizer": {k: old[k] for k in ("weights_sha256", "decoder_sha256")}}
        if "release" in meta:                          # not a release any more: no SHA256SUMS.json here
            swap["release"] = meta.pop("release")
        meta["decoder_swap"] = swap
        meta["tokenizer"] = {**rec, "dir": TOKENIZER_DIR, "source": str(tokenizer_dir), **new}
        write_sealed_json(tmp / CONFIG_NAME, meta, files=sealed_files(tmp))
        load_world_model(tmp)                          # refuse to write something that does not load
    return out
