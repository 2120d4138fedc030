"""Do tokenizers keep turns? Turn agreement of reconstructions on live turn probes, tokenizers side by side.

    PYTHONPATH=. python benchmarks/tokenizer_turns.py --tokenizers default runs/tok_r2_stab/tokenizer \
        --probes 64 [--env-kwargs '{"styles": [1]}'] --out benchmarks/results/tokenizer_tradeoff/turns.json

Every tokenizer encodes and decodes the same real probes (held-out mazes: a short random walk, then held
turn_left and turn_right; ``worldmodel.evaluation.action_check.turn_probe``). A turn agrees when the decoded
image shifts by at least 1 px the way the turn moves the real one (``turn_agreement``). A dream cannot follow a
turn better than its tokenizer shows it, so this bounds ``benchmarks/action_check.py``'s dream figure from
above. Stable ids (``stability_weight``) may leave small camera moves undrawn; this measures how often.
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizers", nargs="+", required=True, help="tokenizer dirs, default or memory")
    ap.add_argument("--probes", type=int, default=64, help="live probes (held-out mazes), 24 turns each")
    ap.add_argument("--env", default="DMLabMaze-v0")
    ap.add_argument("--env-kwargs", default="{}", help="gym.make kwargs as JSON, e.g. '{\"styles\": [1]}'")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, help="results JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from envs.common.files import write_json
    from worldmodel.evaluation.action_check import TurnAgreement, turn_agreement, turn_probe
    from worldmodel.tokenizer.codec import decode_tokens, encode_frames
    from worldmodel.tokenizer.files import load_tokenizer, named_tokenizer

    env_kwargs = json.loads(args.env_kwargs)
    probes = [turn_probe(args.env, env_kwargs, seed=s) for s in range(args.probes)]     # (frames, actions, meanings)
    rows = {"real": [turn_agreement(f, a, m) for f, a, m in probes]}
    for name in args.tokenizers:
        tok = load_tokenizer(named_tokenizer(name))
        rows[name] = [turn_agreement(decode_tokens(tok, encode_frames(tok, f)), a, m) for f, a, m in probes]
    summary = {}
    for name, per in rows.items():
        t = TurnAgreement.pooled(per)
        summary[name] = {"turns": t.turns, "agree": t.agree, "rate": t.rate, "median_abs_shift": t.median_abs_shift}
        print(f"{name:50s} {100 * t.rate:5.1f} % of {t.turns} turns", flush=True)
    write_json(args.out, {"env": args.env, "env_kwargs": env_kwargs, "probes": args.probes, "summary": summary,
                          "per_probe": {n: [r.agree / r.turns if r.turns else None for r in per]
                                        for n, per in rows.items()}})


if __name__ == "__main__":
    main()
