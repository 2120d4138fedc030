"""Agents trained in the dream against agents trained in the real maze, on the same held-out mazes.

    PYTHONPATH=. python benchmarks/rl.py --checkpoint CKPT --out runs/rl_bench [--seeds 0 1 2] [--set key=value ...]

Rows of the RL issue, goal reaches per 1,000 real steps in held-out mazes (the same mazes and episodes for
every row and seed), as the mean over seeds with a 95 % t interval:

- (a) the dream-trained agent: ``maskflow rl`` with the given settings, one run per seed (``OUT/a_seedS``);
- (b) SB3 PPO trained on the real env (training mazes) for the same N = rounds x collect_steps real steps;
- (c) the exploration random walk (the policy that collected the world model's data);
- (d) uniform random actions.

(b) is scored after every round's worth of real steps too (one run, its learning curve), and the results pair
(a) with (b) at each such budget (``by_real_steps``).

Every part resumes: RL runs round by round, baselines seed by seed (``OUT/baselines/seedS.json``, one file a
seed, so seeds may run in parallel; one made with other settings or trained short of N is redone).
``--earlier FILE`` (repeatable) takes from an earlier ``results.json`` what OUT lacks: the (a) curve of a seed with
no run folder, where that file's settings are these (seed, out, threads and progress aside), and the baselines of a
seed with no baselines file, where they were made for these. So seeds whose folders are gone (a machine replaced)
still count, and are never re-run.
Writes
``OUT/results.json`` (also copied to ``--results``) and ``OUT/curves.png`` (real goal reaches against real
steps per seed, with the baselines' means; copied beside ``--results`` as ``curves*.png``, the name's
``results`` part replaced).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

# the settings rows (b)-(d) depend on (PPO's, acting's, scoring's): a baselines file made with others is redone
BASELINE_KEYS = ("n_steps", "batch_size", "epochs", "lr", "ent_coef", "gamma", "recurrent", "frame_stack",
                 "act_temperature", "action_repeat", "episode_steps", "eval_episodes", "eval_seed")


def t_interval(values: list[float]) -> dict[str, Any]:
    """Mean and 95 % t interval over seeds."""
    from scipy import stats

    v = np.asarray(values, np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return {"mean": mean, "ci95": [mean, mean], "n": len(v), "values": v.tolist()}
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": len(v), "values": v.tolist()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from agents.rl import RLConfig, baselines, run_rl
    from envs.common.files import read_json, write_json
    from worldmodel.common.threads import governor

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--out", default="runs/rl_bench")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--results", default="benchmarks/results/rl/results.json")
    p.add_argument("--only", choices=("all", "a", "baselines"), default="all")
    p.add_argument("--earlier", action="append", default=[], metavar="RESULTS.json",
                   help="an earlier results file: what --out lacks of a seed (its run, its baselines) is taken from it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an RLConfig setting of (a) (PPO's also apply to (b)); repeat for more")
    a = p.parse_args(argv)
    fields = {f.name: f.type for f in dataclasses.fields(RLConfig)}
    kw: dict[str, Any] = {}
    for item in a.overrides:
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"unknown RL setting {key!r}; valid: {', '.join(fields)}")
        try:                                    # numbers, true/false, null, lists as JSON; anything else a string
            kw[key] = json.loads(value)
        except json.JSONDecodeError:
            kw[key] = value
    governor(0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    base_cfg = RLConfig(checkpoint=a.checkpoint, progress=False, **kw)
    base_cfg.validate()
    n_real = base_cfg.rounds * base_cfg.collect_steps
    made_for = made_for_of(base_cfg)
    old_curves, old_baselines, taken = earlier_parts(
        a.earlier, dataclasses.asdict(base_cfg), made_for, n_real,
        [s for s in a.seeds if not (out / f"a_seed{s}").exists()],
        [s for s in a.seeds if not (out / "baselines" / f"seed{s}.json").exists()])
    runs = {}
    if a.only in ("all", "a"):
        for s in a.seeds:
            if s in old_curves:                 # its run folder is gone; its curve is in an earlier results file
                runs[s] = old_curves[s]
                continue
            runs[s] = run_rl(dataclasses.replace(base_cfg, seed=s, out=str(out / f"a_seed{s}")))["rounds"]
    marks = tuple(base_cfg.collect_steps * (r + 1) for r in range(base_cfg.rounds))
    done = {}
    for s in a.seeds:                           # one file per seed: seeds may run in parallel processes
        bpath = out / "baselines" / f"seed{s}.json"
        have = read_json(bpath, "baselines") if bpath.exists() else old_baselines.get(s)
        if have is None or not same_made_for(have.get("made_for"), made_for) or b_at(have, n_real) is None:
            if a.only not in ("all", "baselines"):  # none yet, other settings, or trained short of N: (re)do
                continue
            have = baselines(a.checkpoint, n_real, (s,), base_cfg.eval_episodes, base_cfg.eval_seed, base_cfg,
                             marks) | {"made_for": made_for}
            write_json(bpath, have)
        done[str(s)] = have
    if a.only != "all":
        return {}
    rows = {
        "a_dream_trained": t_interval([runs[s][-1]["eval_reaches_per_1000"] for s in a.seeds]),
        "b_ppo_real": t_interval([b_at(done[str(s)], n_real) for s in a.seeds]),
        "c_random_walk": t_interval([done[str(s)]["random_walk"][0]["reaches_per_1000"] for s in a.seeds]),
        "d_uniform": t_interval([done[str(s)]["uniform"][0]["reaches_per_1000"] for s in a.seeds]),
    }
    a_, b_, c_ = (rows[k]["mean"] for k in ("a_dream_trained", "b_ppo_real", "c_random_walk"))
    by_n = []                                   # (a) against (b) at every round's budget both have, paired by seed
    for n in marks:
        av = [next((r["eval_reaches_per_1000"] for r in runs[s] if r["real_steps"] == n), None) for s in a.seeds]
        bv = [b_at(done[str(s)], n) for s in a.seeds]
        if None in av or None in bv:
            continue
        ai, bi = t_interval(av), t_interval(bv)
        by_n.append({"real_steps": n, "a": ai, "b": bi, "a_over_c": ai["mean"] / c_ if c_ else None,
                     "a_minus_b": t_interval([x - y for x, y in zip(av, bv, strict=True)])})
    result = {
        "metric": "goal reaches per 1,000 real steps in held-out mazes (odd maze seeds), "
                  f"{base_cfg.eval_episodes} episodes of {base_cfg.episode_steps} steps, the same for every row "
                  "and seed",
        "real_steps_N": n_real, "seeds": a.seeds, "checkpoint": a.checkpoint,
        "settings": dataclasses.asdict(base_cfg), "rows": rows,
        "goals": {"a_over_c": a_ / c_ if c_ else None, "a_at_least_3c": bool(a_ >= 3 * c_),
                  "a_at_least_b": bool(a_ >= b_)},
        "by_real_steps": by_n,
        "curves": {str(s): [{k: r[k] for k in ("real_steps", "eval_reaches_per_1000", "dream_return")}
                            for r in runs[s]] for s in a.seeds},
        "baselines_per_seed": done,
        "earlier": taken,
    }
    write_json(out / "results.json", result)
    plot(out / "curves.png", result)
    if a.results:
        dest = Path(a.results)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "results.json", dest)
        shutil.copyfile(out / "curves.png", dest.with_name(dest.stem.replace("results", "curves") + ".png"))
    print(json.dumps({k: {"mean": round(v["mean"], 2), "ci95": [round(x, 2) for x in v["ci95"]]}
                      for k, v in rows.items()} | {"goals": result["goals"]}, indent=1))
    return result


# settings that do not change what a run learns or how it is scored
NOT_SETTINGS = ("seed", "out", "threads", "progress")


def made_for_of(cfg: Any) -> dict[str, Any]:
    """What a seed's baselines are made for: the checkpoint and ``BASELINE_KEYS`` of an ``RLConfig``."""
    return {"checkpoint": cfg.checkpoint} | {k: getattr(cfg, k) for k in BASELINE_KEYS}


