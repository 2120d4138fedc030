"""Reward recall: does the dream's reward head fire where the real maze gives a goal reach?

Each trial plays a fresh held-out maze (odd maze seed, :func:`envs.heldout.play_heldout`) with the
goal-seeking oracle (:class:`envs.policies.GoalSeekingPolicy`) until its first goal reach at step t with a
full context before it. The dream gets the real context ending ``lead`` frames before the reach and the
real actions after it, and dreams ``lead + tolerance`` frames, up to t + ``tolerance``.

- **Hit**: the reward probability exceeds ``threshold`` (the dream env's ``reward_threshold``) on a dreamed
  frame within ± ``tolerance`` frames of t. Recall = hits / trials.
- **False alarm**: the same test on a window of the same shape from the same play, anchored at a step u
  with no real reach within ``lead + tolerance`` frames. False-alarm rate = such windows that fire / windows.
  Being from goal-seeking plays, these are often near the goal: hard negatives.
- **Termination**: where the env ends the episode at the reach (``goal_mode="terminate"``) the done head is
  scored the same way; in respawn mode nothing ends, so only its false alarms are counted.

The goal of the RL issue: recall ≥ 0.7 with false alarms ≤ 0.1.

**Calibration** (``maskflow calibrate``, :func:`calibrate_rewards`): the same windows on *other* held-out
mazes (seeds from 500,000) give the reward head's peaks away from reaches; the threshold is the lowest one
that keeps their false alarms within a budget (default 2 %), and it is written beside the weights
(``reward_calibration.json``), which the dream then uses. Evaluations keep their own mazes (seeds from 0).

Axis letters: f frames, y x pixels, c colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from envs.common.config_check import SEED, THREADS, Check, at_least, check_config, within
from envs.common.errors import ConfigError


@dataclass
class EventWindow:
    """One dream to score: real context frames (m y x c) and actions (m,), the real actions to dream with
    (lead + tolerance,), and the real frames at those steps (same length) for pictures."""

    context_frames: np.ndarray
    context_actions: np.ndarray
    actions: np.ndarray
    real: np.ndarray
    terminal: bool          # the real episode ended at the event (a termination to recall)
    maze_seed: int
    step: int               # the anchor step t (the reach) or u (no reach near)


def event_windows(env_id: str, env_kwargs: dict | None, trial: int, seed: int, context: int, lead: int,
                  tolerance: int, max_steps: int = 900,
                  policy: str = "goal_seeking") -> tuple[EventWindow | None, EventWindow | None]:
    """The reach window and the no-reach window of trial ``trial`` (None where the play had none)."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers the env ids)
    from envs.heldout import play_heldout

    kwargs = dict(env_kwargs or {})
    if env_id.startswith("DMLabMaze"):          # one unbroken episode: reaches respawn, only a termination ends it
        kwargs["max_episode_steps"] = max_steps + 1
    env = gym.make(env_id, **kwargs)
    try:
        play = play_heldout(env, max_steps, seed + trial, policy, on_end="stop")
    finally:
        env.close()
    n = len(play.frames)
    terminal_at = n - 1 if play.episodes_ended else -1
    reaches = np.flatnonzero(play.rewards > 0)
    first = context + lead - 1                   # earliest anchor with a full context before it

    def window(t: int) -> EventWindow:
        s = t - lead                             # last context frame
        idx = np.arange(s + 1, t + tolerance + 1)
        acts = np.where(idx < n, play.actions[np.minimum(idx, n - 1)], 0)      # noop after a termination
        real = play.frames[np.minimum(idx, n - 1)]
        return EventWindow(play.frames[s - context + 1: s + 1], play.actions[s - context + 1: s + 1], acts, real,
                           t == terminal_at, play.maze_seed, int(t))

    hits = [int(t) for t in reaches if t >= first]
    pos = window(hits[0]) if hits else None
    rng = np.random.default_rng(seed + trial + 104729)
    far = lead + tolerance
    free = [u for u in range(first, n - tolerance) if not np.any(np.abs(reaches - u) <= far)]
    neg = window(int(rng.choice(free))) if free else None
    return pos, neg


def exceed_rate(peaks, threshold: float) -> dict[str, Any]:
    """Share of windows whose peak probability passes ``threshold``, with its 95 % Wilson interval."""
    from worldmodel.evaluation.stats import wilson

    k, n = int(sum(float(p) > threshold for p in peaks)), len(peaks)
    return {"rate": k / n if n else None, "count": k, "of": n, "ci95": list(wilson(k, n))}


