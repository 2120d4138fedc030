"""The one place that turns a ``device=`` setting into a torch device."""

from __future__ import annotations

import torch

from envs.common.errors import ConfigError


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """Torch device of ``device=`` "cpu" | "cuda" | "cuda:N" | "auto" (CUDA when one is visible).

    ``local_rank``: this process's GPU under torchrun, which a plain "cuda" then means. Asking for CUDA
    where none is visible is a :class:`ConfigError` that says what to use instead.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is visible here; use device=cpu or device=auto")
    if name == "cuda" and local_rank is not None:
        return torch.device("cuda", local_rank)
    return torch.device(name)