def filled(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` (settings or ``made_for`` read from a file) with each ``RLConfig`` field it lacks at its default: a key
    an older file lacks was added later, and its default keeps what runs did before it."""
    from agents.rl import RLConfig

    return dataclasses.asdict(RLConfig()) | d


def same_made_for(there: dict[str, Any] | None, here: dict[str, Any]) -> bool:
    """Whether baselines made for ``there`` (a file's) are those for ``here``, a key ``there`` lacks ``filled``."""
    return there is not None and {k: v for k, v in filled(there).items() if k in here or k in there} == here


def earlier_parts(paths: list[str], settings: dict[str, Any], made_for: dict[str, Any], n_real: int,
                  seeds_a: list[int], seeds_b: list[int]
                  ) -> tuple[dict[int, list], dict[int, dict], dict[str, dict[str, str]]]:
    """From earlier results files: (a)'s curves to ``n_real`` real steps for ``seeds_a``, where a file's settings
    equal ``settings`` (``NOT_SETTINGS`` aside, a key the file lacks ``filled``); baselines made for ``made_for``
    (``same_made_for``) for ``seeds_b``; and which file gave what. The first file that has a part gives it. A file
    that gives none names the settings that differ."""
    from envs.common.files import read_json

    curves: dict[int, list] = {}
    base: dict[int, dict] = {}
    taken: dict[str, dict[str, str]] = {"a": {}, "baselines": {}}
    for path in paths if seeds_a or seeds_b else ():
        r = read_json(path, "earlier RL results")
        missing = [k for k in ("settings", "curves", "baselines_per_seed") if k not in r]
        if missing:
            raise SystemExit(f"{path}: not a results file of benchmarks/rl.py (no {', '.join(missing)})")
        theirs = filled(r["settings"])
        differ = sorted(k for k in set(settings) | set(theirs)
                        if k not in NOT_SETTINGS and settings.get(k) != theirs.get(k))
        gave = False
        for s in seeds_a:
            curve = r["curves"].get(str(s))
            if not differ and s not in curves and curve and curve[-1]["real_steps"] == n_real:
                curves[s], taken["a"][str(s)], gave = curve, str(path), True
        for s in seeds_b:
            b = r["baselines_per_seed"].get(str(s))
            if s not in base and b is not None and same_made_for(b.get("made_for"), made_for):
                base[s], taken["baselines"][str(s)], gave = b, str(path), True
        if not gave:
            why = ("settings differ: " + ", ".join(f"{k} {theirs.get(k)!r} there, {settings.get(k)!r} here"
                                                   for k in differ)) if differ else "none of these seeds"
            raise SystemExit(f"{path} gives nothing for seeds {sorted(set(seeds_a) | set(seeds_b))}: {why}")
    return curves, base, taken


def b_at(entry: dict[str, Any], n: int) -> float | None:
    """(b)'s goal reaches per 1,000 steps after ``n`` real steps from one seed's baselines, or None where that
    run did not reach ``n`` (files from before the curve say nothing of their N: None)."""
    row = entry["ppo_real"][0]
    return next((c["reaches_per_1000"] for c in row.get("curve", []) if c["real_steps"] == n), None)


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib.pyplot as plt

    from envs.common.video import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for s, curve in result["curves"].items():
        ax.plot([c["real_steps"] for c in curve], [c["eval_reaches_per_1000"] for c in curve], "o-", lw=1, ms=3,
                label=f"(a) dream-trained, seed {s}")
    styles = {"b_ppo_real": ("C3", "(b) PPO on the real env"), "c_random_walk": ("grey", "(c) random walk"),
              "d_uniform": ("k", "(d) uniform random")}
    for key, (color, label) in styles.items():
        r = result["rows"][key]
        if key == "b_ppo_real" and len(result["by_real_steps"]) > 1:       # (b)'s mean learning curve
            ns = [x["real_steps"] for x in result["by_real_steps"]]
            ax.plot(ns, [x["b"]["mean"] for x in result["by_real_steps"]], "s--", color=color, lw=1.2, ms=3,
                    label=f"{label}, mean of seeds: {r['mean']:.2f}")
            continue
        ax.axhline(r["mean"], color=color, ls="--", lw=1, label=f"{label}: {r['mean']:.2f}")
    ax.set_xlabel("real env steps (collection)")
    ax.set_ylabel("goal reaches / 1,000 steps, held-out mazes")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
