"""Loop closure: does the dream return to the view it left when the agent turns away and back?

The maze renderer is deterministic and turns are exact 12° steps, so in the real maze turning left L
times and then right L times (``turnL``), or turning a full circle in place (``circleN``, N × 12° = 360°
for N = 30), ends on exactly the view it started from. A dream without memory beyond its window cannot
know that view once it has left the window. Each trial:

1. plays a fresh held-out maze (odd maze seed, :func:`envs.heldout.play_heldout`): ``context`` frames of
   random walk (the dream's real context), then the loop's turns;
2. dreams the loop from that context with the same actions (the dream env with ``context="given"``);
3. scores the dream's last frame against the real start view (``return_psnr``), against the real view
   turned furthest away (``far_psnr``: a dream that forgot returns to something no closer to the start
   than to that), and the tokenizer's reconstruction of the start view (``ceiling_psnr``: what copying
   the start view scores through the tokenizer, the bound a perfect memory reaches). ``real_return_psnr``
   checks the premise (100 dB = the real maze returned to the identical view).
4. for turn loops, also scores the dream against *itself*: each frame of the way back against the dream's
   own frame at the same heading on the way out (``self_psnr``, mean over those pairs; ``None`` for circles,
   which face no heading twice before the end). A dream that keeps what it imagined scores high here even
   where its imagination is wrong; a low score means the dream does not reuse even its own recent frames.

``real_turns=n`` > 0 is a diagnostic: the first n turns of the loop are played in the real maze and given as
context (the context window slides forward by n frames), and only the rest is dreamed. With the way out
real, a model whose lookup works returns to the start view; if it does not, the failure lies in dreaming
the way back, not in a corrupted memory of the way out.

The goal of the memory issue: return within 4 dB of the ceiling and ≥ 5 dB above ``far_psnr``.

:func:`pair_loops` compares two models on the same mazes (``maskflow eval pair_with=``, or several evals
pooled by ``benchmarks/loop_compare.py``): per loop, the mean difference of return PSNR and of return − far
per maze, with percentile-bootstrap 95 % intervals (:func:`worldmodel.evaluation.stats.paired_margin`).

Axis letters: f frames, y x pixels, c colour.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.common.errors import ConfigError
from envs.loops import DEFAULT_LOOPS, parse_loop, real_loop
from worldmodel.evaluation.stats import paired_margin


def loop_closure(checkpoint: str = "default", loops: tuple[str, ...] | list[str] = DEFAULT_LOOPS, trials: int = 8,
                 seed: int = 0, steps_per_frame: int | None = None, precision: str = "auto", device: str = "cpu",
                 threads: int | None = 0, temperature: float = 1.0, gumbel: float | None = None,
                 action_guidance: float = 0.0, history_guidance: float = 0.0,
                 history_guidance_recent: int = 0, real_turns: int = 0, heading_recall: bool = False,
                 env_id: str = "", env_kwargs: dict | None = None) -> dict[str, Any]:
    """Score ``trials`` fresh held-out mazes per loop (trial i uses seed ``seed + i``, so every loop sees the
    same mazes and context). ``temperature``, ``gumbel`` and the guidance weights are the dream's sampling
    settings (defaults: the dream env's); ``real_turns`` (see the module notes) gives the first turns real;
    ``heading_recall`` dreams with the dream env's heading recall (loops longer than the window).
    ``env_id`` / ``env_kwargs``: the live mazes to play (:meth:`DreamCore.probe_env`; default: the checkpoint's).
    Returns per-loop means with every trial's scores, the env played, and the settings."""
    from worldmodel.dream.env import MaskFlowDreamEnv
    from worldmodel.metrics.quality import psnr_per_frame
    from worldmodel.tokenizer.codec import decode_tokens, encode_frames

    parsed = [parse_loop(x) for x in loops]                  # every name checked before any work
    if trials < 1:
        raise ConfigError(f"loop_trials={trials} must be >= 1")
    short = [x.name for x in parsed if not 0 <= real_turns < x.frames]
    if short:
        raise ConfigError(f"loop_real_turns={real_turns} must lie in [0, frames of the loop) so that something is "
                          f"dreamed; too many for {', '.join(short)}")
    env = MaskFlowDreamEnv(checkpoint, context="given", steps_per_frame=steps_per_frame, precision=precision,
                           max_episode_steps=None, device=device, threads=threads, temperature=temperature,
                           gumbel=gumbel, action_guidance=action_guidance, history_guidance=history_guidance,
                           history_guidance_recent=history_guidance_recent, heading_recall=heading_recall)
    try:
        core, m = env.core, env.core.context_length
        env_id, env_kwargs = core.probe_env(env_id, env_kwargs)
        out: dict[str, Any] = {"env_id": env_id, "env_kwargs": env_kwargs,
                               "loops": {}, "trials": trials, "seed": seed, "context_length": m,
                               "steps_per_frame": core.sampler.num_steps, "temperature": core.sampler.temperature,
                               "gumbel": core.sampler.gumbel, "action_guidance": action_guidance,
                               "history_guidance": history_guidance,
                               "history_guidance_recent": history_guidance_recent, "real_turns": real_turns,
                               "heading_recall": heading_recall,
                               "dtype": str(core.rollout.dtype).removeprefix("torch.")}
        for loop in parsed:
            rows, pairs = [], loop.revisits()
            for i in range(trials):
                frames, actions = real_loop(env_id, env_kwargs, loop, m, seed + i)
                start, far, end, n = frames[m - 1], frames[m + loop.far], frames[-1], real_turns
                env.reset(seed=seed + i, options={"context_frames": frames[n:m + n],
                                                  "context_actions": actions[n:m + n]})
                dream = list(frames[m - 1:m + n])                 # loop frames 0..n are real (0 = the start view)
                for a in actions[m + n:]:
                    dream.append(env.step(int(a))[0])
                dreamed = dream[-1]
                recon = decode_tokens(core.tokenizer, encode_frames(core.tokenizer, start[None]))[0]

                def psnr(a: np.ndarray, b: np.ndarray) -> float:
                    return float(psnr_per_frame(a[None], b[None], identical=100.0)[0])

                self_psnr = float(np.mean([psnr(dream[a], dream[b]) for a, b in pairs])) if pairs else None
                rows.append({"maze_seed": 2 * (seed + i) + 1, "return_psnr": psnr(dreamed, start),
                             "self_psnr": self_psnr,
                             "far_psnr": psnr(dreamed, far), "ceiling_psnr": psnr(recon, start),
                             "real_return_psnr": psnr(end, start), "dream_last": dreamed, "real_start": start,
                             "real_far": far})
            keys = ("return_psnr", "far_psnr", "ceiling_psnr", "real_return_psnr")
            summary = {k: float(np.mean([r[k] for r in rows])) for k in keys}
            summary["self_psnr"] = float(np.mean([r["self_psnr"] for r in rows])) if pairs else None
            summary["return_minus_far"] = summary["return_psnr"] - summary["far_psnr"]
            summary["ceiling_minus_return"] = summary["ceiling_psnr"] - summary["return_psnr"]
            summary["goal_met"] = bool(summary["ceiling_minus_return"] <= 4.0 and summary["return_minus_far"] >= 5.0)
            out["loops"][loop.name] = {"frames": loop.frames, **summary,
                                       "per_trial": [{k: r[k] for k in ("maze_seed", *keys, "self_psnr")}
                                                     for r in rows],
                                       "pictures": [(r["real_start"], r["real_far"], r["dream_last"]) for r in rows]}
        return out
    finally:
        env.close()


def pair_loops(a: dict[str, Any] | list[dict[str, Any]], b: dict[str, Any] | list[dict[str, Any]],
               seed: int = 0) -> dict[str, dict[str, Any]]:
    """Paired margins of loop results ``a`` over ``b`` (:func:`loop_closure` outputs; a list is one set of
    mazes pooled in order, e.g. ``loop_trials=24`` then ``seed=24 loop_trials=40``), for every loop both hold:
    ``return_psnr`` (return PSNR, a − b per maze) and ``return_minus_far``, each a
    :func:`~worldmodel.evaluation.stats.paired_margin` dict (mean, ci_low, ci_high, wins, n). Raises
    :class:`ConfigError` unless both scored the same mazes in the same order (the same seeds in the same env)."""
    sets = [[x] if isinstance(x, dict) else list(x) for x in (a, b)]
    envs = {(r["env_id"], repr(sorted(r["env_kwargs"].items()))) for s in sets for r in s if "env_id" in r}
    if len(envs) > 1:               # same maze seeds in another env (say, other styles) are other mazes
        raise ConfigError("the loop results played different envs (" + "; ".join(f"{e} {k}" for e, k in sorted(envs))
                          + "); run both with the same data= (its env is the one played)")
    out: dict[str, dict[str, Any]] = {}
    for name in [n for n in sets[0][0]["loops"] if all(n in r["loops"] for s in sets for r in s)]:
        trials = [[t for r in s for t in r["loops"][name]["per_trial"]] for s in sets]
        mazes = [[t["maze_seed"] for t in ts] for ts in trials]
        if mazes[0] != mazes[1]:
            raise ConfigError(f"loop {name}: the two results scored different mazes ({len(mazes[0])} vs "
                              f"{len(mazes[1])} trials); run both with the same seed and loop_trials")
        ret = [[t["return_psnr"] for t in ts] for ts in trials]
        gap = [[t["return_psnr"] - t["far_psnr"] for t in ts] for ts in trials]
        out[name] = {"return_psnr": paired_margin(*ret, seed=seed), "return_minus_far": paired_margin(*gap, seed=seed)}
    return out


def loop_sheet(path, result: dict[str, Any], scale: int = 2) -> None:
    """A contact sheet: per loop, the first trial's real start view, real furthest view, and the dream's
    return (which should look like the start view)."""
    import matplotlib.pyplot as plt

    from envs.common.video import save_figure

    names = list(result["loops"])
    fig, axes = plt.subplots(len(names), 3, figsize=(3 * 1.6 * scale / 2, len(names) * 1.7 * scale / 2),
                             squeeze=False)
    for row, name in zip(axes, names):
        r = result["loops"][name]
        start, far, dream = r["pictures"][0]
        for ax, img, title in zip(row, (start, far, dream),
                                  (f"{name}: real start", "real, furthest", f"dream return {r['return_psnr']:.1f} dB")):
            ax.imshow(img)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    save_figure(fig, path)
