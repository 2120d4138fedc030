"""The files of `maskflow eval`: the report of its rows (scored in :mod:`worldmodel.evaluation.scores`).

report.md (settings, result tables, the paper's comparisons side by side, paired margins), results.json
(every number), psnr.png and ssim.png (per-frame curves over the horizon) and fvd.png (FVD against the
extrapolation factor). Everything is written atomically; report.md goes last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from envs.common.files import atomic_write, write_json
from envs.common.video import save_figure
from worldmodel.evaluation.scores import PSNR_CAP
from worldmodel.evaluation.stats import CONFIDENCE, format_margin
from worldmodel.sampling.base import guidance_label

PAPER_STEPS = {"mgm": 20, "mgm_tfree": 20, "fm": 250, "df": 250, "rolling": 250}
# The paper's comparisons: (title, groups of row keys shown side by side when >= 2 of a group ran)
MASKING_TITLE = "frame-level vs constant masking (paper Table 3)"
COMPARISONS: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    (MASKING_TITLE,
     tuple((k, f"compare:{k}") for k in ("full_mgm", "full_fm", "full_mgm_tfree", "full_df", "full_rolling",
                                         "fbf_mgm", "fbf_mgm_tfree", "fbf_fm", "fbf_df"))),
    ("MGM vs FM sampling (quality and NFE; paper Tables 1, 3)", (("full_mgm", "full_fm"), ("fbf_mgm", "fbf_fm"))),
    ("timestep-dependent vs timestep-free MGM (paper Table 4)",
     (("full_mgm", "full_mgm_tfree"), ("fbf_mgm", "fbf_mgm_tfree"))),
    ("MGM vs Diffusion-Forcing pyramid vs Rolling, chunkwise (paper Tables 1, 5)",
     (("full_mgm", "full_df", "full_rolling"),)),
    ("frame-by-frame vs full-sequence (paper Table 2)", (("fbf_mgm", "full_mgm"),)),
)


def fmt_fvd(f: dict | None) -> str:
    """``123.4 (N=8)`` or an en dash when the clip did not fit / FVD was off."""
    return "–" if f is None else f"{f['fvd']:.1f} (N={f['n_fake']})"


def sampler_label(row: dict) -> str:
    """``mgm 20`` or ``fm 50 (paper 250)`` — reduced step counts are labelled."""
    if row["mode"] == "baseline":
        return "–"
    paper = PAPER_STEPS[row["sampler"]] if row["mode"] == "full-sequence" else None
    note = f" (paper {paper})" if paper is not None and paper != row["steps"] else ""
    if row["sampler"] == "rolling":
        return f"rolling S={row['steps']}{note}"
    per = '/frame' if row['mode'] == 'frame-by-frame' else '/chunk'
    return f"{row['sampler']} {row['steps']}{per}{note}{guidance_label(row)}"


def wins(m: dict) -> str:
    return f"{round(m['wins'] * m['n'])} / {m['n']}"


def row_name(row: dict) -> str:
    return f"`{row['key']}`"


def table(header: Sequence[str], lines: list[Sequence[Any]]) -> list[str]:
    """A markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return out


def full_line(r: dict) -> list[Any]:
    ms = "–" if r["mode"] == "baseline" else f"{r['context']} / {r['stride']}"
    nfe = f"{r['nfe']}" + (f" (+{r['nfe_context']} ctx)" if r["nfe_context"] else "")
    return [row_name(r), r["model"], r["mode"], sampler_label(r), ms, nfe, f"{r['seconds_per_video']:.2f}",
            fmt_fvd(r["fvd_last"]), fmt_fvd(r["fvd_first"]), f"{r['psnr_mean']:.2f}", f"{r['ssim_mean']:.3f}",
            f"{r['psnr_last']:.2f}"]


FULL_HEADER = ("row", "model", "mode", "sampler (steps)", "m / s", "NFE per video", "s per video",
               "FVD last clip", "FVD first clip", "PSNR mean (dB)", "SSIM mean", "PSNR last frame")


