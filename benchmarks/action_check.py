"""Action check: do turns in the dream move the image the way they do in the real maze?

    PYTHONPATH=. python benchmarks/action_check.py CHECKPOINT [--data DIR] [--out A.json] [--pair-with B.json]

Prints the turn agreement (fraction of turn steps whose horizontal image motion has the sign of the
action; see ``worldmodel/action_check.py``) of (a) real frames, (b) their tokenizer reconstructions
and (c) the dream driven by the same actions from the same real context. Without ``--data`` the
sequences are live turn probes in held-out mazes (held turn_left, then held turn_right). ``--pair-with`` an
earlier ``--out`` of the same probes pairs two models (or two decoders of one model) sequence by sequence.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from envs.common.files import write_json


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="world-model directory, 'default' or 'memory'")
    p.add_argument("--data", default=None, help="dataset of real episodes (default: live turn probes)")
    p.add_argument("--split", default="test")
    p.add_argument("--episodes", type=int, default=4, help="sequences to check")
    p.add_argument("--frames", type=int, default=48, help="frames per sequence, context included")
    p.add_argument("--steps-per-frame", type=int, default=None)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--sampler", default="mgm")
    p.add_argument("--gumbel", type=float, default=None,
                   help="MGM confidence annealing strength (default: the dream's, DEFAULT_FRAME_GUMBEL)")
    p.add_argument("--schedule", default="arccos", help="MGM unmask-count schedule")
    p.add_argument("--action-guidance", type=float, default=0.0,
                   help="classifier-free guidance on the action (0 = off)")
    p.add_argument("--history-guidance", type=float, default=0.0, help="guidance towards the history (0 = off)")
    p.add_argument("--context-length", type=int, default=None, help="real context frames (default window - 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", help="auto (bf16 where native) | fp32 | bf16")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = adapt to the load)")
    p.add_argument("--env-kwargs", default=None,
                   help="live probes' maze settings as JSON, e.g. '{\"styles\": [1]}' (default: the checkpoint's)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--out", default="", help="also write the full result here as JSON")
    p.add_argument("--pair-with", default="",
                   help="an earlier --out of the same probes (same seed, episodes, mazes): the dream's agreement "
                        "A - B, paired sequence by sequence, with a bootstrap 95 %% interval")
    a = p.parse_args(argv)
    earlier = read_earlier(a.pair_with) if a.pair_with else None     # refused before the check runs
    if a.threads > 0:
        import torch

        torch.set_num_threads(a.threads)
    from worldmodel.evaluation.action_check import action_check

    r = action_check(a.checkpoint, data=a.data, split=a.split, episodes=a.episodes, frames=a.frames, seed=a.seed,
                     steps_per_frame=a.steps_per_frame, temperature=a.temperature, sampler=a.sampler,
                     device=a.device, gumbel=a.gumbel, schedule=a.schedule, context_length=a.context_length,
                     action_guidance=a.action_guidance, history_guidance=a.history_guidance,
                     precision=a.precision, env_kwargs=json.loads(a.env_kwargs) if a.env_kwargs else None)
    if earlier is not None:
        r["paired"] = pair_dreams(r, earlier, a.pair_with)
    if a.out:
        write_json(a.out, r)
    if a.json:
        print(json.dumps(r, indent=1))
    else:
        print(f"turn agreement on {r['turns']} turns ({r['source']}, {r['sequences']} sequences, "
              f"context {r['context_length']} frames)")
        for k, label in (("real", "real frames"), ("recon", "tokenizer reconstruction"), ("dream", "dream")):
            print(f"  {label:<26} {100 * r[k]:6.1f} %   median |shift| {r['median_abs_shift_px'][k]:.1f} px")
        if earlier is not None:
            m = r["paired"]
            print(f"  dream - {a.pair_with}: {100 * m['mean']:+.2f} points [{100 * m['ci_low']:+.2f}, "
                  f"{100 * m['ci_high']:+.2f}] over {m['n']} sequences")
    return r


def read_earlier(path: str) -> dict:
    """An earlier ``--out`` to pair with; a ConfigError naming ``path`` unless it holds per-probe counts."""
    from envs.common.errors import CheckpointError, ConfigError
    from envs.common.files import read_json

    try:
        earlier = read_json(path, "action-check JSON")
    except CheckpointError as e:
        raise ConfigError(f"--pair-with {path}: {e}") from None
    if not isinstance(earlier, dict) or not isinstance(earlier.get("per_sequence"), dict):
        raise ConfigError(f"--pair-with {path}: holds no per_sequence results (write one with --out)")
    return earlier


def pair_dreams(now: dict, earlier: dict, name: str) -> dict:
    """The dream's turn agreement of ``now`` minus ``earlier`` on the same probes, paired per sequence (each
    sequence's agreement rate; probes hold the same number of turns, so the mean is the pooled difference)."""
    from envs.common.errors import ConfigError
    from worldmodel.evaluation.stats import paired_margin

    a, b = (r["per_sequence"].get("real") for r in (now, earlier))
    same = ("source", "env_kwargs", "seed", "sequences", "context_length")
    if a != b or any(now.get(k) != earlier.get(k) for k in same):
        raise ConfigError(f"--pair-with {name}: other sequences than this check's (the real frames' turns differ); "
                          "use the same --seed, --episodes, --frames, --data and --env-kwargs")
    rate = [[g / t if t else None for g, t in r["per_sequence"]["dream"]] for r in (now, earlier)]
    return paired_margin(*rate)


if __name__ == "__main__":
    main()
