"""benchmarks/gpu_train.py on the CPU with a tiny budget: trains within the budget without gymnasium or
hydra, packs the release into parts no larger than asked, and --join restores a release that loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "benchmarks" / "gpu_train.py"


@pytest.mark.slow
def test_cpu_path_trains_packs_and_joins(tiny_world_checkpoint, tmp_path):
    tokens = tiny_world_checkpoint.parent / "tokens"
    out = tmp_path / "out"
    script = ("import sys, runpy\n"
              "for m in ('gymnasium', 'hydra', 'omegaconf', 'moviepy', 'labmaze', 'tensorboard'):\n"
              "    sys.modules[m] = None\n"
              f"sys.argv = ['gpu_train.py', '--data', {str(tokens)!r}, '--out', {str(out)!r}, '--device', 'cpu',\n"
              "            '--minutes', '0.05', '--dim', '32', '--depth', '1', '--heads', '2', '--clip-len', '4',\n"
              "            '--batch-size', '2', '--eval-every', '3', '--threads', '1', '--part-mb', '0.05',\n"
              "            '--heading-pairs', '2', '--return-share', '0']\n"
              f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["seconds"] < 120 and summary["parts"] >= 2
    parts = sorted(out.glob("release.tar.part*"))
    assert len(parts) == summary["parts"] and all(p.stat().st_size <= 0.05 * 2 ** 20 for p in parts)

    bench = {}
    exec(compile(SCRIPT.read_text(), str(SCRIPT), "exec"), bench)
    release = bench["main"](["--join", str(out), "--into", str(tmp_path / "world")])
    from worldmodel.model.checkpoint import load_world_model

    model, tokenizer, meta = load_world_model(release)
    assert model.cfg.dim == 32 and model.cfg.heading_pairs == 2 and tokenizer is not None
    # a damaged part is named, not unpacked
    parts[0].write_bytes(b"x" + parts[0].read_bytes()[1:])
    with pytest.raises(SystemExit, match="part00: sha256 differs"):
        bench["main"](["--join", str(out), "--into", str(tmp_path / "world2")])


def test_oversized_or_missing_data_is_refused_before_training(tmp_path):
    bench = {}
    exec(compile(SCRIPT.read_text(), str(SCRIPT), "exec"), bench)
    with pytest.raises(SystemExit, match="not a token dataset"):
        bench["main"](["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "cpu"])
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "big.bin").write_bytes(b"\0" * 2 ** 20)
    with pytest.raises(SystemExit, match=r"holds 1.0 MiB, over --max-data-mb 0.5"):
        bench["main"](["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "cpu",
                       "--max-data-mb", "0.5"])