def group_title(title: str, rows: list[dict]) -> str:
    """The comparison's title; a main-vs-compare group is paper Table 3 only when the two models' training
    masking is frame-level vs constant (any other compare checkpoint is just the second model)."""
    if title == MASKING_TITLE and sorted(r["training_masking"] for r in rows) != ["constant", "frame"]:
        return f"main vs compare checkpoint ({' vs '.join(r['model'] for r in rows)})"
    return title


def comparison_lines(rows: list[dict]) -> tuple[list[list[Any]], list[str]]:
    """Lines of the side-by-side table (per horizon: each comparison's groups, then the baselines) and notes."""
    by = {(r["key"], r["frames"]): r for r in rows}
    present = {r["key"] for r in rows}
    lines, notes = [], []
    for title, groups in COMPARISONS:
        if not any(len(present.intersection(g)) >= 2 for g in groups) and title != MASKING_TITLE:
            # (no compare_checkpoint: the evaluation's own note says so)
            notes.append(f"{title}: not run (needs the experiments {' + '.join(groups[0])})")
    for h in sorted({r["frames"] for r in rows}):
        for title, groups in COMPARISONS:
            for group in groups:
                here = [by[(k, h)] for k in group if (k, h) in by]
                if len(here) >= 2:
                    lines += [[group_title(title, here), f"{r['horizon_factor']}x ({h} f)", *full_line(r)]
                              for r in here]
        lines += [["baseline", f"{by[(k, h)]['horizon_factor']}x ({h} f)", *full_line(by[(k, h)])]
                  for k in ("copy_last", "reconstruction") if (k, h) in by]
    return lines, notes


def pivot_lines(rows: list[dict]) -> tuple[list[str], list[list[Any]]]:
    """FVD (last clip) / NFE / seconds per video of every row key across horizons."""
    horizons = sorted({r["frames"] for r in rows})
    factor = {r["frames"]: r["horizon_factor"] for r in rows}
    keys = list(dict.fromkeys(r["key"] for r in rows))
    by = {(r["key"], r["frames"]): r for r in rows}
    header = ["row", "mode", "sampler (steps)"] + [f"{factor[h]}x = {h} frames" for h in horizons]
    lines = []
    for k in keys:
        first = next(r for r in rows if r["key"] == k)
        cells = [f"{fmt_fvd(by[(k, h)]['fvd_last'])} / {by[(k, h)]['nfe']} / {by[(k, h)]['seconds_per_video']:.2f} s"
                 if (k, h) in by else "" for h in horizons]
        lines.append([row_name(first), first["mode"], sampler_label(first), *cells])
    return header, lines


def loop_lines(loops: dict[str, Any]) -> list[str]:
    """The loop-closure section: per loop, the dream's return to its start view against the bounds."""
    md = ["", "## Loop closure (memory beyond the window)", "",
          f"{loops['trials']} live held-out mazes per loop (the same for every loop), real context of "
          f"{loops['context_length']} frames, then the loop's turns (`turnL`: left L, right L; `circleN`: left N, "
          "30 = a full circle); the real maze returns to the identical view. PSNR of the dream's last frame against "
          "the real start view (return), against the real view turned furthest away (far), and of the tokenizer's "
          "reconstruction of the start view (ceiling: copying the start view through the tokenizer). Goal: return "
          "within 4 dB of the ceiling and >= 5 dB above far. Self: the way back against the dream's own frames at "
          "the same heading on the way out (turn loops only)."
          + (" Dreamed with heading recall (views that left the window come back by heading while the camera "
             "only turns)." if loops.get("heading_recall") else ""), ""]

    def self_psnr(r: dict[str, Any]) -> str:
        return "–" if r.get("self_psnr") is None else f"{r['self_psnr']:.2f}"

    md += table(("loop", "frames", "return (dB)", "far (dB)", "return - far", "ceiling (dB)", "real return",
                 "self (dB)", "goal met"),
                [[f"`{name}`", r["frames"], f"{r['return_psnr']:.2f}", f"{r['far_psnr']:.2f}",
                  f"{r['return_minus_far']:+.2f}", f"{r['ceiling_psnr']:.2f}", f"{r['real_return_psnr']:.1f}",
                  self_psnr(r), "yes" if r["goal_met"] else "no"] for name, r in loops["loops"].items()])
    if loops.get("paired"):
        md += ["", "Against the `pair_with` eval on the same mazes (this − that, mean and bootstrap 95 % interval; "
               "wins: share of mazes where this is higher):", ""]
        md += table(("loop", "return", "wins", "return - far", "wins"),
                    [[f"`{name}`", format_margin(m["return_psnr"]), f"{m['return_psnr']['wins']:.0%}",
                      format_margin(m["return_minus_far"]), f"{m['return_minus_far']['wins']:.0%}"]
                     for name, m in loops["paired"].items()])
    return md + ["", "![loop closure: real start, real furthest, dream return](loops.png)"]


