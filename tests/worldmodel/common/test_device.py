"""precision= → dtype: bf16 only where the hardware has it natively, fp32 elsewhere, and clear errors."""

from __future__ import annotations

import pytest
import torch

from envs.common.errors import ConfigError
from worldmodel.common import device as dev


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_precision_follows_the_cpu(monkeypatch, native, expected):
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: native)
    assert dev.inference_dtype("auto", "cpu") == expected
    assert dev.inference_dtype("fp32", "cpu") == torch.float32
    assert dev.inference_dtype("bf16", "cpu") == torch.bfloat16


def test_auto_precision_on_a_gpu_asks_cuda(monkeypatch):
    for supported, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert dev.inference_dtype("auto", "cuda") == expected


def test_native_bf16_reads_the_cpu_flags(monkeypatch, tmp_path):
    """The flags line of /proc/cpuinfo decides; a CPU without avx512_bf16 / amx_bf16 gets fp32."""
    import builtins

    real_open = builtins.open
    for flags, expected in (("fpu sse avx512f avx512_bf16", True), ("fpu sse amx_bf16 amx_tile", True),
                            ("fpu sse avx2 avx512f avx512bw", False)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\n")
        monkeypatch.setattr(builtins, "open", lambda p, *a, _i=info, **k: real_open(_i if p == "/proc/cpuinfo" else p,
                                                                                   *a, **k))
        monkeypatch.setattr(dev.sys, "platform", "linux")
        dev.cpu_has_native_bf16.cache_clear()
        assert dev.cpu_has_native_bf16() is expected
    dev.cpu_has_native_bf16.cache_clear()


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"precision='fp16' is not valid; use one of auto, fp32, bf16"):
        dev.inference_dtype("fp16", "cpu")
