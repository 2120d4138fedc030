"""Do actions matter in the dream? Turn agreement measured by horizontal image motion.

A turn of the first-person camera moves the whole image sideways: in ``DMLabMaze-v0`` (MiniWorld's
renderer) ``turn_left`` moves the image content to the RIGHT by about 12 px per step at the default
12° turn on a 64-px frame, ``turn_right`` to the left (measured by :func:`measure_turn_sign`, which
the tests run against the real renderer). :func:`horizontal_shift` measures that motion between two
consecutive frames by phase correlation; :func:`turn_agreement` is the fraction of turn steps whose
measured motion has the sign the action implies (a frame that does not move counts as a miss, so a
frozen or action-blind dream scores low).

:func:`action_check` compares (a) real frame sequences, (b) their tokenizer reconstructions (the
ceiling the dream can reach) and (c) dreams driven by the same actions from the same real context.
Real sequences come from a dataset's held-out episodes or, without one, from *turn probes* played
live: a short random walk, then turn_left held for ``hold`` steps, then turn_right held, repeated.

Axis letters: f frames, y x pixels, c colour.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from envs.policies import Policy

# Sign of the horizontal image motion that turn_left causes (+1 = content moves right), measured on
# DMLabMaze-v0 by measure_turn_sign (+12 px per 12° turn); turn_right moves it the other way.
TURN_LEFT_SHIFT_SIGN = 1
TURNS = {"turn_left": 1, "turn_right": -1}


def horizontal_shift(a: np.ndarray, b: np.ndarray) -> float:
    """Horizontal displacement (pixels, + = right) of frame ``b``'s content relative to frame ``a``.

    Phase correlation of the Hann-windowed grey images (y x c or y x) with a parabolic sub-pixel peak;
    returns 0.0 when either frame is flat (no texture to follow)."""
    ga = np.asarray(a, np.float64)
    gb = np.asarray(b, np.float64)
    if ga.ndim == 3:
        ga, gb = ga.mean(-1), gb.mean(-1)
    ga, gb = ga - ga.mean(), gb - gb.mean()
    if ga.std() < 1e-6 or gb.std() < 1e-6:
        return 0.0
    win = np.outer(np.hanning(ga.shape[0]), np.hanning(ga.shape[1]))
    cross = np.fft.fft2(gb * win) * np.conj(np.fft.fft2(ga * win))
    corr = np.fft.ifft2(cross / (np.abs(cross) + 1e-9)).real
    dy, dx = np.unravel_index(int(np.argmax(corr)), corr.shape)
    w = corr.shape[1]
    left, mid, right = corr[dy, (dx - 1) % w], corr[dy, dx], corr[dy, (dx + 1) % w]
    denom = left - 2 * mid + right
    sub = 0.5 * (left - right) / denom if abs(denom) > 1e-12 else 0.0
    return float((dx + w // 2) % w - w // 2 + sub)


@dataclass
class TurnAgreement:
    """Agreement of image motion with turn actions: ``rate`` = agree / turns (nan without turns)."""

    turns: int
    agree: int
    shifts: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.agree / self.turns if self.turns else float("nan")

    @property
    def median_abs_shift(self) -> float:
        """Median |horizontal shift| (px) over the turns (nan without turns)."""
        return float(np.median(np.abs(self.shifts))) if self.shifts else float("nan")

    @classmethod
    def pooled(cls, parts: Iterable[TurnAgreement]) -> TurnAgreement:
        """The agreement over several sequences' turns together."""
        out = cls(0, 0)
        for p in parts:
            out.turns, out.agree, out.shifts = out.turns + p.turns, out.agree + p.agree, out.shifts + p.shifts
        return out


