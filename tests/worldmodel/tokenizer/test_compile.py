"""The compiled tokenizer (FrameTokenizer.compile_nets): the same ids and weights, refused without a C++ compiler;
and benchmarks/tokenizer.py timing it beside the eager one."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.common.errors import ConfigError
from worldmodel.tokenizer.codec import decode_tokens, encode_frames, pass_size
from worldmodel.tokenizer.files import load_tokenizer, save_tokenizer
from worldmodel.tokenizer.model import build_tokenizer, tokenizer_config

ROOT = Path(__file__).resolve().parents[3]
HAS_CXX = any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def _frames(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(n, 8, 8, 3)).astype(np.uint8)
    return np.kron(coarse, np.ones((1, 8, 8, 1), np.uint8))     # (n 64 64 3) blocky frames


@pytest.mark.slow
@pytest.mark.skipif(not HAS_CXX, reason="torch.compile on a CPU needs a C++ compiler (g++)")
def test_compiled_tokenizer_keeps_ids_weights_and_frames(tmp_path):
    torch.manual_seed(0)
    eager = build_tokenizer(tokenizer_config("tiny", 4)).eval()
    save_tokenizer(eager, tmp_path / "tok")
    compiled = load_tokenizer(tmp_path / "tok").compile_nets()
    frames = _frames(5)
    ids = eager.encode(frames)
    assert torch.equal(compiled.encode(frames), ids)                    # the same ids: datasets stay valid
    # fused kernels round differently in the last float bits: a grey level at most, and rarely
    diff = (compiled.decode(ids).int() - eager.decode(ids).int()).abs()
    assert int(diff.max()) <= 1 and float(diff.float().mean()) < 0.01
    # compiling changes no weight and no state_dict key, so the compiled tokenizer saves as the eager one
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    save_tokenizer(compiled, tmp_path / "again")
    again = load_tokenizer(tmp_path / "again")
    for k, v in eager.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_compile_without_a_compiler_is_refused_before_work(tmp_path, monkeypatch):
    from worldmodel.tokenizer.tokenize import tokenize_dataset

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    tok = build_tokenizer(tokenizer_config("tiny", 4))
    with pytest.raises(ConfigError, match=r"C\+\+ compiler.*g\+\+"):
        tok.compile_nets()
    save_tokenizer(tok, tmp_path / "tok")
    frames = tmp_path / "frames"                                 # never read: the refusal comes first
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        tokenize_dataset(frames, tmp_path / "tok", tmp_path / "tokens", compile=True, progress=False)
    assert not (tmp_path / "tokens").exists()


def test_default_pass_size_gives_the_same_ids():
    torch.manual_seed(1)
    tok = build_tokenizer(tokenizer_config("tiny", 4)).eval()
    frames = _frames(37, seed=2)
    assert pass_size(tok) == 16 and pass_size(tok, 5) == 5     # 16 frames a pass on a CPU unless told
    ids = encode_frames(tok, frames)
    assert torch.equal(ids, encode_frames(tok, frames, batch=37))
    assert np.array_equal(decode_tokens(tok, ids), decode_tokens(tok, ids, batch=37))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_CXX, reason="torch.compile on a CPU needs a C++ compiler (g++)")
def test_tokenizer_benchmark_times_compiled_beside_eager(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_tokenizer", ROOT / "benchmarks" / "tokenizer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "rows.jsonl"
    rows = bench.main(["--sizes", "tiny", "--downsample", "8", "--batch", "2", "--devices", "cpu", "--threads", "1",
                       "--repeats", "2", "--compile", "--json", str(out)])
    assert [r["variant"] for r in rows] == ["eager", "compiled"]
    eager, compiled = rows
    for r in rows:
        assert r["encode_fps"] > 0 and r["decode_fps"] > 0
        # the round trip is slower than either half
        assert r["roundtrip_fp32_fps"] < min(r["encode_fps"], r["decode_fps"])
    assert compiled["ids_equal"] == 1.0 and compiled["encode_vs_eager"] > 0
    assert len(out.read_text().splitlines()) == 2
