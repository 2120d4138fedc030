"""benchmarks/rl.py end to end on tiny settings: (a) paired with (b) at every round's budget, baselines resumed
per seed and redone when their settings change."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(rounds=2, collect_steps=40, episode_steps=20, wm_steps=2, dream_steps=16, dream_envs=2, n_steps=8,
            batch_size=16, epochs=1, horizon=4, steps_per_frame=1, eval_episodes=2, eval_seed=3, threads=1)


def sets(**kw) -> list[str]:
    return [arg for k, v in kw.items() for arg in ("--set", f"{k}={json.dumps(v)}")]


@pytest.mark.slow
def test_rl_benchmark_pairs_a_with_b_at_every_round_and_resumes(tiny_world_checkpoint, tmp_path):
    from agents.rl import RLConfig

    spec = importlib.util.spec_from_file_location("bench_rl", ROOT / "benchmarks" / "rl.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out, results = tmp_path / "bench", tmp_path / "res" / "results_tiny.json"
    args = ["--checkpoint", str(tiny_world_checkpoint), "--out", str(out), "--seeds", "0", "--results", str(results)]
    r = bench.main(args + sets(**TINY))
    # (b) is scored after each round's real steps, in one run; (a) and (b) are paired at both budgets
    bfile = out / "baselines" / "seed0.json"
    b = json.loads(bfile.read_text())
    curve = b["ppo_real"][0]["curve"]
    assert [c["real_steps"] for c in curve] == [40, 80] and r["real_steps_N"] == 80
    assert [x["real_steps"] for x in r["by_real_steps"]] == [40, 80]
    assert [x["a"]["mean"] for x in r["by_real_steps"]] == [c["eval_reaches_per_1000"] for c in r["curves"]["0"]]
    assert [x["b"]["mean"] for x in r["by_real_steps"]] == [c["reaches_per_1000"] for c in curve]
    assert r["rows"]["b_ppo_real"]["mean"] == curve[-1]["reaches_per_1000"]
    assert b["made_for"]["checkpoint"] == str(tiny_world_checkpoint) and b["made_for"]["episode_steps"] == 20
    assert json.loads(results.read_text())["by_real_steps"] == r["by_real_steps"]
    assert (results.parent / "curves_tiny.png").stat().st_size > 0
    assert b["made_for"]["action_repeat"] == 1
    # composed again: every part resumes, nothing is retrained; a baselines file from before a key (here
    # action_repeat) holds its default
    bfile.write_text(json.dumps(b | {"made_for": {k: v for k, v in b["made_for"].items() if k != "action_repeat"}}))
    made = bfile.stat().st_mtime_ns
    again = bench.main(args + sets(**TINY))
    assert bfile.stat().st_mtime_ns == made and again["by_real_steps"] == r["by_real_steps"]
    # other acting settings: that seed's baselines are made again, for them
    bench.main(args[:-2] + ["--only", "baselines"] + sets(**(TINY | {"rounds": 1, "act_temperature": 0.5})))
    redone = json.loads(bfile.read_text())
    assert redone["made_for"]["act_temperature"] == 0.5
    assert [c["real_steps"] for c in redone["ppo_real"][0]["curve"]] == [40]
    with pytest.raises(SystemExit, match="unknown RL setting 'nope'"):
        bench.main(args + ["--set", "nope=1"])
    # the run folders gone (a machine replaced): the seed comes from the earlier results file, nothing re-runs
    elsewhere = tmp_path / "elsewhere"
    moved = ["--checkpoint", str(tiny_world_checkpoint), "--out", str(elsewhere), "--seeds", "0",
             "--results", str(tmp_path / "res" / "results_moved.json"), "--earlier", str(results)]
    kept = bench.main(moved + sets(**TINY))
    assert kept["by_real_steps"] == r["by_real_steps"] and kept["rows"] == r["rows"]
    assert kept["earlier"] == {"a": {"0": str(results)}, "baselines": {"0": str(results)}}
    assert not (elsewhere / "a_seed0").exists() and not (elsewhere / "baselines").exists()
    # an earlier file of other settings gives nothing, and says which settings differ
    with pytest.raises(SystemExit, match="settings differ: gamma 0.97 there, 0.9 here"):
        bench.main(moved + sets(**(TINY | {"gamma": 0.9})))
    # a file from before a key existed holds its default: taken at the default, refused at another value
    older = json.loads(results.read_text())
    del older["settings"]["sight_starts"]
    assert "action_repeat" not in older["baselines_per_seed"]["0"]["made_for"]     # as resumed above
    (tmp_path / "older.json").write_text(json.dumps(older))
    moved[-1] = str(tmp_path / "older.json")
    taken = bench.main(moved + sets(**TINY))
    assert taken["rows"] == r["rows"] and taken["earlier"]["baselines"] == {"0": moved[-1]}
    with pytest.raises(SystemExit, match="settings differ: sight_starts 0.0 there, 0.25 here"):
        bench.earlier_parts([moved[-1]], r["settings"] | {"sight_starts": 0.25}, {}, r["real_steps_N"], [0], [])
    made_for = bench.made_for_of(RLConfig(**TINY | {"checkpoint": str(tiny_world_checkpoint)}))
    assert bench.earlier_parts([moved[-1]], r["settings"], made_for, r["real_steps_N"], [], [0])[1][0] == \
        older["baselines_per_seed"]["0"]
    with pytest.raises(SystemExit, match="none of these seeds"):    # made for action_repeat 1, asked for 2
        bench.earlier_parts([moved[-1]], r["settings"], made_for | {"action_repeat": 2}, r["real_steps_N"], [], [0])


def test_goal_sightings_probe_counts_a_sighting_turned_into_a_reach_and_hands_over_in_view():
    import numpy as np

    spec = importlib.util.spec_from_file_location("bench_sightings", ROOT / "benchmarks" / "goal_sightings.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from envs.maze.dmlab import ACTION_MEANINGS

    class Still:                               # an actor that always asks for a no-op
        def act(self, obs=None, info=None):
            return 0

    layout = "*****\n*   *\n*****"
    goal = np.array([3.5, 1.5], np.float32)

    def info(x, heading):
        return {"layout": layout, "goal": goal, "pose": np.array([x, 1.5, heading], np.float32), "cell": (1, int(x))}

    # away (not in view), in view, in view, then a respawn (pose jumps): one sighting, reached
    steps = [info(1.5, np.pi), info(1.5, 0.0), info(1.7, 0.0), info(1.5, np.pi)]
    for go in (False, True):
        probe = bench.SightingProbe(Still(), ACTION_MEANINGS, see_and_go=go, window=40)
        probe.reset()
        actions = [probe.act(None, i) for i in steps[:3]]
        probe._pose = np.array([3.4, 1.5])       # the agent stood at the goal just before the respawn
        actions.append(probe.act(None, steps[3]))
        assert probe.sightings == 1 and probe.converted == 1 and probe.in_view == 2 and probe.turns == 0
        assert probe.cells == [1]
        # see-and-go: the oracle walks forward at the goal ahead, only while it is in view
        assert actions == ([0, 1, 1, 0] if go else [0, 0, 0, 0])
    # a sighting never followed by a reach within the window is not counted as reached
    probe = bench.SightingProbe(Still(), ACTION_MEANINGS, window=1)
    for i in [info(1.5, np.pi), info(1.5, 0.0), info(1.5, np.pi), info(1.5, np.pi), info(1.5, np.pi)]:
        probe.act(None, i)
    probe._pose = np.array([3.4, 1.5])
    probe.act(None, info(1.5, np.pi))
    assert probe.sightings == 1 and probe.converted == 0
    # turns in place are counted from the actions actually taken
    spinner = type("Spinner", (), {"act": lambda self, obs=None, info=None: ACTION_MEANINGS.index("turn_left")})()
    probe = bench.SightingProbe(spinner, ACTION_MEANINGS)
    probe.reset()
    for _ in range(3):
        probe.act(None, info(1.5, np.pi))
    assert probe.turns == 3 and probe.steps == 3


@pytest.mark.slow
def test_sight_returns_sorts_windows_by_what_the_context_saw_and_scores_the_dream(tiny_world_checkpoint, tmp_path):
    import numpy as np

    from agents.sighting import train_sight_probe
    from envs.collect import CollectConfig, collect
    from envs.dataset import EpisodeDataset
    from envs.maze.dmlab import goal_in_view_along
    from worldmodel.tokenizer.tokenize import tokenize_dataset

    spec = importlib.util.spec_from_file_location("bench_returns", ROOT / "benchmarks" / "sight_returns.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    frames = tmp_path / "goal"
    collect(CollectConfig(out=str(frames), policy="goal_seeking", episodes=4, steps=150, workers=1, seed=8,
                          test_fraction=0.5), progress=False)
    tokens = tokenize_dataset(frames, tiny_world_checkpoint.parent / "tok", tmp_path / "tokens", progress=False)
    found = bench.windows(str(tokens), "test", 3, 6)
    assert sum(map(len, found.values())) > 10
    ds = EpisodeDataset(tokens, "test")
    for kind, ends in found.items():
        for i, end in ends:
            ep = ds.episode(i)
            seen = goal_in_view_along(ep["poses"], ep["attrs"]["goal"], ep["attrs"]["layout"])
            # the real goal is in view ahead; the context saw it at its end / before it only / never
            assert seen[end + 1:end + 7].any() and not (np.asarray(ep["rewards"][end - 1:end + 1]) > 0).any()
            assert kind == ("in view" if seen[end] else "returns" if seen[end - 2:end].any() else "new sightings")
    ds.close()
    probe = tmp_path / "probe"
    train_sight_probe([str(frames)], str(probe), steps=2, batch=8, progress=False)
    res = bench.run(str(tiny_world_checkpoint), str(tokens), str(probe), n_windows=2, frames=6, steps_per_frame=1,
                    sheet=str(tmp_path / "sheet.png"))
    for kind, r in res["kinds"].items():
        assert r["windows"] == min(2, len(found[kind])) and r["found"] == len(found[kind])
        assert 0 <= r["recall_dream"][1] <= r["recall_dream"][0] <= r["recall_dream"][2] <= 1
    assert (tmp_path / "sheet.png").stat().st_size > 0 or not found["returns"]
    # paired with itself: no difference; with a run that drew other windows: refused
    assert all(d == [0.0, 0.0, 0.0] for d in bench.paired(res, res).values())
    other = json.loads(json.dumps(res))
    next(iter(other["kinds"].values()))["windows_drawn"] = [[-1, -1]]
    with pytest.raises(SystemExit, match="other windows"):
        bench.paired(res, other)
    # a file without per-window values is refused before any dreaming (the run would be lost after it)
    for kind in other["kinds"].values():
        del kind["windows_drawn"]
    (tmp_path / "old.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="old.json: it keeps no per-window values"):
        bench.main(["--data", str(tokens), "--probe", str(probe), "--pair-with", str(tmp_path / "old.json"),
                    "--checkpoint", str(tmp_path / "no such checkpoint")])
