"""The one place that turns a ``device=`` setting into a torch device, and a ``precision=`` setting into a dtype."""

from __future__ import annotations

import functools
import os
import shutil
import sys

import torch

from envs.common.config_check import PRECISIONS
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


def require_compiler(device: torch.device | str, what: str = "compile=true") -> None:
    """Refuse ``torch.compile`` on a CPU with no C++ compiler, before any work: inductor builds C++ kernels there
    and would otherwise fail at the first pass, minutes into a run."""
    if torch.device(device).type != "cpu":
        return
    cxx = os.environ.get("CXX")
    if not any(shutil.which(c) for c in ([cxx] if cxx else []) + ["g++", "c++", "clang++"]):
        raise ConfigError(f"{what} needs a C++ compiler on the CPU (torch.compile builds C++ kernels there) and "
                          f"none was found (CXX, g++, c++, clang++); install one (Debian: apt install g++) "
                          f"or leave compile off")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX, from /proc/cpuinfo on Linux).

    Elsewhere bf16 is emulated and slower than fp32, so "auto" keeps fp32 there."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def inference_dtype(precision: str, device: torch.device | str) -> torch.dtype:
    """The dtype a dream computes in for ``precision=`` "auto" | "fp32" | "bf16".

    "auto" is bf16 where the hardware has it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX)
    and fp32 elsewhere; benchmarks/dream_speed.py measures what each choice gains and costs."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is not valid; use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32
