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


BLOCKED = ("gymnasium", "hydra", "omegaconf", "moviepy", "labmaze", "tensorboard", "miniworld", "pyglet",
           "stable_baselines3", "imageio_ffmpeg")


def _run_script(script: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """The script as the GPU machine runs it: without the packages that machine lacks."""
    code = ("import sys, runpy\n"
            f"for m in {BLOCKED!r}:\n"
            "    sys.modules[m] = None\n"
            f"sys.argv = [{script.name!r}] + {argv!r}\n"
            f"runpy.run_path({str(script)!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_init_fine_tunes_the_checkpoint_with_a_probe_sized_step_count(tiny_world_checkpoint, tmp_path):
    out = tmp_path / "out"
    run = _run_script(SCRIPT, ["--data", str(tiny_world_checkpoint.parent / "tokens"), "--out", str(out),
                               "--device", "cpu", "--init", str(tiny_world_checkpoint), "--minutes", "0.25",
                               "--clip-len", "6", "--batch-size", "2", "--probe-steps", "2", "--threads", "1",
                               "--heading-pairs", "0", "--return-share", "0", "--eval-every", "1000"])
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    # the probe's pace sized the run (not --max-steps), and the budget held it
    assert summary["probe_s_per_step"] > 0 and 1 <= summary["steps"] < 1_000_000
    assert 1 <= summary["train_summary"]["steps"] <= summary["steps"]
    bench = {}
    exec(compile(SCRIPT.read_text(), str(SCRIPT), "exec"), bench)
    from worldmodel.model.checkpoint import load_world_model

    model, _, meta = load_world_model(bench["main"](["--join", str(out), "--into", str(tmp_path / "world")]))
    base, _, _ = load_world_model(tiny_world_checkpoint)
    # the init's architecture, its window widened to --clip-len, and the init recorded (as a release records
    # paths: the bare folder name, never the training machine's absolute path)
    assert model.cfg.dim == base.cfg.dim and model.cfg.max_frames == 6
    assert meta["init"]["checkpoint"] == tiny_world_checkpoint.name


@pytest.mark.slow
def test_tokenizer_script_trains_packs_and_joins(tiny_frames_dataset, tmp_path):
    script = ROOT / "benchmarks" / "gpu_tokenizer.py"
    out = tmp_path / "out"
    run = _run_script(script, ["--data", str(tiny_frames_dataset), "--out", str(out), "--device", "cpu",
                               "--minutes", "0.3", "--size", "tiny", "--batch-size", "4", "--probe-steps", "2",
                               "--eval-reserve-s", "3", "--final-eval-frames", "16", "--part-mb", "0.2"])
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("release.tar.part")) == [
        "curves.png", "pack.json", "samples.png"]
    bench = {"__file__": str(script)}      # it imports its sibling gpu_train.py from its own folder
    exec(compile(script.read_text(), str(script), "exec"), bench)
    into = bench["main"](["--join", str(out), "--into", str(tmp_path / "tok")])
    gpu = json.loads((into / "gpu_summary.json").read_text())
    assert gpu["device"] == "cpu" and 1 <= gpu["summary"]["steps"] <= gpu["planned_steps"] < 200_000
    assert 0 < gpu["summary"]["eval"]["psnr"] < 60
    from worldmodel.tokenizer.files import load_tokenizer

    assert load_tokenizer(into / "tokenizer").token_grid == tuple(gpu["summary"]["token_grid"])
    with pytest.raises(SystemExit, match="not a frames dataset"):
        bench["main"](["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "cpu"])


def test_probe_pace_times_the_later_steps_and_falls_back(tmp_path):
    bench = {}
    exec(compile(SCRIPT.read_text(), str(SCRIPT), "exec"), bench)
    pace = bench["probe_pace"]
    log = tmp_path / "train_log.csv"
    # cumulative seconds: the first 2 steps pay 10 s of start-up, then 0.5 s a step
    log.write_text("step,time,loss\n2,10.0,1\n4,11.0,1\n6,12.0,1\n8,13.0,1\n10,14.0,1\n12,15.0,1\n")
    assert pace(log, 99.0, "time", 1 / 3) == pytest.approx(0.5)
    assert pace(log, 99.0, "time", 0.0) == pytest.approx(0.5)       # from the first row on: still later steps
    log.write_text("step,step_s\n4,5.0\n8,0.5\n")                   # the world model's two probe halves
    assert pace(log, 99.0, "step_s", 0.5, cumulative=False) == pytest.approx(0.5)
    assert pace(log, 99.0, "time", 0.5) == 99.0                       # no such column
    assert pace(tmp_path / "missing.csv", 7.0, "time", 0.5) == 7.0
