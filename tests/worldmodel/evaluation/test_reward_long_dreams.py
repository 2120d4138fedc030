"""benchmarks/reward_long_dreams.py on a tiny checkpoint: false alarms counted away from real rewards only,
paired by episode against the first checkpoint."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def bench():
    spec = importlib.util.spec_from_file_location("reward_long_dreams", ROOT / "benchmarks" / "reward_long_dreams.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_long_dream_false_alarms_pair_checkpoints_by_episode(tiny_world_checkpoint, tmp_path, monkeypatch):
    import shutil

    mod = bench()
    ck, twin = str(tiny_world_checkpoint), str(tmp_path / "twin")
    shutil.copytree(ck, twin)                               # the same weights under another name
    r = mod.main([ck, twin, "--episodes", "2", "--frames", "5", "--threads", "1", "--out", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text())["frames"] == 5
    entry = r["checkpoints"][twin]
    assert len(entry["per_episode"]) == 2 and all(len(e["reward_prob"]) == 5 for e in entry["per_episode"])
    # the same weights dream the same frames: the same probabilities, a paired difference of exactly 0
    probs = {c: [e["reward_prob"] for e in r["checkpoints"][c]["per_episode"]] for c in (ck, twin)}
    assert probs[ck] == probs[twin]
    assert entry["minus_first"]["values"] == [0.0, 0.0]
    # a frame near a real reward is not a false alarm; one away from it is, above the threshold only
    from worldmodel.dream import verb

    fake = {"per_frame": {"reward_prob": [0.9, 0.9, 0.1, 0.9, 0.2], "real_reward": [0, 0, 0, 0, 1]},
            "reward_threshold": 0.5}
    monkeypatch.setattr(verb, "dream", lambda cfg: fake)
    e = mod.episode_alarms(ck, 0, 5, away=1, threads=1)
    assert (e["false_alarms"], e["frames_away"], e["real_rewards"]) == (2, 3, [4])
    with pytest.raises(SystemExit, match="--episodes must be >= 2"):
        mod.main([ck, "--episodes", "1"])
