"""The resumable full state of a tokenizer training run, under ``OUT/checkpoints/``.

``checkpoints/step-NNNNNNNN/`` holds ``state.safetensors`` (model, EMA, discriminator and optimizer
tensors, torch RNG) and ``state.json`` (counters, optimizer hyper-parameters, NumPy/Python RNG, the
log rows, the run config), written and found as every training state is (see
:mod:`worldmodel.common.state`). A state of other settings (:data:`ARCH_KEYS`) is refused.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from envs.common.files import load_state_dict_strict
from worldmodel.common.state import flatten_optimizer, load_newest, read_state, save_state_dir, unflatten_optimizer

STATE_FORMAT = "maskflow-tokenizer-train-state"
STATE_VERSION = 1
# keys of TokenizerTrainConfig that change the shapes of saved tensors or what is trained: must match to resume
ARCH_KEYS = ("size", "downsample", "quantizer", "fsq_levels", "vq_codebook_size", "norm", "disc_width",
             "init", "freeze_encoder", "decoder_size")
# the trainer's counters, saved as top-level keys of state.json
COUNTERS = ("step", "lr_scale", "restores", "train_seconds", "loss_ema", "unique_ema")
Rows = list[dict[str, float]]


def save_train_state(out: Path, modules: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer],
                     counters: Mapping[str, Any], config: Mapping[str, Any], rng: np.random.Generator, rows: Rows,
                     keep: int) -> Path:
    """Write the full state (``counters`` as :data:`COUNTERS` names them, ``config`` the run's settings as a
    dict) under ``out/checkpoints`` atomically; prune all but the newest ``keep``."""
    tensors: dict[str, torch.Tensor] = {}
    for k, m in modules.items():
        tensors.update({f"{k}/{n}": t for n, t in m.state_dict().items()})
    opt_meta = {}
    for k, o in optimizers.items():
        t, opt_meta[k] = flatten_optimizer(k, o)
        tensors.update(t)
    tensors["rng/torch"] = torch.get_rng_state()
    py_state = random.getstate()
    meta = {"format": STATE_FORMAT, "format_version": STATE_VERSION, **{k: counters[k] for k in COUNTERS},
            "config": dict(config), "optimizers": opt_meta, "rng_numpy": rng.bit_generator.state,
            "rng_python": [py_state[0], list(py_state[1]), py_state[2]], "rows": rows}
    return save_state_dir(Path(out) / "checkpoints", int(counters["step"]), tensors, meta, keep)


def load_train_state(out: Path, modules: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer],
                     rng: np.random.Generator, config: Mapping[str, Any], defaults: Mapping[str, Any],
                     device: torch.device) -> tuple[dict[str, Any], Rows] | None:
    """Restore ``modules``, ``optimizers``, the RNGs and ``rng`` from the newest readable state in ``out``;
    return (counters, log rows), or None when there is no state.

    ``config``: this run's settings, compared on :data:`ARCH_KEYS` with the saved ones (``defaults`` fill
    in keys a state saved before they existed lacks); a difference raises :class:`StateMismatch`.
    """
    ck = Path(out) / "checkpoints"

    def load_one(path: Path) -> tuple[dict[str, Any], Rows]:
        meta, tensors = read_state(path, STATE_FORMAT, STATE_VERSION, "tokenizer training state",
                                   lambda meta: _mismatch({**defaults, **meta["config"]}, config, ck.parent), device)
        for k, m in modules.items():
            load_state_dict_strict(m, {n[len(k) + 1:]: t for n, t in tensors.items() if n.startswith(k + "/")},
                                   source=f"{path} ({k})")
        for k, o in optimizers.items():
            o.load_state_dict(unflatten_optimizer(k, tensors, meta["optimizers"][k]))
        torch.set_rng_state(tensors["rng/torch"].cpu())
        rng.bit_generator.state = meta["rng_numpy"]
        v, st, g = meta["rng_python"]
        random.setstate((v, tuple(st), g))
        return {k: meta[k] for k in COUNTERS}, list(meta["rows"])

    return load_newest(ck, load_one, "checkpoint")


def _mismatch(saved: Mapping[str, Any], now: Mapping[str, Any], run: Path) -> str | None:
    """How the saved settings differ from this run's on :data:`ARCH_KEYS`; None when they agree."""
    def plain(v: Any) -> Any:               # JSON gives lists where the config holds tuples
        return list(v) if isinstance(v, list | tuple) else v

    diff = {k: (saved.get(k), now[k]) for k in ARCH_KEYS if plain(saved.get(k)) != plain(now[k])}
    if not diff:
        return None
    return (f"{run} holds a run with different settings "
            f"({', '.join(f'{k}: saved {a} vs now {b}' for k, (a, b) in diff.items())}); "
            "use a new out= directory or the same settings to resume")
