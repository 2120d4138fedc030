"""Where the shipped world model lives: ``checkpoint=default`` and ``init=default`` point here.

The release (``model.json``, ``model.safetensors`` and its ``tokenizer/``) is installed under
``worldmodel/assets/world_model``; the environment variable ``MASKFLOW_DEFAULT_CHECKPOINT`` points
``default`` somewhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

from envs.common.errors import CheckpointError

DEFAULT_CHECKPOINT = Path(__file__).parents[1] / "assets" / "world_model"
DEFAULT_ENV = "MASKFLOW_DEFAULT_CHECKPOINT"
SHIPPED_TOKENIZER = "tokenizer"       # the tokenizer folder inside a world-model checkpoint


def default_checkpoint() -> Path:
    """The default world model's folder; :class:`CheckpointError` when none is installed there."""
    p = Path(os.environ.get(DEFAULT_ENV) or DEFAULT_CHECKPOINT)
    if not (p / "model.json").is_file():
        raise CheckpointError(f"no default world model is installed at {p}; pass checkpoint=DIR (a "
                              f"`maskflow train` output directory) or set {DEFAULT_ENV}")
    return p


def default_tokenizer() -> Path:
    """The tokenizer of the default world model (``init=default``, ``tokenize checkpoint=default``)."""
    return default_checkpoint() / SHIPPED_TOKENIZER