def turn_agreement(frames: np.ndarray, actions: np.ndarray, meanings: tuple[str, ...] | list[str],
                   left_sign: int = TURN_LEFT_SHIFT_SIGN, min_shift: float = 1.0) -> TurnAgreement:
    """Agreement on the turn steps of a sequence: frames (f y x c), actions (f,) where ``actions[i]`` led to
    frame i (-1 = none). A turn agrees when |shift| >= ``min_shift`` px and its sign is ``left_sign`` for
    turn_left, ``-left_sign`` for turn_right."""
    frames, actions = np.asarray(frames), np.asarray(actions)
    if len(frames) != len(actions):
        from envs.common.errors import ConfigError

        raise ConfigError(f"frames ({len(frames)}) and actions ({len(actions)}) must be aligned per frame")
    turn_of = {i: TURNS[m] for i, m in enumerate(meanings) if m in TURNS}
    out = TurnAgreement(0, 0)
    for i in range(1, len(frames)):
        d = turn_of.get(int(actions[i]))
        if d is None:
            continue
        s = horizontal_shift(frames[i - 1], frames[i])
        out.turns += 1
        out.shifts.append(s)
        out.agree += int(abs(s) >= min_shift and np.sign(s) == d * left_sign)
    return out


class TurnScript:
    """A probe's policy: ``warmup`` steps of a collection policy, then (turn_left × hold, turn_right × hold)
    repeated (``act(obs, info) -> int``, as :func:`envs.heldout.play_heldout` wants)."""

    def __init__(self, walk: Policy, warmup: int, meanings: tuple[str, ...], hold: int) -> None:
        self.walk, self.warmup, self.t = walk, warmup, 0
        self.script = [meanings.index("turn_left")] * hold + [meanings.index("turn_right")] * hold

    def act(self, obs=None, info: dict | None = None) -> int:
        t, self.t = self.t, self.t + 1
        return self.walk.act(obs, info) if t < self.warmup else self.script[(t - self.warmup) % len(self.script)]


