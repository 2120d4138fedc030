"""benchmarks/walk_pool.py on a tiny world: the walk's seed s scores what the baselines gave seed s, resumes seed
by seed, refuses files it cannot pool, and compares (a) with 3 × the pooled walk by Welch's interval."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(episode_steps=20, eval_episodes=2, eval_seed=3, n_steps=8, batch_size=16, epochs=1, threads=1)


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_walk_pool_reproduces_the_table_and_compares_unpaired(tiny_world_checkpoint, tmp_path, monkeypatch):
    from scipy import stats

    import agents.policy
    from agents.rl import RLConfig, baselines

    rl, pool_mod = load("rl"), load("walk_pool")
    cfg = RLConfig(**TINY, checkpoint=str(tiny_world_checkpoint))
    base = baselines(str(tiny_world_checkpoint), steps=16, seeds=(0,), eval_episodes=2, eval_seed=3, cfg=cfg)
    made_for = rl.made_for_of(cfg)
    results = {"real_steps_N": 80,
               "curves": {"0": [{"real_steps": 80, "eval_reaches_per_1000": 5.0}],
                          "1": [{"real_steps": 80, "eval_reaches_per_1000": 8.0}],
                          "2": [{"real_steps": 40, "eval_reaches_per_1000": 99.0}]},  # short of N: left out
               "baselines_per_seed": {"0": {"made_for": made_for, "random_walk": base["random_walk"]}}}
    res = tmp_path / "results.json"
    res.write_text(json.dumps(results))
    out = tmp_path / "pool.json"
    calls = []
    real_rate = agents.policy.goal_rate
    monkeypatch.setattr(agents.policy, "goal_rate", lambda *a, **k: calls.append(k["actor_seed"]) or real_rate(*a, **k))

    p = pool_mod.main(["--results", str(res), "--seeds", "3", "--out", str(out)])
    assert calls == [0, 1, 2]
    assert p["per_seed"]["0"]["reaches_per_1000"] == base["random_walk"][0]["reaches_per_1000"]
    walk = [p["per_seed"][str(s)]["reaches_per_1000"] for s in range(3)]
    s = p["summary"]
    assert s["a_seeds"] == 2 and s["a_mean"] == 6.5 and s["walk_mean"] == pytest.approx(np.mean(walk))
    # Welch's interval by hand: a = [5, 8] against 3 x the walk
    va, vc = np.var([5.0, 8.0], ddof=1) / 2, 9 * np.var(walk, ddof=1) / 3
    df = (va + vc) ** 2 / (va ** 2 / 1 + vc ** 2 / 2)
    half = stats.t.ppf(0.975, df) * np.sqrt(va + vc)
    d = s["a_minus_3c"]
    assert d["mean"] == pytest.approx(6.5 - 3 * np.mean(walk))
    assert d["ci95"] == pytest.approx([d["mean"] - half, d["mean"] + half]) and d["df"] == pytest.approx(df)

    # resumed: only the new seed is scored
    calls.clear()
    pool_mod.main(["--results", str(res), "--seeds", "4", "--out", str(out)])
    assert calls == [3] and set(json.loads(out.read_text())["per_seed"]) == {"0", "1", "2", "3"}

    # an out file made for other settings, a table whose (c) the walk does not give, mixed settings: refused
    other = json.loads(json.dumps(results))
    other["baselines_per_seed"]["0"]["made_for"]["eval_seed"] = 5
    res2 = tmp_path / "other.json"
    res2.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="pool.json: made for"):
        pool_mod.main(["--results", str(res2), "--seeds", "2", "--out", str(out)])
    wrong = json.loads(json.dumps(results))
    wrong["baselines_per_seed"]["0"]["random_walk"][0]["reaches_per_1000"] += 1.0
    res3 = tmp_path / "wrong.json"
    res3.write_text(json.dumps(wrong))
    with pytest.raises(SystemExit, match="walk seed 0 scores"):
        pool_mod.main(["--results", str(res3), "--seeds", "2", "--out", str(tmp_path / "pool3.json")])
    mixed = json.loads(json.dumps(results))
    mixed["baselines_per_seed"]["1"] = json.loads(json.dumps(other["baselines_per_seed"]["0"]))
    res4 = tmp_path / "mixed.json"
    res4.write_text(json.dumps(mixed))
    with pytest.raises(SystemExit, match="different walk settings"):
        pool_mod.main(["--results", str(res4), "--seeds", "2", "--out", str(tmp_path / "pool4.json")])