def reward_recall(checkpoint: str = "default", trials: int = 32, seed: int = 0, lead: int = 4, tolerance: int = 2,
                  threshold: float | None = None, steps_per_frame: int | None = None, precision: str = "auto",
                  device: str = "cpu", threads: int | None = 0, env_kwargs: dict | None = None,
                  max_steps: int = 900) -> dict[str, Any]:
    """Recall and false alarms of the reward (and termination) head over ``trials`` held-out mazes (trial i
    uses seed ``seed + i``). Returns the rates with 95 % Wilson intervals, every window's peak
    probabilities, and the settings."""
    from worldmodel.dream.env import MaskFlowDreamEnv

    if trials < 1:
        raise ConfigError(f"reward_trials={trials} must be >= 1")
    if lead < 1 or tolerance < 0:
        raise ConfigError(f"lead={lead} must be >= 1 and tolerance={tolerance} >= 0")
    env = MaskFlowDreamEnv(checkpoint, context="given", steps_per_frame=steps_per_frame, precision=precision,
                           max_episode_steps=None, device=device, threads=threads)
    try:
        core, m = env.core, env.core.context_length
        env_id = core.meta.get("env_id") or "DMLabMaze-v0"
        kwargs = {**dict(core.meta.get("env_kwargs") or {}), **dict(env_kwargs or {})}
        r_thr = core.reward_threshold if threshold is None else float(threshold)
        d_thr = core.done_threshold if threshold is None else float(threshold)
        # dreamed frame j (0-based) is step s + 1 + j = t - lead + 1 + j; frames within ± tolerance of t:
        near = slice(max(0, lead - 1 - tolerance), lead + tolerance)

        def dream(w: EventWindow, i: int) -> dict[str, Any]:
            env.reset(seed=seed + i, options={"context_frames": w.context_frames, "context_actions": w.context_actions})
            pr, pd, frames = [], [], []
            for a in w.actions:
                obs, _, _, _, info = env.step(int(a))
                pr.append(info["reward_prob"])
                pd.append(info["done_prob"])
                frames.append(obs)
            return {"maze_seed": w.maze_seed, "step": w.step, "terminal": w.terminal,
                    "reward_peak": float(max(pr[near])), "done_peak": float(max(pd[near])),
                    "reward_probs": [round(float(p), 4) for p in pr], "done_probs": [round(float(p), 4) for p in pd],
                    "frames": np.stack(frames), "real": w.real}

        pos, neg = [], []
        for i in range(trials):
            p, q = event_windows(env_id, kwargs, i, seed, m, lead, tolerance, max_steps)
            if p is not None:
                pos.append(dream(p, i))
            if q is not None:
                neg.append(dream(q, i))
        if not pos:
            raise ConfigError(f"no goal reach in {trials} held-out plays of {max_steps} steps: the env's goal cannot "
                              "be reached, so reward recall cannot be measured")

        terminal = [r for r in pos if r["terminal"]]
        out = {"trials": trials, "seed": seed, "lead": lead, "tolerance": tolerance, "context_length": m,
               "policy": "goal_seeking", "reward_threshold": r_thr, "done_threshold": d_thr,
               "steps_per_frame": core.sampler.num_steps, "dtype": str(core.rollout.dtype).removeprefix("torch."),
               "reward_recall": exceed_rate([r["reward_peak"] for r in pos], r_thr),
               "reward_false_alarms": exceed_rate([r["reward_peak"] for r in neg], r_thr),
               "done_recall": exceed_rate([r["done_peak"] for r in terminal], d_thr) if terminal else None,
               "done_false_alarms": exceed_rate([r["done_peak"] for r in neg + [p for p in pos if not p["terminal"]]],
                                                d_thr),
               "mean_peak": {"reach": float(np.mean([r["reward_peak"] for r in pos])),
                             "no_reach": float(np.mean([r["reward_peak"] for r in neg])) if neg else None}}
        out["goal_met"] = bool(out["reward_recall"]["rate"] >= 0.7 and (out["reward_false_alarms"]["rate"] or 0) <= 0.1)
        keys = ("maze_seed", "step", "terminal", "reward_peak", "done_peak", "reward_probs", "done_probs")
        out["reaches"] = [{k: r[k] for k in keys} for r in pos]
        out["no_reaches"] = [{k: r[k] for k in keys} for r in neg]
        out["pictures"] = [(r["real"], r["frames"], r["reward_probs"]) for r in pos[:4]]
        return out
    finally:
        env.close()


