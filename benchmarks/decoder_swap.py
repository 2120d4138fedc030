"""Decoder swap: does a new decoder on the shipped tokenizer's frozen encoder make the dream look better?

    PYTHONPATH=. python benchmarks/decoder_swap.py --decoder runs/decoder_small/tokenizer --data runs/data_dec \
        --split test --windows 64 --frames 16 --out benchmarks/results/decoder_swap

``--windows`` windows are cut (seeded, round robin over the split's episodes, as ``maskflow eval`` picks its
videos) from held-out episodes: ``context`` real frames (default window - 1 = 15), then ``--frames`` real future
frames with the actions that led to them. The context is encoded with the shipped encoder and the world model
dreams ``--frames`` frames from it at the dream's default sampler settings (MGM, DEFAULT_FRAME_STEPS per frame, Gumbel
annealing 8), the windows batched. There is ONE dream per window: the same dreamed token ids are decoded by the
old decoder (the checkpoint's tokenizer) and by the new one (``--decoder``), so every difference between the two
is the decoder's. The real future frames are also encoded and decoded by both (the reconstruction, the ceiling
each decoder can reach). The new tokenizer is checked to share the encoder (``swap_decoder`` refuses another
one) and to give the very same context token ids.

Per decoder: PSNR / SSIM of the decoded dream against the real future frames (mean over frames 1..F per window,
then over windows), the same for the reconstruction, FVD of the F-frame dreamed clips and of the reconstructed
clips against the real clips (one clip per window: with 64 clips FVD is noisy and biased upwards, an order of
magnitude fewer than the 2048 of the standard protocol; ``--fvd false`` skips it), and the paired margins
new - old per window with percentile-bootstrap 95 % intervals. Written to ``--out``: ``results.json``,
``side_by_side.png`` (real | old | new at dreamed frames 1, 4, 8, 16 and the reconstruction, x2) and
``recon_crops.png`` (real | old | new reconstructions at x4).

Axis letters: n windows, f frames, h w token grid, y x pixels, c colour.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

SHOW_HORIZONS = (1, 4, 8, 16)


def str2bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decoder", required=True, help="new tokenizer dir (or its train-tokenizer run)")
    p.add_argument("--checkpoint", default="default", help="world model whose tokenizer is the old one")
    p.add_argument("--data", required=True, help="frames dataset of real episodes")
    p.add_argument("--split", default="test")
    p.add_argument("--windows", type=int, default=64, help="windows (one dream each)")
    p.add_argument("--frames", type=int, default=16, help="dreamed frames per window (F)")
    p.add_argument("--context", type=int, default=0, help="real context frames (0 = window - 1)")
    p.add_argument("--batch", type=int, default=16, help="windows dreamed together in one batched rollout")
    p.add_argument("--seed", type=int, default=0, help="picks the windows and seeds the sampler")
    p.add_argument("--fvd", type=str2bool, default=True, help="compute FVD (needs >= 2 windows, >= 9 frames)")
    p.add_argument("--show", type=int, default=6, help="windows shown in side_by_side.png")
    p.add_argument("--crops", type=int, default=4, help="windows shown in recon_crops.png")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = adapt to the load)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results/decoder_swap")
    a = p.parse_args(argv)
    for key in ("windows", "frames", "batch"):
        if getattr(a, key) < 1:
            p.error(f"--{key} must be >= 1")
    if a.fvd:
        from worldmodel.metrics.i3d import MIN_FRAMES

        if a.frames < MIN_FRAMES or a.windows < 2:
            p.error(f"FVD needs >= 2 windows of >= {MIN_FRAMES} frames (got --windows {a.windows} --frames "
                    f"{a.frames}); raise them or pass --fvd false")
    return a


def load_windows(data: str, split: str, n: int, need: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(n f y x c) uint8 frames and (n f) actions of ``n`` windows of ``need`` frames, picked as eval picks videos."""
    from envs.common.errors import ConfigError
    from envs.dataset import EpisodeDataset
    from worldmodel.evaluation.videos import choose_videos

    ds = EpisodeDataset(data, split=split)
    try:
        if ds.kind != "frames":
            raise ConfigError(f"{data} holds {ds.kind}, not frames: the real frames are the reference here")
        lengths = ds.lengths()
        if max(lengths) < need:
            raise ConfigError(f"windows of {need} frames are needed but the longest {split} episode of {data} has "
                              f"{max(lengths)}; lower --frames or --context")
        picks = choose_videos(lengths, need, n, np.random.default_rng(seed))
        frames, actions, info = [], [], []
        for e, s in picks:
            ep = ds.episode(e)
            frames.append(np.asarray(ep["frames"][s:s + need], np.uint8))
            actions.append(np.asarray(ep["actions"][s:s + need], np.int64))
            info.append({"episode": e, "episode_id": int(ep["id"]), "start": s})
    finally:
        ds.close()
    return np.stack(frames), np.stack(actions), info


