"""What a tokenizer is, split in two: the encoder side (what a token id means) and the decoder side.

A world model is trained on token ids, so it depends only on the tokenizer's **encoder side**: the
encoder and the quantizer (frames → ids, and ids → quantised latents). The decoder only turns those
latents back into pixels, so a better decoder trained on the frozen encoder (``maskflow
train-tokenizer init=... freeze_encoder=true``) can replace the old one under a trained world model
(:func:`worldmodel.model.checkpoint.swap_decoder`), while a different encoder must be refused.

Identity rule. ``encoder_sha256`` is the sha256 of the tokenizer config without the decoder keys,
then, in sorted name order, each ``encoder.*`` / ``quantizer.*`` tensor's name, shape and values
**cast to float32**. ``decoder_sha256`` is the same over the whole config and the ``decoder.*``
tensors. Storage dtype does not enter: an fp32 file and an fp16 file holding the same numbers (the
shipped fp16 release and a tokenizer trained from it, whose frozen encoder is stored as fp32) have
one identity, because they compute the same ids. An fp32 → fp16 export of a *trained* fp32 encoder
rounds its weights, which can move ids that sit on an FSQ bin edge, so it is a different encoder
(as before, when the whole file's sha256 was compared); the export records the identity of what it
wrote. Records written before identities existed carry only ``weights_sha256`` (the whole file);
:func:`worldmodel.tokenizer.files.same_encoder` then compares that, unless it can compute the
encoder identity from the file the record names. This module computes identities from a config and
tensors alone; reading them from a tokenizer's files is :mod:`worldmodel.tokenizer.files`' job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

ENCODER_PREFIXES = ("encoder.", "quantizer.")
DECODER_PREFIXES = ("decoder.",)
DECODER_KEYS = ("decoder_widths", "decoder_res_blocks")


def _digest(config: Mapping[str, Any], state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> str:
    h = hashlib.sha256(json.dumps(dict(config), sort_keys=True).encode())
    for name in sorted(k for k in state if k.startswith(prefixes)):
        t = state[name].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{list(t.shape)}\n".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def tokenizer_identity(config: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``{"encoder_sha256", "decoder_sha256"}`` of a tokenizer config dict (``TokenizerConfig.to_dict()``)
    and its state dict (any dtype, any device)."""
    enc_cfg = {k: v for k, v in config.items() if k not in DECODER_KEYS}
    return {"encoder_sha256": _digest(enc_cfg, state, ENCODER_PREFIXES),
            "decoder_sha256": _digest(config, state, DECODER_PREFIXES)}


def short(sha: str | None) -> str:
    """First 12 hex digits of a sha256, for messages."""
    return (sha or "unknown")[:12]

