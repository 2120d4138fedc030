"""Rows and files of `maskflow eval`: scoring dreamed frames against the real ones, and the report.

A *row* is one experiment (or baseline) at one horizon: NFE and seconds per video, FVD of the last and
the first clip with its N (:class:`FVDBank`), per-frame PSNR / SSIM curves (:func:`frame_scores`).
Files: report.md (settings, result tables, the paper's comparisons side by side), results.json (every
number), psnr.png and ssim.png (per-frame curves over the horizon) and fvd.png (FVD against the
extrapolation factor). Everything is written atomically; report.md goes last.

Axis letters: n videos, f frames, h w token grid, y x pixels, c colour.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from einops import rearrange

from envs.common.files import atomic_write, write_json
from worldmodel.dream.verb import decode_tokens
from worldmodel.evaluation.stats import CONFIDENCE, band_means, format_margin
from worldmodel.metrics.quality import frechet_distance, i3d_features
from worldmodel.metrics.quality import fvd_stats as gaussian_fit
from worldmodel.sampling.base import guidance_label

if TYPE_CHECKING:
    from worldmodel.evaluation.evaluate import Checkpoint, RealVideos

PSNR_CAP = 100.0            # identical frames: report 100 dB instead of inf
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


class FVDBank:
    """FVD of clips against the real clips at the same positions; I3D features are computed once per set."""

    def __init__(self, real: np.ndarray, clip: int, enabled: bool, device: torch.device, progress: bool) -> None:
        self.real, self.clip, self.enabled = real, clip, enabled
        self.device, self.progress = device, progress
        self.model = None
        self.cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def _fit(self, key: tuple, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if key not in self.cache:
            if self.model is None:
                from worldmodel.metrics.i3d_weights import load_i3d

                self.model = load_i3d(self.device)
            feats = i3d_features(np.ascontiguousarray(clips), device=self.device, model=self.model)
            self.cache[key] = gaussian_fit(feats)
        return self.cache[key]

    def score(self, source: str, pred: np.ndarray, start: int, constant: bool = False) -> dict | None:
        """FVD of ``pred[:, start:start + clip]`` (n f y x c, aligned with the real future) or None when
        the clip does not fit; ``constant`` marks a source whose clips do not depend on ``start``."""
        if not self.enabled or start < 0 or start + self.clip > pred.shape[1]:
            return None
        real = self._fit(("real", start), self.real[:, start:start + self.clip])
        fake = self._fit((source, 0 if constant else start), pred[:, start:start + self.clip])
        return {"fvd": frechet_distance(*real, *fake), "n_real": len(self.real), "n_fake": len(pred),
                "clip_len": self.clip, "first_frame": start + 1}


def frame_scores(pred: np.ndarray, real: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame PSNR (capped at 100 dB) and SSIM of (n f y x c) uint8 pairs: two (n f) arrays.

    Same definitions as :func:`worldmodel.metrics.quality.psnr_per_frame` / ``ssim_per_frame`` (11x11 Gaussian
    SSIM), batched in float32: ~30x faster than their float64 per-video calls, equal to ~1e-6."""
    from worldmodel.tokenizer.evaluation import frame_quality

    a = torch.from_numpy(rearrange(pred, "n f y x c -> (n f) y x c"))
    b = torch.from_numpy(rearrange(real, "n f y x c -> (n f) y x c"))
    parts = [frame_quality(b[i:i + chunk], a[i:i + chunk]) for i in range(0, len(a), chunk)]
    p = torch.cat([x[0] for x in parts]).double().clamp(max=PSNR_CAP).numpy()
    s = torch.cat([x[1] for x in parts]).double().numpy()
    return (rearrange(p, "(n f) -> n f", n=len(pred)), rearrange(s, "(n f) -> n f", n=len(pred)))


