"""Resumable full training state of a world-model run, under ``OUT/state/``.

``state/step-NNNNNNNN/`` holds ``state.safetensors`` (model, EMA and AdamW tensors, torch RNG) and
``state.json`` (step, elapsed time, optimizer hyper-parameters, model and training config), written
and found as every training state is (see :mod:`worldmodel.common.state`). Batches and masking draws
are functions of (seed, step), so the step counter plus these tensors reproduce the next step exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from envs.common.errors import CheckpointError
from envs.common.files import load_state_dict_strict
from worldmodel.common.state import flatten_optimizer, load_newest, read_state, save_state_dir, unflatten_optimizer

STATE_FORMAT = "maskflow-world-model-train-state"
STATE_VERSION = 1


def save_state(out: str | os.PathLike, step: int, model: torch.nn.Module, ema: dict[str, torch.Tensor],
               opt: torch.optim.Optimizer, info: dict[str, Any], keep: int = 2) -> Path:
    """Write the full state at ``step`` atomically and prune all but the newest ``keep``."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema/{k}": v for k, v in ema.items()})
    opt_tensors, opt_meta = flatten_optimizer("opt", opt)
    tensors.update(opt_tensors)
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    meta = {"format": STATE_FORMAT, "format_version": STATE_VERSION, "step": step, "optimizer": opt_meta, **info}
    return save_state_dir(Path(out) / "state", step, tensors, meta, keep)


def load_state(out: str | os.PathLike, model: torch.nn.Module, ema: dict[str, torch.Tensor],
               opt: torch.optim.Optimizer, model_config: dict[str, Any]) -> dict[str, Any] | None:
    """Restore the newest readable state of ``out`` into model/ema/opt; return its JSON, or None if none.

    A state of a different model architecture raises :class:`CheckpointError`; an unreadable newest
    state falls back to an older one with a warning.
    """
    return load_newest(Path(out) / "state", lambda path: _load_one(path, model, ema, opt, model_config))


def _load_one(path: Path, model: torch.nn.Module, ema: dict[str, torch.Tensor], opt: torch.optim.Optimizer,
              model_config: dict[str, Any]) -> dict[str, Any]:
    def mismatch(meta: dict[str, Any]) -> str | None:
        saved = meta.get("model") or {}
        if saved == model_config:
            return None
        diff = ", ".join(f"{k}: saved {saved.get(k)} vs now {v}" for k, v in model_config.items() if saved.get(k) != v)
        return (f"{path.parent.parent} holds a run of a different model ({diff}); use a new out= directory, or the "
                "same settings to resume")

    meta, tensors = read_state(path, STATE_FORMAT, STATE_VERSION, "world-model training state", mismatch,
                               device=next(model.parameters()).device)
    load_state_dict_strict(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}, str(path))
    for k in ema:
        if f"ema/{k}" not in tensors:
            raise CheckpointError(f"{path} lacks the EMA tensor {k}")
        ema[k].copy_(tensors[f"ema/{k}"])
    opt.load_state_dict(unflatten_optimizer("opt", tensors, meta["optimizer"]))
    torch.set_rng_state(tensors["rng/torch"].cpu())
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"].cpu())
    return meta