def reward_lines(rw: dict[str, Any]) -> list[str]:
    """The reward-recall section: does the dream's reward head fire at real goal reaches, and only there?"""
    def rate(r: dict[str, Any] | None) -> str:
        if r is None:
            return "–"
        return f"{r['rate']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] ({r['count']}/{r['of']})"

    md = ["", "## Rewards and terminations", "",
          f"{rw['trials']} live held-out mazes played by the goal-seeking oracle; at its first goal reach t the dream "
          f"gets the real context up to t - {rw['lead']} and the real actions after it. Recall: the reward "
          f"probability exceeds {rw['reward_threshold']} within ± {rw['tolerance']} frames of t. False alarms: the "
          f"same test on windows of the same plays with no reach within {rw['lead'] + rw['tolerance']} frames. "
          "Goal: recall >= 0.7 with false alarms <= 0.1. Intervals: 95 % Wilson.", ""]
    md += table(("head", "recall [95 % CI]", "false alarms [95 % CI]"),
                [["reward", rate(rw["reward_recall"]), rate(rw["reward_false_alarms"])],
                 ["termination", rate(rw["done_recall"]), rate(rw["done_false_alarms"])]])
    return md + ["", f"Mean peak reward probability: {rw['mean_peak']['reach']:.3f} at reaches, "
                 f"{rw['mean_peak']['no_reach'] or 0:.3f} away from them. Goal met: "
                 f"{'yes' if rw['goal_met'] else 'no'}.", "", "![reward recall: real and dreamed reaches](rewards.png)"]


