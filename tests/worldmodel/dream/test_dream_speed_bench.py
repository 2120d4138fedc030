"""benchmarks/dream_speed.py end to end on the tiny checkpoint: the env table (workers in fresh processes,
two trees, paired ratios) and the rollout table's path without gymnasium (what a bare GPU machine runs)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BENCH = ROOT / "benchmarks" / "dream_speed.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_dream_speed", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.slow
def test_env_table_pairs_each_variant_with_release_1_round_by_round(ckpt, tmp_path):
    """This tree stands in for release 1 (--baseline-dir), so every ratio is of the same code: the table
    has a row per (kind, variant, round), a ratio per round, and the JSON carries it all."""
    res = load_bench().main(["--baseline-dir", str(ROOT), "--checkpoint", ckpt, "--rounds", "2", "--seconds", "0.3",
                             "--warmup", "1", "--num-envs", "2", "--variants", "release 1", "defaults (all levers)",
                             "--out", str(tmp_path / "speed.json")])
    assert len(res["rows"]) == 2 * 2 * 2
    assert {(r["kind"], r["num_envs"]) for r in res["rows"]} == {("single", 1), ("vector", 2)}
    assert all(r["frames_per_s"] > 0 and r["steps"] >= 1 for r in res["rows"])
    base = [s for s in res["summary"] if s["variant"] == "release 1"]
    assert all(s["ratios"] == [1.0, 1.0] for s in base)
    new = [s for s in res["summary"] if s["variant"] != "release 1"]
    assert all(len(s["ratios"]) == 2 and s["median_ratio"] > 0 for s in new)
    assert json.loads((tmp_path / "speed.json").read_text())["summary"] == res["summary"]


def test_a_missing_baseline_ref_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="--baseline no-such-ref: git archive failed"):
        load_bench().export_baseline("no-such-ref", tmp_path / "r1")


def test_rollout_table_runs_without_gymnasium(ckpt, tmp_path):
    """The GPU table's imports: no gymnasium, hydra or moviepy (a bare GPU machine has none of them)."""
    script = ("import sys, runpy\n"
              "for m in ('gymnasium', 'hydra', 'omegaconf', 'moviepy', 'labmaze', 'stable_baselines3'):\n"
              "    sys.modules[m] = None\n"
              f"sys.argv = ['dream_speed.py', '--table', 'rollout', '--checkpoint', {ckpt!r}, '--batches', '1', '3',\n"
              f"            '--seconds', '0.2', '--warmup', '1', '--threads', '1',\n"
              f"            '--out', {str(tmp_path / 'g.json')!r}]\n"
              f"runpy.run_path({str(BENCH)!r}, run_name='__main__')\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads((tmp_path / "g.json").read_text())["rows"]
    assert [(r["settings"], r["batch"]) for r in rows] == [("defaults", 1), ("defaults", 3),
                                                           ("release 1 settings", 1), ("release 1 settings", 3)]
    assert all(r["frames_per_s"] > 0 for r in rows)
    assert "N=3: defaults" in out.stdout
