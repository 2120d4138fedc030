"""benchmarks/decoder_swap.py end to end on the tiny pipeline: swapping in the same decoder changes nothing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_decoder_swap_benchmark_same_decoder(tiny_world_checkpoint, tiny_frames_dataset, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_decoder_swap", ROOT / "benchmarks" / "decoder_swap.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "swap"
    r = bench.main(["--checkpoint", str(tiny_world_checkpoint), "--decoder", str(tiny_world_checkpoint / "tokenizer"),
                    "--data", str(tiny_frames_dataset), "--windows", "3", "--frames", "2", "--batch", "2",
                    "--fvd", "false", "--threads", "1", "--out", str(out)])
    assert r["windows"] == 3 and r["frames"] == 2 and r["same_token_ids_real_frames"]
    for key, m in r["margins_new_minus_old"].items():        # one dream, the same decoder twice: no margin at all
        assert m["mean"] == 0.0 and m["n"] == 3, key
    assert r["metrics"]["old"]["dream_psnr"] == r["metrics"]["new"]["dream_psnr"]
    assert json.loads((out / "results.json").read_text())["fvd"] is None
    assert (out / "side_by_side.png").stat().st_size > 0 and (out / "recon_crops.png").stat().st_size > 0
    assert "new - old" in capsys.readouterr().out
    with pytest.raises(SystemExit):                             # FVD needs >= 9 frames: refused before any work
        bench.main(["--decoder", "x", "--data", "y", "--windows", "2", "--frames", "4"])