def build_markdown(results: dict[str, Any]) -> str:
    """The whole report.md text."""
    s, rows, n = results["settings"], results["rows"], results["num_videos"]
    main = results["models"]["main"]
    k, clip = s["window"], s["fvd_frames"]
    episodes = sorted({v["episode"] for v in results["videos"]})
    md = ["# MaskFlow eval report", "",
          f"Checkpoint `{main['path']}` ({main['parameters'] / 1e6:.2f} M parameters, d={main['dim']}, "
          f"depth {main['depth']}, {main['temporal']} temporal attention, window k = {k}, "
          f"{main['token_grid'][0]}x{main['token_grid'][1]} tokens, vocabulary {main['vocab_size']}, "
          f"{main['training_masking']} masking, trained {main['train_step']} steps), evaluated on "
          f"**N = {n} videos** from {len(episodes)} held-out `{s['split']}` episode(s) of `{s['data']}` "
          f"({results['data_kind']} dataset) in {results['seconds_total']:.0f} s.", "",
          f"**FVD with N = {n} is strongly biased upward and noisy** (headline FVD uses 2048 clips; two "
          "same-distribution sets of 128 maze clips already differ by ~33): compare rows of this report with each "
          "other, never with published numbers. Every FVD carries its N.", ""]
    if "compare" in results["models"]:
        c = results["models"]["compare"]
        md += [f"Compare checkpoint `{c['path']}`: {c['label']} ({c['parameters'] / 1e6:.2f} M parameters, "
               f"{c['training_masking']} masking).", ""]
    md += ["## Settings", ""]
    md += table(("key", "value"), [[f"`{key}`", f"`{val}`"] for key, val in s.items()])
    md += ["", f"Frame-by-frame (`fbf_*`): stride s = 1, context m = k - 1 = {s['fbf_context']}. Full-sequence "
           f"(`full_*`): context m = {s['full_context_used']}, stride s = k - m = {k - s['full_context_used']}. "
           f"Horizons: `long_experiments` at {s['horizons']} x k, every other experiment at "
           f"{s['comparison_horizons']} x k. FVD clips: {clip} frames; protocol: {results['fvd_protocol']}.", "",
           "## Videos", ""]
    vids = results["videos"]
    md += table(("video", "episode (id)", "episode frames", "first dreamed frame"),
                [[i, f"{v['episode']} ({v['episode_id']})", v["episode_frames"], v["first_dreamed_frame"]]
                 for i, v in enumerate(vids[:24])])
    if len(vids) > 24:
        md.append(f"| … | {len(vids) - 24} more in results.json | | |")
    if len(episodes) < n:
        md += ["", f"There are fewer usable episodes ({len(episodes)}) than videos ({n}), so several videos are clips "
               "of one episode at different start offsets (distinct while the episode is long enough)."]
    header, lines = pivot_lines(rows)
    md += ["", f"## FVD across horizons (FVD of the last {clip} dreamed frames (N) / NFE per video / s per video)", ""]
    md += table(header, lines)
    comp, comp_notes = comparison_lines(rows)
    md += ["", "## The paper's comparisons at our scale, side by side", "",
           "Per horizon: the rows of each comparison, then the two baselines (copy the last context frame: the floor "
           "a dream must beat; tokenizer reconstruction of the real video: the ceiling).", ""]
    md += table(("comparison", "horizon", *FULL_HEADER), comp)
    md += [""] + [f"- {x}" for x in comp_notes + results["notes"]]
    if results.get("paired"):
        md += ["", "## Paired margins (per video, 95 % bootstrap CI)", "",
               f"Mean PSNR of each row minus the row it is set against, over the same {n} videos, per frame band; "
               f"[low, high] is a percentile-bootstrap {CONFIDENCE:.0%} interval over the videos; 'better on' counts "
               "the videos on which the row wins. A margin whose interval spans 0 is not resolved at this N.", ""]
        repeats = results.get("repeated_views", 0)
        if repeats:
            md += [f"{repeats} of the {n} x {max(r['frames'] for r in rows)} real future frames repeat their video's "
                   "last context frame exactly (with a deterministic renderer, turning back and forth or walking "
                   "into a wall returns the very same view). Copy-the-last-frame scores those at the PSNR cap of "
                   f"{PSNR_CAP:.0f} dB, which no dream decoded through the tokenizer can, so the last two columns "
                   "leave them out of both rows (videos with no other frame in a band drop out of it).", ""]
        md += table(("row", "against", "frames", "PSNR margin", "better on", "margin, new views only", "better on"),
                    [[f"`{m['row']}`", f"`{m['against']}`", m["band"], format_margin(m), wins(m),
                      format_margin(m["new_view"]), wins(m["new_view"])] for m in results["paired"]])
    if results.get("loops"):
        md += loop_lines(results["loops"])
    if results.get("rewards"):
        md += reward_lines(results["rewards"])
    md += ["", "## All rows", ""]
    md += table(("horizon", *FULL_HEADER), [[f"{r['horizon_factor']}x ({r['frames']} f)", *full_line(r)]
                                            for r in sorted(rows, key=lambda r: r["frames"])])
    md += ["", "## Per-frame quality over the horizon", "",
           "![PSNR per frame](psnr.png)", "", "![SSIM per frame](ssim.png)", "", "![FVD vs horizon](fvd.png)", "",
           "## How the numbers were made", "",
           "- Every video's dream starts at the same real frame for every row (its context is the m real frames "
           "before it); the real continuation's actions drive the dream. PSNR / SSIM compare each dreamed frame with "
           "the real frame at the same position (PSNR capped at 100 dB); curves are means over the N videos.",
           f"- FVD last clip: the last {clip} frames of the horizon against the real clips at the same positions; FVD "
           f"first clip: the first {clip} dreamed frames (shown when the horizon is longer than a clip). '–': the "
           "horizon is shorter than a clip, or FVD is off.",
           "- NFE per video (model calls; a call on a batch of videos counts once): cached frame-by-frame rollout "
           "H·(T + 1) (T sampling calls + one pass that commits the frame to the KV cache; '+m ctx' = the commit "
           "passes that fill the cache with the context); chunkwise C·T (MGM, FM), C·(T + k) (Diffusion Forcing) "
           "and 2S + (m + H − k)·⌈S/(k − m)⌉ (Rolling), with C = 1 + ⌈(m + H − k)/s⌉ windows "
           "(worldmodel.sampling.chunkwise.expected_nfe). The counted NFE of every dream was checked against "
           "these formulas.",
           f"- Seconds per video: sampling wall-clock of batches of up to {s['batch_size']} videos divided by the "
           "videos in them (tokenizer decode and metrics excluded; the reconstruction row is encode + decode). "
           + ("Each horizon was dreamed separately." if s["separate_horizons"] else
              "A shorter horizon reads the clock where the longest dream reaches its frame count (cached "
              "rollout) or its NFE (chunkwise); its frames are that dream's prefix."),
           "- Reproducible: the same config (seed, num_videos, batch_size, horizons) gives the same videos and "
           "dreams."]
    return "\n".join(md) + "\n"