def turn_probe(env_id: str = "DMLabMaze-v0", env_kwargs: dict | None = None, seed: int = 0, warmup: int = 8,
               hold: int = 6, cycles: int = 2, policy: str = "random_walk") -> tuple[np.ndarray, np.ndarray, tuple]:
    """A real probe sequence: ``warmup`` random-walk frames (the reset frame included) in a held-out maze
    (odd maze seed), then (turn_left × hold, turn_right × hold) × cycles. Returns frames (f y x c),
    actions (f,) and the env's action meanings."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers the env ids)
    from envs.heldout import env_action_meanings, play_heldout
    from envs.policies import make_policy

    warmup = max(1, warmup)
    n = warmup - 1 + 2 * hold * cycles               # steps: the warm-up frames include the reset frame
    env = gym.make(env_id, **{**dict(env_kwargs or {}), "max_episode_steps": n + 1})
    try:
        meanings = env_action_meanings(env)
        probe = TurnScript(make_policy(policy, meanings, seed=seed + 1), warmup - 1, meanings, hold)
        play = play_heldout(env, n, seed, probe)     # (the time limit n + 1 lies past the last step)
        return play.frames, play.actions, meanings
    finally:
        env.close()


def measure_turn_sign(env_id: str = "DMLabMaze-v0", env_kwargs: dict | None = None, seeds: tuple[int, ...] = (0, 1)
                      ) -> tuple[int, float]:
    """Sign (+1 right / -1 left) and median size (px) of the image motion that turn_left causes in the
    real env, from turn probes; turn_right is assumed to be its mirror (the tests check both)."""
    shifts = []
    for s in seeds:
        frames, actions, meanings = turn_probe(env_id, env_kwargs, seed=s)
        left = meanings.index("turn_left")
        shifts += [horizontal_shift(frames[i - 1], frames[i]) for i in range(1, len(frames)) if actions[i] == left]
    med = float(np.median(shifts))
    return (1 if med > 0 else -1), abs(med)


def action_check(checkpoint: str, data: str | None = None, split: str = "test", episodes: int = 4,
                 frames: int = 48, seed: int = 0, steps_per_frame: int | None = None, temperature: float = 1.0,
                 sampler: str = "mgm", device: str = "cpu", hold: int = 6, gumbel: float | None = None,
                 schedule: str = "arccos", context_length: int | None = None, action_guidance: float = 0.0,
                 history_guidance: float = 0.0, precision: str = "auto",
                 env_id: str = "", env_kwargs: dict | None = None) -> dict[str, Any]:
    """Turn agreement of real frames, their tokenizer reconstructions and the dream, on the same turn steps.

    Each sequence's first ``context_length`` (window − 1) frames are the dream's context; the rest of
    its actions drive the dream. With ``data`` the sequences are the first ``frames`` frames of
    ``episodes`` held-out episodes; without, ``episodes`` live turn probes (held turns of ``hold`` steps).
    ``gumbel``, ``schedule``, ``context_length``, the guidance weights and ``precision`` are the dream env's.
    ``env_id`` / ``env_kwargs``: the live probes' mazes (:meth:`DreamCore.probe_env`; default: the checkpoint's).
    Returns ``{"real", "recon", "dream"}`` agreement rates, ``turns`` counted, ``per_sequence`` (``[agree, turns]``
    of each sequence, per kind) and the settings."""
    from worldmodel.dream.context import dataset_episode
    from worldmodel.dream.env import MaskFlowDreamEnv
    from worldmodel.tokenizer.codec import decode_tokens, encode_frames

    env = MaskFlowDreamEnv(checkpoint, context="given", sampler=sampler, steps_per_frame=steps_per_frame,
                           temperature=temperature, gumbel=gumbel, schedule=schedule, context_length=context_length,
                           max_episode_steps=None, device=device, timing_info=False,
                           action_guidance=action_guidance, history_guidance=history_guidance,
                           precision=precision)
    try:
        core, m = env.core, env.core.context_length
        meanings = core.meanings
        env_id, env_kwargs = core.probe_env(env_id, env_kwargs)
        seqs = []
        for e in range(episodes):
            if data:
                ep = dataset_episode(data, split, e, core.tokenizer)
                seqs.append((ep.frames[:frames], ep.actions[:frames]))
            else:
                cycles = max(1, (frames - m) // (2 * hold))
                f, a, real_meanings = turn_probe(env_id, env_kwargs, seed=seed + e,
                                                 warmup=m, hold=hold, cycles=cycles)
                if tuple(real_meanings) != tuple(meanings):
                    from envs.common.errors import CheckpointError

                    raise CheckpointError(f"the checkpoint's actions {list(meanings)} differ from {env_id}'s "
                                          f"{list(real_meanings)}")
                seqs.append((f, a))
        parts: dict[str, list[TurnAgreement]] = {k: [] for k in ("real", "recon", "dream")}
        for e, (f, a) in enumerate(seqs):
            if len(f) <= m:
                continue
            obs, _ = env.reset(seed=seed + e, options={"context_frames": f[:m], "context_actions": a[:m]})
            dreamed = [obs]
            for act in a[m:]:
                dreamed.append(env.step(int(act))[0])
            recon = decode_tokens(core.tokenizer, encode_frames(core.tokenizer, f[m - 1:]))
            for k, seq in (("real", f[m - 1:]), ("recon", recon), ("dream", np.stack(dreamed))):
                parts[k].append(turn_agreement(seq, a[m - 1:], meanings))
        totals = {k: TurnAgreement.pooled(v) for k, v in parts.items()}
        out = {k: v.rate for k, v in totals.items()}
        out.update(turns=totals["real"].turns, sequences=len(seqs), seed=seed, context_length=m,
                   source=f"{data} {split}" if data else "live turn probes",
                   **({} if data else {"env_id": env_id, "env_kwargs": env_kwargs}),
                   action_guidance=action_guidance, history_guidance=history_guidance,
                   steps_per_frame=core.sampler.num_steps, precision=str(core.rollout.dtype).removeprefix("torch."),
                   median_abs_shift_px={k: v.median_abs_shift for k, v in totals.items()},
                   # [agree, turns] per sequence, in order: two checks of the same probes pair sequence by sequence
                   per_sequence={k: [[p.agree, p.turns] for p in v] for k, v in parts.items()})
        return out
    finally:
        env.close()
