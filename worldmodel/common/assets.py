"""Where the shipped world models live: ``checkpoint=default`` / ``checkpoint=memory`` (and ``init=``) point here.

Each release (``model.json``, ``model.safetensors``, its ``tokenizer/`` and ``SHA256SUMS.json``) is installed
under ``worldmodel/assets/``:

* ``default``: release 1 (k = 16), under ``world_model``; the environment variable
  ``MASKFLOW_DEFAULT_CHECKPOINT`` points ``default`` somewhere else;
* ``memory``: the memory model (k = 32, heading rotary, return-aligned clips and dreamed returns: it comes
  back to a view after turning away and back), under ``world_model_memory``.

A folder of the same name in the working directory is not shadowed silently: the name is refused as
ambiguous (give ``./memory`` for the folder).
"""

from __future__ import annotations

import os
from pathlib import Path

from envs.common.errors import CheckpointError

ASSETS = Path(__file__).parents[1] / "assets"
SHIPPED = {"default": "world_model", "memory": "world_model_memory"}   # checkpoint= name -> folder under ASSETS
DEFAULT_CHECKPOINT = ASSETS / SHIPPED["default"]
MEMORY_CHECKPOINT = ASSETS / SHIPPED["memory"]
DEFAULT_ENV = "MASKFLOW_DEFAULT_CHECKPOINT"
SHIPPED_TOKENIZER = "tokenizer"       # the tokenizer folder inside a world-model checkpoint


def is_shipped(name: str | os.PathLike) -> bool:
    """Whether ``name`` is the name of a shipped model rather than a path."""
    return str(name) in SHIPPED


def shipped_checkpoint(name: str = "default") -> Path:
    """The folder of the shipped model ``name``; :class:`CheckpointError` when it is not installed, or when a
    folder of that name in the working directory makes the name ambiguous."""
    if name not in SHIPPED:
        raise CheckpointError(f"checkpoint={name}: not a shipped model; shipped are {', '.join(SHIPPED)}")
    if (Path(name) / "model.json").is_file():
        raise CheckpointError(f"checkpoint={name} is ambiguous: it names a shipped model and the folder ./{name} "
                              f"holds a world model too; give ./{name} for the folder")
    env = os.environ.get(DEFAULT_ENV) if name == "default" else None
    p = Path(env or ASSETS / SHIPPED[name])
    if not (p / "model.json").is_file():
        hint = f" or set {DEFAULT_ENV}" if name == "default" else ""
        raise CheckpointError(f"no {name} world model is installed at {p}; pass checkpoint=DIR (a "
                              f"`maskflow train` output directory){hint}")
    return p


def shipped_tokenizer(name: str = "default") -> Path:
    """The tokenizer of the shipped model ``name`` (``init=default``, ``tokenize checkpoint=memory``)."""
    return shipped_checkpoint(name) / SHIPPED_TOKENIZER