def plot_curves(path: Path, rows: list[dict], metric: str, ylabel: str) -> None:
    """Per-frame ``metric`` curves: each row key at its longest horizon (baselines dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    longest: dict[str, dict] = {}
    for r in rows:
        if r["key"] not in longest or r["frames"] > longest[r["key"]]["frames"]:
            longest[r["key"]] = r
    fig, ax = plt.subplots(figsize=(8.5, 4))
    for key, r in longest.items():
        y = r[f"{metric}_curve"]
        style = dict(ls="--", lw=1.2, color="0.5" if key == "reconstruction" else "tab:red") \
            if r["mode"] == "baseline" else dict(lw=1.4)
        ax.plot(range(1, len(y) + 1), y, label=f"{key} ({sampler_label(r)})" if r["mode"] != "baseline" else key,
                **style)
    ax.set_xlabel("dreamed frame (frames after the context)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    save_figure(fig, path)


def plot_fvd(path: Path, rows: list[dict], n: int) -> None:
    """FVD of the last clip against the extrapolation factor, one line per row key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    keys = list(dict.fromkeys(r["key"] for r in rows))
    drawn = 0
    for key in keys:
        pts = sorted((r["horizon_factor"], r["fvd_last"]["fvd"]) for r in rows
                     if r["key"] == key and r["fvd_last"] is not None and math.isfinite(r["fvd_last"]["fvd"]))
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", ls="--" if key in ("copy_last", "reconstruction") else "-",
                    label=key)
            drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no FVD: fvd=false or every horizon is shorter than fvd_frames", ha="center",
                va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=7)
    ax.set_xlabel("extrapolation factor (dreamed frames / window k)")
    ax.set_ylabel(f"FVD of the last clip (N = {n}; biased at small N)")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def write_report(out: Path, results: dict[str, Any]) -> None:
    """results.json, the three plots, then report.md (last: its presence means the eval finished)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    plot_curves(out / "psnr.png", results["rows"], "psnr", "PSNR vs real (dB)")
    plot_curves(out / "ssim.png", results["rows"], "ssim", "SSIM vs real")
    plot_fvd(out / "fvd.png", results["rows"], results["num_videos"])
    with atomic_write(out / "report.md") as tmp:
        tmp.write_text(build_markdown(results))