def reward_sheet(path, result: dict[str, Any]) -> None:
    """Contact sheet: for the first reaches, the real frames around the reach (top) and the dream with its
    reward probability under each frame (bottom); the reach is the frame marked ``t``."""
    import matplotlib.pyplot as plt

    from envs.common.video import save_figure

    pics = result["pictures"]
    lead = result["lead"]
    n = len(pics[0][0])
    fig, axes = plt.subplots(2 * len(pics), n, figsize=(n * 1.1, 2 * len(pics) * 1.2), squeeze=False)
    for i, (real, dream, probs) in enumerate(pics):
        for j in range(n):
            rel = j - (lead - 1)
            tag = "t" if rel == 0 else f"t{rel:+d}"
            for row, img, title in ((2 * i, real[j], f"real {tag}"), (2 * i + 1, dream[j], f"p={probs[j]:.2f}")):
                axes[row, j].imshow(img)
                axes[row, j].set_title(title, fontsize=6)
                axes[row, j].axis("off")
    save_figure(fig, path)


def pick_threshold(no_reach_peaks: list[float] | np.ndarray, max_false_alarms: float, floor: float = 0.05,
                   ceiling: float = 0.95) -> float:
    """The lowest threshold that at most ``max_false_alarms`` (a share) of the no-reach peaks exceed: the most
    recall that budget of false alarms allows. Kept in [``floor``, ``ceiling``] so that noise-level
    probabilities never count as rewards."""
    peaks = np.sort(np.asarray(no_reach_peaks, np.float64))[::-1]
    if len(peaks) == 0:
        raise ConfigError("no no-reach windows to calibrate on: play more trials")
    allowed = int(np.floor(max_false_alarms * len(peaks) + 1e-9))
    t = peaks[allowed] if allowed < len(peaks) else 0.0         # exceeded (strictly) by <= allowed peaks
    return float(np.clip(t, floor, ceiling))


@dataclass
class CalibrateConfig:
    """Settings of ``maskflow calibrate`` (the keys of ``configs/calibrate.yaml``)."""

    checkpoint: str = "default"     # world model whose reward threshold to pick (default | DIR)
    trials: int = 128               # held-out mazes played by the goal-seeking oracle
    seed: int = 500000              # trial i plays the held-out maze of seed + i (evaluations use seeds from 0)
    max_false_alarms: float = 0.02  # share of no-reach windows that may fire at the picked threshold
    steps_per_frame: int = 0        # MGM passes per dreamed frame (0 = the dream env's default)
    threads: int = 0                # torch CPU threads (0 = adapt to the cores other processes leave free)

    CHECKS: ClassVar[dict[str, Check]] = {
        "trials": at_least(1), "seed": SEED, "max_false_alarms": within(0, 1, hi_open=True),
        "steps_per_frame": at_least(0, "0 = the dream default"), "threads": THREADS,
    }

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first key of a wrong type or out of its range."""
        check_config(self)


def calibrate_rewards(cfg: CalibrateConfig) -> dict[str, Any]:
    """Pick the reward threshold of ``cfg.checkpoint`` on its own held-out mazes and write it beside the
    weights (``reward_calibration.json``); returns the record, with recall and false alarms at the picked
    threshold and at 0.5 on these calibration mazes."""
    from worldmodel.model.checkpoint import read_world_model_meta, resolve_checkpoint, write_reward_calibration

    cfg.validate()
    read_world_model_meta(cfg.checkpoint)               # a wrong folder fails before any maze is played
    res = reward_recall(cfg.checkpoint, cfg.trials, cfg.seed, steps_per_frame=cfg.steps_per_frame or None,
                        threads=cfg.threads)
    pos = np.array([r["reward_peak"] for r in res["reaches"]])
    neg = np.array([r["reward_peak"] for r in res["no_reaches"]])
    t = pick_threshold(neg, cfg.max_false_alarms)

    def at(thr: float) -> dict[str, Any]:
        r, f = exceed_rate(pos, thr), exceed_rate(neg, thr)
        return {"recall": r["rate"], "recall_ci95": r["ci95"], "reaches": r["of"],
                "false_alarms": f["rate"], "false_alarms_ci95": f["ci95"], "no_reaches": f["of"]}

    record = {"trials": cfg.trials, "seed": cfg.seed, "max_false_alarms": cfg.max_false_alarms,
              "policy": res["policy"], "lead": res["lead"], "tolerance": res["tolerance"],
              "steps_per_frame": res["steps_per_frame"], "dtype": res["dtype"],
              "at_threshold": at(t), "at_0.5": at(0.5)}
    path = write_reward_calibration(resolve_checkpoint(cfg.checkpoint), t, record)
    return {"reward_threshold": t, "path": str(path), **record}


def run_calibrate(cfg: Any) -> dict[str, Any]:
    """CLI entry of ``maskflow calibrate``."""
    import json

    from omegaconf import OmegaConf

    out = calibrate_rewards(CalibrateConfig(**OmegaConf.to_container(cfg, resolve=True)))
    print(json.dumps(out, indent=1))
    return out
