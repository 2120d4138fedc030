"""Resumable training states on disk, for every training loop (the world model's and the tokenizer's).

A state is a folder ``ROOT/step-NNNNNNNN/`` holding ``state.safetensors`` (tensors: weights,
optimizer moments, torch RNG) and ``state.json`` (everything else, sealed with the sha256 of the
tensors). It is filled in a temp folder ``ROOT/.tmp-…`` and renamed into place, then
``ROOT/latest.json`` is switched to it atomically, and all but the newest ``keep`` states are
pruned, so a job killed at any moment leaves the previous state intact. Loading tries the state
``latest.json`` names, then the others newest first, skipping (with a warning) any that is
unreadable; a state of different settings is refused at once (:class:`StateMismatch`). Nothing is
unpickled.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from envs.common.errors import CheckpointError
from envs.common.files import (
    atomic_dir,
    load_weights,
    read_format_json,
    read_json,
    save_weights,
    write_json,
    write_sealed_json,
)

TENSORS_NAME = "state.safetensors"
META_NAME = "state.json"
LATEST_NAME = "latest.json"
T = TypeVar("T")


class StateMismatch(CheckpointError):
    """A readable state of a run with other settings: resuming it would train something else."""


def save_state_dir(root: str | os.PathLike, step: int, tensors: Mapping[str, torch.Tensor],
                   meta: Mapping[str, Any], keep: int) -> Path:
    """Write ``ROOT/step-NNNNNNNN`` (tensors + sealed JSON) atomically, point ``latest.json`` at it and
    prune all but the newest ``keep`` states; returns the new folder."""
    root = Path(root)
    final = root / f"step-{step:08d}"
    with atomic_dir(final, prefix=".tmp-") as tmp:
        save_weights(tmp / TENSORS_NAME, tensors)
        write_sealed_json(tmp / META_NAME, meta, files=(TENSORS_NAME,))
    write_json(root / LATEST_NAME, {"checkpoint": final.name, "step": step})
    for old in sorted(root.glob("step-*"))[: -max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(path: Path, fmt: str, version: int, what: str, mismatch: Callable[[dict[str, Any]], str | None],
               device: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON, tensors on ``device``) of the state folder ``path``, checked against its seal (its own digest
    and the tensors' sha256), its format and, before the tensors are read, ``mismatch(JSON)``: how the
    saved settings differ from this run's (None: they agree), raised as :class:`StateMismatch`."""
    meta = read_format_json(path / META_NAME, what, fmt, version, check_files=True)
    problem = mismatch(meta)
    if problem:
        raise StateMismatch(problem)
    return meta, load_weights(path / TENSORS_NAME, device=device)


def load_newest(root: str | os.PathLike, load_one: Callable[[Path], T], what: str = "training state") -> T | None:
    """``load_one(folder)`` of the newest readable state under ``root``; None when there is none.

    Leftover temp folders are deleted first. An unreadable state (:class:`CheckpointError`) is skipped
    with a warning; a :class:`StateMismatch` is raised at once; if no state is readable the error names
    each one's problem.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    candidates = sorted(root.glob("step-*"), reverse=True)
    if (root / LATEST_NAME).is_file():
        try:
            latest = root / read_json(root / LATEST_NAME, f"{what} pointer")["checkpoint"]
            candidates = [latest] + [c for c in candidates if c != latest]
        except (CheckpointError, KeyError, TypeError):
            pass
    errors = []
    for cand in candidates:
        try:
            return load_one(cand)
        except StateMismatch:
            raise
        except CheckpointError as e:
            errors.append(f"{cand.name}: {e}")
            warnings.warn(f"skipping unreadable {what} {cand}: {e}", stacklevel=2)
    if candidates:
        raise CheckpointError(f"no readable {what} in {root} ({'; '.join(errors)}); delete {root} to start over")
    return None


def flatten_optimizer(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as tensors ``NAME/IDX/KEY`` (for the safetensors) and JSON (hyper-parameters,
    scalar state)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{name}/{idx}/{k}"] = v
            else:
                scalars[f"{idx}/{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(name: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer`: the state dict to give ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith(name + "/"):
            _, idx, k = key.split("/", 2)
            state.setdefault(int(idx), {})[k] = v
    for key, v in meta["scalars"].items():
        idx, k = key.split("/", 1)
        state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}