def new_views(real: RealVideos, frames: int) -> np.ndarray:
    """(n f) bool: the real future frame is not the last context frame repeated exactly.

    With a deterministic renderer, turning back and forth (or walking into a wall) returns the very same
    view; copy-the-last-frame then scores the PSNR cap (100 dB), which no dream decoded through the
    tokenizer can."""
    start = real.dream_start
    return ~(real.frames[:, start:start + frames] == real.frames[:, start - 1:start]).all(axis=(2, 3, 4))


def make_row(base: dict, horizon: int, k: int, psnr: np.ndarray, ssim: np.ndarray, bank: FVDBank, source: str,
             pred: np.ndarray, nfe: int, seconds: float, new_view: np.ndarray, constant: bool = False) -> dict:
    """One table row: an experiment (or baseline) at one horizon; ``pred`` (n ≥ horizon frames); ``new_view``
    (n ≥ horizon) marks the real frames that are not the last context frame repeated (:func:`new_views`)."""
    curve_p, curve_s = psnr[:, :horizon].mean(0), ssim[:, :horizon].mean(0)
    first = bank.score(source, pred, 0, constant) if horizon > bank.clip else None
    return {**base, "id": f"{base['key']}@{horizon // k}x", "horizon_factor": horizon // k, "frames": horizon,
            "nfe": int(nfe), "seconds_per_video": float(seconds),
            "fvd_last": bank.score(source, pred, horizon - bank.clip, constant), "fvd_first": first,
            "psnr_mean": float(curve_p.mean()), "ssim_mean": float(curve_s.mean()),
            "psnr_last": float(curve_p[-1]), "ssim_last": float(curve_s[-1]),
            "psnr_curve": curve_p.round(3).tolist(), "ssim_curve": curve_s.round(4).tolist(),
            "psnr_bands": band_means(psnr[:, :horizon], k),
            "psnr_bands_new_view": band_means(psnr[:, :horizon], k, new_view[:, :horizon])}


def baseline_rows(real: RealVideos, ckpt: Checkpoint, tokens: torch.Tensor, encode_s: float,
                  horizons: list[int], bank: FVDBank, k: int, new_view: np.ndarray) -> list[dict]:
    """Copy-the-last-context-frame and tokenizer-reconstruction rows at every horizon; ``new_view`` as in
    :func:`make_row`, over the longest horizon."""
    start, h_max, n = real.dream_start, max(horizons), len(real.frames)
    truth = real.frames[:, start:start + h_max]
    t0 = time.perf_counter()
    recon = rearrange(decode_tokens(ckpt.tokenizer, rearrange(tokens[:, start:start + h_max], "n f h w -> (n f) h w")),
                      "(n f) y x c -> n f y x c", n=n)
    per_frame_s = (time.perf_counter() - t0) / (n * h_max) + encode_s
    copy = np.repeat(real.frames[:, start - 1:start], h_max, axis=1)
    rows = []
    for key, pred, label, cost in (("copy_last", copy, "repeat the last context frame", 0.0),
                                   ("reconstruction", recon, "tokenizer encode + decode of the real frames",
                                    per_frame_s)):
        psnr, ssim = frame_scores(pred, truth)
        base = {"key": key, "experiment": key, "checkpoint": "baseline", "model": label, "training_masking": "",
                "mode": "baseline", "sampler": "", "steps": 0, "context": 1 if key == "copy_last" else 0,
                "stride": 0, "kv_cache": False, "nfe_context": 0}
        rows += [make_row(base, h, k, psnr, ssim, bank, key, pred, 0, cost * h, new_view, constant=key == "copy_last")
                 for h in horizons]
    return rows



# ---------------------------------------------------------------------------------------------- report
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
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


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
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(out: Path, results: dict[str, Any]) -> None:
    """results.json, the three plots, then report.md (last: its presence means the eval finished)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    plot_curves(out / "psnr.png", results["rows"], "psnr", "PSNR vs real (dB)")
    plot_curves(out / "ssim.png", results["rows"], "ssim", "SSIM vs real")
    plot_fvd(out / "fvd.png", results["rows"], results["num_videos"])
    with atomic_write(out / "report.md") as tmp:
        tmp.write_text(build_markdown(results))