def per_frame(fn, pred: np.ndarray, real: np.ndarray) -> np.ndarray:
    """(n f) scores of ``fn`` (psnr/ssim per frame) over windows."""
    return np.stack([fn(p, r) for p, r in zip(pred, real, strict=True)])


def decode_all(tokenizer, tokens: torch.Tensor) -> np.ndarray:
    """(n f h w) ids -> (n f y x c) uint8."""
    from worldmodel.tokenizer.codec import decode_tokens

    n, f = tokens.shape[:2]
    out = decode_tokens(tokenizer, tokens.reshape(n * f, *tokens.shape[2:]))
    return out.reshape(n, f, *out.shape[1:])


def margin(new: np.ndarray, old: np.ndarray, seed: int) -> dict[str, Any]:
    from worldmodel.evaluation.stats import paired_margin

    return paired_margin(new.tolist(), old.tolist(), seed=seed)


def tile_rows(rows: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Rows of (k y x c) tiles -> one image, white gaps between tiles and rows."""
    lines = []
    for r in rows:
        sep = np.full((r.shape[1], gap, 3), 255, np.uint8)
        parts = []
        for t in r:
            parts += [t, sep]
        lines.append(np.concatenate(parts[:-1], axis=1))
    width = max(x.shape[1] for x in lines)
    out = []
    for x in lines:
        pad = np.full((x.shape[0], width - x.shape[1], 3), 255, np.uint8)
        out += [np.concatenate([x, pad], axis=1), np.full((gap, width, 3), 255, np.uint8)]
    return np.concatenate(out[:-1])


def save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    from envs.common.files import atomic_write

    with atomic_write(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def spread(n: int, k: int) -> list[int]:
    """``k`` window indices spread evenly over ``n``."""
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, min(k, n))})


def side_by_side_png(path: Path, real: np.ndarray, old: np.ndarray, new: np.ndarray, rec_old: np.ndarray,
                     rec_new: np.ndarray, windows: list[int], scale: int = 2) -> None:
    """Per window three rows (real | old decoder | new decoder): dreamed frames 1, 4, 8, 16 (those <= F), then the
    reconstruction of the last real frame (real row: that frame again); the real row names the window."""
    from envs.common.video import label, upscale

    f = real.shape[1]
    hs = [h for h in SHOW_HORIZONS if h <= f] or [f]
    idx = [h - 1 for h in hs]
    rows = []
    for w in windows:
        names = [f"+{h}" for h in hs]
        rows.append(label(upscale(np.concatenate([real[w, idx], real[w, f - 1:f]]), scale),
                          [f"w{w} real {t}" for t in names] + [f"real +{f}"]))
        rows.append(label(upscale(np.concatenate([old[w, idx], rec_old[w, f - 1:f]]), scale),
                          [f"old dream {t}" for t in names] + [f"old recon +{f}"], color=(255, 160, 160)))
        rows.append(label(upscale(np.concatenate([new[w, idx], rec_new[w, f - 1:f]]), scale),
                          [f"new dream {t}" for t in names] + [f"new recon +{f}"], color=(160, 255, 160)))
    save_png(path, tile_rows(rows))


def recon_crops_png(path: Path, real: np.ndarray, rec_old: np.ndarray, rec_new: np.ndarray, windows: list[int],
                    scale: int = 4) -> None:
    """Per window one row: the real last future frame | its old-decoder | its new-decoder reconstruction, x4."""
    from envs.common.video import label, upscale

    f = real.shape[1]
    rows = [label(upscale(np.stack([real[w, f - 1], rec_old[w, f - 1], rec_new[w, f - 1]]), scale),
                  [f"w{w} real +{f}", "old decoder recon", "new decoder recon"]) for w in windows]
    save_png(path, tile_rows(rows))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    from tqdm.auto import tqdm

    from envs.common.errors import ConfigError
    from envs.common.files import write_json
    from worldmodel.common.threads import governor
    from worldmodel.dream.verb import DreamConfig, sampler_config
    from worldmodel.metrics.quality import psnr_per_frame, ssim_per_frame
    from worldmodel.model.checkpoint import load_world_model, swap_decoder
    from worldmodel.sampling.base import make_generator
    from worldmodel.sampling.imagine import imagine
    from worldmodel.tokenizer.codec import encode_frames
    from worldmodel.tokenizer.files import identity_of_dir, read_tokenizer_meta

    gov = governor(a.threads)
    device = torch.device(a.device)
    t_start = time.perf_counter()
    model, old_tok, meta = load_world_model(a.checkpoint, device=device)
    if old_tok is None:
        raise ConfigError(f"{meta['path']} carries no tokenizer: there is no old decoder to compare with")
    with tempfile.TemporaryDirectory(prefix="decoder_swap_") as tmp:
        # swap_decoder refuses a tokenizer with another encoder and writes only what loads
        swapped = swap_decoder(a.checkpoint, a.decoder, Path(tmp) / "swapped")
        _, new_tok, _ = load_world_model(swapped, device=device)
    k = int(model.cfg.max_frames)
    if a.context > k - 1:
        raise ConfigError(f"--context must be in [0, {k - 1}] for this checkpoint (window {k})")
    m = a.context if a.context > 0 else k - 1
    F = a.frames
    n_actions = int(meta["action_space"]["n"])

    frames, actions, picks = load_windows(a.data, a.split, a.windows, m + F, a.seed)
    n = len(frames)
    if int(actions[:, 1:].max(initial=0)) >= n_actions:
        raise ConfigError(f"{a.data} uses actions the model does not know (it knows {n_actions})")
    real_future = frames[:, m:]                                                # (n f y x c)
    flat = frames.reshape(n * (m + F), *frames.shape[2:])
    tokens = encode_frames(old_tok, flat).reshape(n, m + F, *old_tok.token_grid)    # (n f h w)
    same_ids = bool(torch.equal(tokens.cpu(), encode_frames(new_tok, flat).reshape(tokens.shape).cpu()))
    if not same_ids:
        raise ConfigError(f"{a.decoder} encodes the real frames to other token ids than the checkpoint's tokenizer")

    masking = str(meta.get("train_config", {}).get("scheduler", "sigmoid"))
    scfg = sampler_config(DreamConfig(seed=a.seed), masking)
    gen = make_generator(scfg, device)
    acts = torch.as_tensor(actions, device=device)
    dreamed, nfe = [], 0
    bar = tqdm(total=n * F, desc="dream", unit="frame", dynamic_ncols=True)
    t0 = time.perf_counter()
    for s in range(0, n, a.batch):
        sl = slice(s, s + a.batch)
        b = len(tokens[sl])
        im = imagine(model, scfg, tokens[sl, :m], acts[sl, :m], acts[sl, m:], F, gen,
                     tick=lambda j, b=b: bar.update(j * b))
        dreamed.append(im.tokens)
        nfe = im.nfe
    dream_s = time.perf_counter() - t0
    bar.close()
    dream_tokens = torch.cat(dreamed)                                          # (n f h w)

    t1 = time.perf_counter()
    dec = {"old": {"dream": decode_all(old_tok, dream_tokens), "recon": decode_all(old_tok, tokens[:, m:])},
           "new": {"dream": decode_all(new_tok, dream_tokens), "recon": decode_all(new_tok, tokens[:, m:])}}
    decode_s = time.perf_counter() - t1
    scores: dict[str, dict[str, np.ndarray]] = {}
    for name, d in dec.items():
        for kind, video in d.items():
            scores.setdefault(name, {})[f"{kind}_psnr"] = per_frame(
                lambda p, r: psnr_per_frame(p, r, identical=100.0), video, real_future)
            scores[name][f"{kind}_ssim"] = per_frame(ssim_per_frame, video, real_future)
    copy = np.repeat(frames[:, m - 1:m], F, axis=1)
    floor = {"psnr": per_frame(lambda p, r: psnr_per_frame(p, r, identical=100.0), copy, real_future),
             "ssim": per_frame(ssim_per_frame, copy, real_future)}

    fvd: dict[str, Any] = {}
    fvd_s = 0.0
    if a.fvd:
        from worldmodel.metrics.i3d_weights import load_i3d
        from worldmodel.metrics.quality import compute_fvd, video_stats

        t2 = time.perf_counter()
        i3d = load_i3d(device)
        real_stats = video_stats(real_future, model=i3d)
        for name, d in dec.items():
            for kind, video in d.items():
                r = compute_fvd(real_stats, video, model=i3d)
                fvd[f"{name}_{kind}"] = {"fvd": r.fvd, "n_real": r.n_real, "n_fake": r.n_fake, "clip_len": r.clip_len}
        fvd_s = time.perf_counter() - t2

    metrics = {}
    for name, s in scores.items():
        metrics[name] = {key: float(v.mean()) for key, v in s.items()}
        metrics[name]["per_window"] = {key: v.mean(1).round(4).tolist() for key, v in s.items()}
        metrics[name]["per_frame"] = {key: v.mean(0).round(4).tolist() for key, v in s.items()}
        if fvd:
            metrics[name]["dream_fvd"] = fvd[f"{name}_dream"]["fvd"]
            metrics[name]["recon_fvd"] = fvd[f"{name}_recon"]["fvd"]
    margins = {key: margin(scores["new"][key].mean(1), scores["old"][key].mean(1), a.seed)
               for key in ("dream_psnr", "dream_ssim", "recon_psnr", "recon_ssim")}

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    side_by_side_png(out / "side_by_side.png", real_future, dec["old"]["dream"], dec["new"]["dream"],
                     dec["old"]["recon"], dec["new"]["recon"], spread(n, a.show))
    recon_crops_png(out / "recon_crops.png", real_future, dec["old"]["recon"], dec["new"]["recon"], spread(n, a.crops))

    def describe(tok, ident, path) -> dict[str, Any]:
        cfg = tok.cfg.to_dict()
        return {"path": str(path), "weights_sha256": ident.get("weights_sha256"),
                "encoder_sha256": ident.get("encoder_sha256"), "decoder_sha256": ident.get("decoder_sha256"),
                "decoder_widths": cfg.get("decoder_widths") or cfg.get("widths"),
                "decoder_res_blocks": cfg.get("decoder_res_blocks") or cfg.get("res_blocks"),
                "decoder_parameters": sum(p.numel() for p in tok.decoder.parameters())}

    tok_meta = read_tokenizer_meta(a.decoder)
    res = {
        "what": "one dream per window (the world model's token ids); the SAME dreamed tokens are decoded by the old "
                "and the new decoder, so every dream difference below is the decoder's. The reconstruction "
                "(real future frames encoded, then decoded) is each decoder's ceiling.",
        "checkpoint": meta["path"],
        "decoders": {"old": describe(old_tok, meta["tokenizer"], Path(meta["path"]) / "tokenizer"),
                     "new": describe(new_tok, identity_of_dir(a.decoder), a.decoder)},
        "new_decoder_training": {k2: tok_meta.get("provenance", {}).get(k2) for k2 in ("steps", "eval", "data")},
        "same_token_ids_real_frames": same_ids,
        "data": a.data, "split": a.split, "windows": n, "context": m, "frames": F, "seed": a.seed,
        "sampler": {"name": scfg.name, "steps_per_frame": scfg.num_steps, "temperature": scfg.temperature,
                    "gumbel": scfg.gumbel, "schedule": scfg.schedule, "masking": masking},
        "nfe_per_video": int(nfe), "picks": picks,
        "metrics": metrics,
        "copy_last_context_frame": {"psnr": float(floor["psnr"].mean()), "ssim": float(floor["ssim"].mean())},
        "margins_new_minus_old": margins,
        "margin_note": "per-window means over frames 1..F, new - old, percentile bootstrap 95 % over windows "
                       "(worldmodel.evaluation.stats.paired_margin); wins = share of windows where new > old",
        "fvd": fvd or None,
        "fvd_note": (f"FVD of {n} real vs {n} decoded {F}-frame clips (one per window), standard I3D protocol; "
                     "with so few clips (the protocol's headline uses 2048) it is noisy and biased upwards: "
                     "compare old and new only with each other, not with other FVD figures")
        if fvd else "skipped (--fvd false)",
        "seconds": {"total": round(time.perf_counter() - t_start, 1), "dream": round(dream_s, 1),
                    "decode": round(decode_s, 1), "fvd": round(fvd_s, 1)},
        "dream_frames_per_s": round(n * F / dream_s, 2),
        "threads": gov.threads,
        "images": {"side_by_side.png": "rows real | old | new at dreamed frames 1, 4, 8, 16 and the reconstruction "
                                       "of the last real frame, x2",
                   "recon_crops.png": "real | old | new reconstruction of the last real future frame, x4"},
    }
    write_json(out / "results.json", res)
    print_table(res)
    return res


def print_table(res: dict[str, Any]) -> None:
    n, F = res["windows"], res["frames"]
    print(f"\ndecoder swap: {n} windows, {res['context']} context + {F} dreamed frames, one dream per window "
          f"(the same dreamed tokens decoded by both decoders); {res['dream_frames_per_s']} dreamed frames/s")
    fv = res["fvd"] is not None
    head = f"{'':<5}{'dream PSNR':>11}{'dream SSIM':>11}{'recon PSNR':>11}{'recon SSIM':>11}"
    print(head + (f"{'dream FVD':>11}{'recon FVD':>11}" if fv else ""))
    for name in ("old", "new"):
        x = res["metrics"][name]
        line = (f"{name:<5}{x['dream_psnr']:>11.2f}{x['dream_ssim']:>11.4f}"
                f"{x['recon_psnr']:>11.2f}{x['recon_ssim']:>11.4f}")
        print(line + (f"{x['dream_fvd']:>11.1f}{x['recon_fvd']:>11.1f}" if fv else ""))
    c = res["copy_last_context_frame"]
    print(f"{'copy':<5}{c['psnr']:>11.2f}{c['ssim']:>11.4f}   (repeat the last context frame: the floor)")
    print("new - old per window, mean [bootstrap 95 %], wins:")
    for key, mg in res["margins_new_minus_old"].items():
        fmt = "{:+.2f}" if key.endswith("psnr") else "{:+.4f}"
        unit = " dB" if key.endswith("psnr") else ""
        print(f"  {key:<11} {fmt.format(mg['mean'])}{unit} [{fmt.format(mg['ci_low'])}, {fmt.format(mg['ci_high'])}]"
              f"  wins {mg['wins']:.0%} of {mg['n']}")
    if fv:
        print(f"FVD: N = {n} clips per side; noisy and biased upwards at this N")
    print(json.dumps({"seconds": res["seconds"]}))


if __name__ == "__main__":
    main()
