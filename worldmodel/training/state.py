"""Resumable full training state of a world-model run, under ``OUT/state/``.

``state/step-NNNNNNNN/`` holds ``state.safetensors`` (model, EMA and AdamW tensors, torch RNG) and
``state.json`` (step, elapsed time, optimizer hyper-parameters, model and training config). It is
written to a temp directory and renamed into place, then ``state/latest.json`` is switched to it
atomically, so a job killed at any moment leaves the previous state intact. Nothing is unpickled.
Batches and masking draws are functions of (seed, step), so the step counter plus these tensors
reproduce the next step exactly.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from envs.common.errors import CheckpointError
from envs.common.files import (
    load_state_dict_strict,
    load_weights,
    read_json,
    read_sealed_json,
    save_weights,
    write_json,
    write_sealed_json,
)

STATE_FORMAT = "maskflow-world-model-train-state"
STATE_VERSION = 1


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt/{idx}/{k}"] = v
            else:
                scalars[f"{idx}/{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("opt/"):
            _, idx, k = key.split("/", 2)
            state.setdefault(int(idx), {})[k] = v
    for key, v in meta["scalars"].items():
        idx, k = key.split("/", 1)
        state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_state(out: str | os.PathLike, step: int, model: torch.nn.Module, ema: dict[str, torch.Tensor],
               opt: torch.optim.Optimizer, info: dict[str, Any], keep: int = 2) -> Path:
    """Write the full state at ``step`` atomically and prune all but the newest ``keep``."""
    root = Path(out) / "state"
    root.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema/{k}": v for k, v in ema.items()})
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    tensors.update(opt_tensors)
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        save_weights(tmp / "state.safetensors", tensors)
        write_sealed_json(tmp / "state.json", {"format": STATE_FORMAT, "format_version": STATE_VERSION, "step": step,
                                        "optimizer": opt_meta, **info}, files=("state.safetensors",))
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    write_json(root / "latest.json", {"checkpoint": final.name, "step": step})
    for old in sorted(root.glob("step-*"))[: -max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(out: str | os.PathLike, model: torch.nn.Module, ema: dict[str, torch.Tensor],
               opt: torch.optim.Optimizer, model_config: dict[str, Any]) -> dict[str, Any] | None:
    """Restore the newest readable state of ``out`` into model/ema/opt; return its JSON, or None if none.

    A state of a different model architecture raises :class:`CheckpointError`; an unreadable newest
    state falls back to an older one with a warning.
    """
    root = Path(out) / "state"
    if not root.is_dir():
        return None
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    candidates = sorted(root.glob("step-*"), reverse=True)
    if (root / "latest.json").is_file():
        try:
            latest = root / read_json(root / "latest.json", "state pointer")["checkpoint"]
            candidates = [latest] + [c for c in candidates if c != latest]
        except (CheckpointError, KeyError, TypeError):
            pass
    errors = []
    for cand in candidates:
        try:
            return _load_one(cand, model, ema, opt, model_config)
        except CheckpointError as e:
            if "different model" in str(e):
                raise
            errors.append(f"{cand.name}: {e}")
            warnings.warn(f"skipping unreadable training state {cand}: {e}", stacklevel=2)
    if candidates:
        raise CheckpointError(f"no readable training state in {root} ({'; '.join(errors)}); delete {root} "
                              "to start over")
    return None


def _load_one(path: Path, model: torch.nn.Module, ema: dict[str, torch.Tensor], opt: torch.optim.Optimizer,
              model_config: dict[str, Any]) -> dict[str, Any]:
    meta = read_sealed_json(path / "state.json", "training state")
    if meta.get("format") != STATE_FORMAT or meta.get("format_version") != STATE_VERSION:
        raise CheckpointError(f"{path / 'state.json'} is not a version-{STATE_VERSION} world-model training state")
    if meta.get("model") != model_config:
        diff = {k: (meta.get("model", {}).get(k), v) for k, v in model_config.items()
                if meta.get("model", {}).get(k) != v}
        raise CheckpointError(f"{path.parent.parent} holds a run of a different model "
                              f"({', '.join(f'{k}: saved {a} vs now {b}' for k, (a, b) in diff.items())}); "
                              "use a new out= directory, or the same settings to resume")
    device = next(model.parameters()).device
    tensors = load_weights(path / "state.safetensors", device=device)
    load_state_dict_strict(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}, str(path))
    for k in ema:
        if f"ema/{k}" not in tensors:
            raise CheckpointError(f"{path} lacks the EMA tensor {k}")
        ema[k].copy_(tensors[f"ema/{k}"])
    opt.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    torch.set_rng_state(tensors["rng/torch"].cpu())
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"].cpu())
    return meta
