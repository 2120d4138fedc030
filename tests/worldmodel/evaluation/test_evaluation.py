"""`maskflow eval` end to end on the tiny real pipeline checkpoint (window 4, 8x8 tokens) with the real I3D.

The tiny frames dataset has one held-out episode of 25 frames, so the 2 videos FVD needs are clips of that
episode at two start offsets (the eval does this whenever there are fewer usable episodes than videos).
Horizons are 1x and 3x the window (4 and 12 dreamed frames) and FVD uses 9-frame clips (I3D's minimum),
so FVD exists at 3x only; every sampler runs a handful of steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.common.errors import ConfigError
from worldmodel.evaluation.evaluate import EXPERIMENTS, EvalConfig, evaluate, plan_experiments
from worldmodel.evaluation.videos import choose_videos
from worldmodel.sampling import SamplerConfig
from worldmodel.sampling.chunkwise import ChunkConfig, expected_nfe

K = 4                                    # the tiny checkpoint's window
STEPS = {"steps_frame": 2, "steps_mgm": 3, "steps_fm": 3, "steps_df": 2, "steps_rolling": 2}


def make_cfg(ckpt, data, out, **kw) -> EvalConfig:
    base = dict(checkpoint=str(ckpt), data=str(data), out=str(out), num_videos=2, batch_size=2, horizons=[1, 3],
                comparison_horizons=[1], fvd_frames=9, progress=False, seed=0, **STEPS)
    return EvalConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def full_eval(tiny_world_checkpoint, tiny_frames_dataset, tmp_path_factory):
    """One eval with every experiment, a (stand-in) compare checkpoint and FVD on."""
    out = tmp_path_factory.mktemp("eval") / "full"
    cfg = make_cfg(tiny_world_checkpoint, tiny_frames_dataset, out, compare_checkpoint=str(tiny_world_checkpoint),
                   compare_label="constant masking (stand-in)")
    return cfg, evaluate(cfg), out


def real_videos(data: Path, results: dict, frames: int) -> list[np.ndarray]:
    """The real frames from each video's context's last frame on, read straight from the dataset."""
    from envs.dataset import EpisodeDataset

    ds = EpisodeDataset(data, split="test")
    try:
        return [ds.episode(v["episode"])["frames"][v["first_dreamed_frame"] - 1:v["first_dreamed_frame"] + frames]
                for v in results["videos"]]
    finally:
        ds.close()


@pytest.mark.slow
def test_eval_writes_report_plots_and_json(full_eval):
    cfg, results, out = full_eval
    for name in ("report.md", "results.json", "psnr.png", "ssim.png", "fvd.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in ("psnr.png", "ssim.png", "fvd.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import json

    assert json.loads((out / "results.json").read_text())["rows"] == json.loads(json.dumps(results["rows"]))
    report = (out / "report.md").read_text()
    assert "N = 2 videos" in report and "(N=2)" in report          # N beside the headline and every FVD
    assert "fm 3/chunk (paper 250)" in report                     # reduced FM steps are labelled
    for key in ("fbf_mgm", "full_mgm", "full_mgm_tfree", "full_fm", "full_df", "full_rolling", "copy_last",
                "reconstruction", "compare:full_mgm", "compare:full_fm"):
        assert f"`{key}`" in report, key
    # the stand-in compare model was trained with frame-level masking too, so it is not labelled paper Table 3
    assert "main vs compare checkpoint (main (frame masking) vs constant masking (stand-in))" in report
    assert "| frame-level vs constant masking (paper Table 3) |" not in report
    for title in ("MGM vs FM", "timestep-dependent vs timestep-free",
                  "Diffusion-Forcing pyramid vs Rolling", "frame-by-frame vs full-sequence"):
        assert title in report, title
    assert "constant masking (stand-in)" in report
    for key in results["settings"]:                                  # every setting is stated
        assert f"`{key}`" in report, key


@pytest.mark.slow
def test_rows_horizons_and_nfe_match_the_formulas(full_eval):
    cfg, results, _ = full_eval
    rows = {r["id"]: r for r in results["rows"]}
    expected_ids = {f"{e}@{f}x" for e in ("fbf_mgm", "full_mgm", "copy_last", "reconstruction") for f in (1, 3)}
    expected_ids |= {f"{e}@1x" for e in ("full_mgm_tfree", "full_fm", "full_df", "full_rolling", "compare:full_mgm",
                                         "compare:full_fm")}
    assert set(rows) == expected_ids
    m_full = K // 2
    for r in rows.values():
        assert r["frames"] == r["horizon_factor"] * K and len(r["psnr_curve"]) == r["frames"]
        assert r["seconds_per_video"] >= 0
        if r["mode"] == "baseline":
            assert r["nfe"] == 0
        elif r["mode"] == "frame-by-frame":             # cached rollout: T sampling calls + 1 commit per frame
            assert (r["context"], r["stride"], r["kv_cache"]) == (K - 1, 1, True)
            assert r["nfe"] == r["frames"] * (cfg.steps_frame + 1) and r["nfe_context"] == K - 1
        else:
            steps = {"mgm": cfg.steps_mgm, "mgm_tfree": cfg.steps_mgm, "fm": cfg.steps_fm, "df": cfg.steps_df,
                     "rolling": cfg.steps_rolling}[r["sampler"]]
            chunking = ChunkConfig(K, m_full, m_full + r["frames"], K - m_full)
            assert (r["context"], r["stride"], r["steps"]) == (m_full, K - m_full, steps)
            assert r["nfe"] == expected_nfe(SamplerConfig(r["sampler"], steps=steps), chunking), r["id"]
    # the dream of the longest horizon counted exactly the formula's calls
    assert rows["full_mgm@3x"]["nfe_counted_longest"] == rows["full_mgm@3x"]["nfe"] == 6 * cfg.steps_mgm  # 1 + (14-4)/2
    assert rows["fbf_mgm@3x"]["nfe_counted_longest"] == 12 * (cfg.steps_frame + 1)
    assert rows["full_df@1x"]["nfe"] == 2 * (cfg.steps_df + K)       # 2 windows of T + k calls
    assert rows["full_rolling@1x"]["nfe"] == 2 * 2 + 2 * 1            # 2S + (N - k) ceil(S / (k - m))


@pytest.mark.slow
def test_fvd_uses_last_and_first_clips_with_n(full_eval):
    _, results, _ = full_eval
    for r in results["rows"]:
        if r["frames"] < 9:                               # horizon shorter than a clip: no FVD
            assert r["fvd_last"] is None and r["fvd_first"] is None
            continue
        for which, first in (("fvd_last", r["frames"] - 9 + 1), ("fvd_first", 1)):
            f = r[which]
            assert f["n_real"] == f["n_fake"] == 2 and f["clip_len"] == 9 and f["first_frame"] == first
            assert np.isfinite(f["fvd"]) and f["fvd"] > -1e-3
    fvds = {r["id"]: r["fvd_last"]["fvd"] for r in results["rows"] if r["fvd_last"]}
    assert len(set(np.round(list(fvds.values()), 6))) == len(fvds)      # different sets, different distances


@pytest.mark.slow
def test_videos_are_distinct_clips_and_baselines_are_right(full_eval, tiny_world_checkpoint, tiny_frames_dataset):
    from worldmodel.metrics.quality import psnr_per_frame, ssim_per_frame
    from worldmodel.model.checkpoint import load_world_model
    from worldmodel.tokenizer.codec import decode_tokens, encode_frames

    _, results, _ = full_eval
    vids = results["videos"]
    assert len(vids) == 2 and len({v["episode"] for v in vids}) == 1          # one test episode ...
    assert vids[0]["first_dreamed_frame"] != vids[1]["first_dreamed_frame"]   # ... at two offsets
    for v in vids:
        assert v["first_dreamed_frame"] >= K - 1 and v["first_dreamed_frame"] + 12 <= v["episode_frames"]
    rows = {r["id"]: r for r in results["rows"]}
    _, tok, _ = load_world_model(tiny_world_checkpoint)
    real = real_videos(tiny_frames_dataset, results, 12)
    copy = np.mean([np.minimum(psnr_per_frame(np.repeat(v[:1], 12, 0), v[1:]), 100) for v in real], axis=0)
    recon = [decode_tokens(tok, encode_frames(tok, v[1:])) for v in real]
    rec_psnr = np.mean([psnr_per_frame(r, v[1:]) for r, v in zip(recon, real, strict=True)], axis=0)
    rec_ssim = np.mean([ssim_per_frame(r, v[1:]) for r, v in zip(recon, real, strict=True)], axis=0)
    np.testing.assert_allclose(rows["copy_last@3x"]["psnr_curve"], copy, atol=2e-3)
    np.testing.assert_allclose(rows["reconstruction@3x"]["psnr_curve"], rec_psnr, atol=2e-3)
    np.testing.assert_allclose(rows["reconstruction@3x"]["ssim_curve"], rec_ssim, atol=2e-4)
    assert rows["copy_last@1x"]["psnr_curve"] == rows["copy_last@3x"]["psnr_curve"][:4]


@pytest.mark.slow
def test_same_config_same_dreams_and_seed_changes_them(full_eval, tiny_world_checkpoint, tiny_frames_dataset,
                                                       tmp_path):
    cfg, results, _ = full_eval
    kw = dict(experiments=["fbf_mgm", "full_mgm"], fvd=False)
    again = evaluate(make_cfg(tiny_world_checkpoint, tiny_frames_dataset, tmp_path / "a", **kw))
    other = evaluate(make_cfg(tiny_world_checkpoint, tiny_frames_dataset, tmp_path / "b", seed=1, **kw))
    first = {r["id"]: r for r in results["rows"]}
    for r in again["rows"]:
        assert r["psnr_curve"] == first[r["id"]]["psnr_curve"], r["id"]
        assert r["fvd_last"] is None
    assert again["videos"] == results["videos"]
    assert other["videos"] != results["videos"]


@pytest.mark.slow
def test_cli_eval_and_overwrite(tiny_world_checkpoint, tiny_frames_dataset, tmp_path):
    from importlib import resources

    from worldmodel.cli import run

    assert (resources.files("configs") / "eval.yaml").read_text().startswith("# maskflow eval:")
    args = [f"checkpoint={tiny_world_checkpoint}", f"data={tiny_frames_dataset}", f"out={tmp_path / 'cli'}",
            "num_videos=1", "fvd=false", "experiments=[fbf_mgm]", "horizons=[2]", "steps_frame=2",
            "progress=false"]
    res = run("eval", args)
    assert [r["id"] for r in res["rows"]] == ["copy_last@2x", "reconstruction@2x", "fbf_mgm@2x"]
    assert "not_a_key" not in res["settings"]
    with pytest.raises(ConfigError, match="overwrite=true"):
        run("eval", args)
    with pytest.raises(ConfigError, match="data="):
        run("eval", [f"checkpoint={tiny_world_checkpoint}"])


@pytest.mark.slow
@pytest.mark.parametrize("kw,match", [
    (dict(horizons=[10]), r"horizons: the longest horizon 10x4 = 40 dreamed frames .* needs episodes of 43 frames"),
    (dict(experiments=["full_fm"], comparison_horizons=[6]), r"comparison_horizons: .* needs episodes of 26 frames"),
    (dict(experiments=["full_bogus"]), r"experiments: unknown experiment 'full_bogus'"),
    (dict(experiments=["fbf_rolling"]), r"experiments: rolling diffusion .* use full_rolling"),
    (dict(compare_experiments=["mgm"]), r"compare_experiments: unknown experiment 'mgm'"),
    (dict(long_experiments=["fbf_xyz"]), r"long_experiments: unknown experiment"),
    (dict(horizons=[]), r"horizons must be a non-empty list"),
    (dict(num_videos=1), r"num_videos=1: FVD .* at least 2"),
    (dict(fvd_frames=4), r"fvd_frames=4"),
    (dict(steps_fm=0), r"steps_fm must be >= 1"),
    (dict(full_context=4), r"full_context=4 must be below the window k=4"),
    (dict(action_guidance=-0.5), r"action_guidance must be >= 0"),
    (dict(loops=["turn4", "wiggle"]), r"loops: loop 'wiggle' is not valid; use turnL"),
])
def test_bad_settings_are_config_errors_naming_the_key(kw, match, tiny_world_checkpoint, tiny_frames_dataset,
                                                       tmp_path):
    with pytest.raises(ConfigError, match=match):
        evaluate(make_cfg(tiny_world_checkpoint, tiny_frames_dataset, tmp_path / "e", **kw))
    assert not (tmp_path / "e" / "report.md").exists()


@pytest.mark.parametrize("lengths,need,n", [([301] * 5, 175, 3), ([25], 15, 2), ([25], 15, 14), ([10, 40, 12], 12, 4)])
def test_choose_videos_fits_windows_round_robin(lengths, need, n):
    picks = choose_videos(lengths, need, n, np.random.default_rng(0))
    assert picks == choose_videos(lengths, need, n, np.random.default_rng(0))
    assert len(picks) == n
    eligible = [i for i, length in enumerate(lengths) if length >= need]
    per = {e: [s for ep, s in picks if ep == e] for e in eligible}
    assert all(e in eligible and 0 <= s <= lengths[e] - need for e, s in picks)
    assert max(map(len, per.values())) - min(map(len, per.values())) <= 1          # round robin
    for e, starts in per.items():                         # distinct offsets while the episode has room
        assert len(set(starts)) == min(len(starts), lengths[e] - need + 1)


def test_plan_experiments_contexts_strides_and_horizons():
    cfg = EvalConfig(data="x", experiments=["fbf_mgm", "full_fm", "full_rolling"], horizons=[1, 2],
                     comparison_horizons=[1], long_experiments=["fbf_mgm"])
    plan = plan_experiments(cfg, 16, 8, compare=True)
    by = {(e.role, e.name): e for e in plan}
    assert set(by) == {("main", "fbf_mgm"), ("main", "full_fm"), ("main", "full_rolling"), ("compare", "full_mgm"),
                       ("compare", "full_fm")}
    assert (by["main", "fbf_mgm"].context, by["main", "fbf_mgm"].stride, by["main", "fbf_mgm"].horizons) == \
        (15, 1, (16, 32))
    fm = by["main", "full_fm"]
    assert (fm.context, fm.stride, fm.horizons) == (8, 8, (16,))
    assert by["main", "full_fm"].steps == cfg.steps_fm and by["main", "fbf_mgm"].steps == cfg.steps_frame
    assert {e.name for e in plan_experiments(cfg, 16, 8, compare=False)} == {"fbf_mgm", "full_fm", "full_rolling"}
    assert "fbf_rolling" not in EXPERIMENTS and len(EXPERIMENTS) == 9


@pytest.mark.slow
def test_separate_horizons_and_a_bidirectional_model(tiny_world_checkpoint, tiny_frames_dataset, tmp_path):
    """separate_horizons re-dreams each horizon; a bidirectional model runs frame by frame through the
    chunkwise driver (s = 1, m = k - 1) with its exact NFE."""
    from worldmodel.model.checkpoint import read_world_model_meta, save_world_model
    from worldmodel.model.latte import Latte, ModelConfig

    meta = read_world_model_meta(tiny_world_checkpoint)
    cfg = ModelConfig(**{**meta["model"], "temporal": "bidirectional"})
    torch.manual_seed(0)
    bidir = save_world_model(tmp_path / "bidir", cfg, Latte(cfg).state_dict(),
                             action_meanings=meta["action_space"]["meanings"], env_id=meta["env_id"],
                             tokenizer_dir=Path(tiny_world_checkpoint) / "tokenizer")
    kw = dict(experiments=["fbf_mgm", "full_mgm"], fvd=False, separate_horizons=True, num_videos=1)
    res = evaluate(make_cfg(bidir, tiny_frames_dataset, tmp_path / "out", **kw))
    rows = {r["id"]: r for r in res["rows"]}
    for f in (1, 3):
        r = rows[f"fbf_mgm@{f}x"]
        assert not r["kv_cache"] and r["nfe_context"] == 0 and r["nfe_counted_longest"] == r["nfe"]
        assert r["nfe"] == expected_nfe(SamplerConfig("mgm", steps=STEPS["steps_frame"]),
                                        ChunkConfig(K, K - 1, K - 1 + 4 * f, 1)) == 4 * f * STEPS["steps_frame"]
        assert rows[f"full_mgm@{f}x"]["nfe_counted_longest"] == rows[f"full_mgm@{f}x"]["nfe"]
    assert "Each horizon was dreamed separately" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
def test_guidance_applies_to_frame_by_frame_rows_only(tiny_world_checkpoint, tiny_frames_dataset, tmp_path):
    """Guided frame-by-frame rows cost (T × 3 passes + 1) per frame and say so in results and report;
    full-sequence rows in the same run are unguided (chunkwise cannot guide)."""
    kw = dict(experiments=["fbf_mgm", "full_mgm"], long_experiments=["fbf_mgm"], fvd=False, num_videos=1,
              action_guidance=1.5, history_guidance=0.5)
    res = evaluate(make_cfg(tiny_world_checkpoint, tiny_frames_dataset, tmp_path / "g", **kw))
    rows = {r["id"]: r for r in res["rows"]}
    fbf, full = rows["fbf_mgm@3x"], rows["full_mgm@1x"]
    assert fbf["nfe"] == fbf["nfe_counted_longest"] == 12 * (3 * STEPS["steps_frame"] + 1)
    assert fbf["action_guidance"] == 1.5 and fbf["history_guidance"] == 0.5
    assert "action_guidance" not in full and full["nfe"] == full["nfe_counted_longest"]
    assert res["settings"]["action_guidance"] == 1.5
    assert any("ran unguided: main:full_mgm" in note for note in res["notes"])
    assert "action guidance 1.5, history guidance 0.5" in (tmp_path / "g" / "report.md").read_text()


def test_eval_loops_and_rewards_add_their_sections(tiny_world_checkpoint, tiny_frames_dataset, tmp_path):
    kw = dict(experiments=["fbf_mgm"], long_experiments=["fbf_mgm"], horizons=[1], fvd=False, num_videos=1,
              loops=["turn2", "circle30"], loop_trials=1, reward_trials=2, temperature=0.5, history_guidance=1.0,
              history_guidance_recent=1)
    res = evaluate(make_cfg(tiny_world_checkpoint, tiny_frames_dataset, tmp_path / "l", **kw))
    assert list(res["loops"]["loops"]) == ["turn2", "circle30"] and res["loops"]["trials"] == 1
    assert all(r["real_return_psnr"] == 100.0 for r in res["loops"]["loops"].values())
    # the loops play fresh mazes of data='s env (not the checkpoint's training data's, which may differ)
    from envs.dataset import load_manifest, recorded_env

    assert (res["loops"]["env_id"], res["loops"]["env_kwargs"]) == recorded_env(load_manifest(tiny_frames_dataset))
    assert res["loops"]["env_id"] == "DMLabMaze-v0"
    # the loops dream with the eval's sampling settings (far-history guidance here)
    assert (res["loops"]["temperature"], res["loops"]["history_guidance"], res["loops"]["history_guidance_recent"]) \
        == (0.5, 1.0, 1)
    report = (tmp_path / "l" / "report.md").read_text()
    assert "## Loop closure" in report and "| `circle30` | 30 |" in report and " | – | " in report
    assert (tmp_path / "l" / "loops.png").stat().st_size > 0
    assert json.loads((tmp_path / "l" / "results.json").read_text())["loops"]["loops"]["turn2"]["frames"] == 4
    # reward_trials adds the reward-recall section beside it
    assert res["rewards"]["trials"] == 2 and res["rewards"]["reward_recall"]["of"] >= 1
    assert "## Rewards and terminations" in report and (tmp_path / "l" / "rewards.png").stat().st_size > 0
    with pytest.raises(ConfigError, match="heading_recall=true needs a model with heading rotary"):
        evaluate(make_cfg(tiny_world_checkpoint, tiny_frames_dataset, tmp_path / "hr", heading_recall=True, **kw))
    # pair_with another eval of the same mazes: the same settings dream the same loops, so every margin is 0
    again = evaluate(make_cfg(tiny_world_checkpoint, tiny_frames_dataset, tmp_path / "again",
                              pair_with=str(tmp_path / "l"), **{**kw, "reward_trials": 0}))
    paired = again["loops"]["paired"]
    assert list(paired) == ["turn2", "circle30"]
    assert all(m[k]["mean"] == 0 and m[k]["n"] == 1 for m in paired.values()
               for k in ("return_psnr", "return_minus_far"))
    assert "Against the `pair_with` eval on the same mazes" in (tmp_path / "again" / "report.md").read_text()


@pytest.mark.slow
def test_rows_keep_per_video_bands_and_pair_with_copy_and_compare(full_eval, tiny_frames_dataset):
    """Per-video band means average to the curve; every dreamed row is paired with copy-the-last-frame
    (and the main row with the compare checkpoint's) over the same videos, and the report shows it."""
    _, results, out = full_eval
    rows = {r["id"]: r for r in results["rows"]}
    fbf, copy = rows["fbf_mgm@3x"], rows["copy_last@3x"]
    assert list(fbf["psnr_bands"]) == ["1-4", "5-12"]                          # 1x k, then up to 4x k
    assert list(rows["fbf_mgm@1x"]["psnr_bands"]) == ["1-4"]
    for band, (a, b) in (("1-4", (0, 4)), ("5-12", (4, 12))):
        assert len(fbf["psnr_bands"][band]) == 2
        assert np.mean(fbf["psnr_bands"][band]) == pytest.approx(np.mean(fbf["psnr_curve"][a:b]), abs=2e-3)
    paired = {(m["row"], m["against"], m["band"]): m for m in results["paired"]}
    m = paired["fbf_mgm", "copy_last", "5-12"]
    want = np.subtract(fbf["psnr_bands"]["5-12"], copy["psnr_bands"]["5-12"])
    assert m["mean"] == pytest.approx(want.mean()) and m["n"] == 2
    assert min(want) - 1e-9 <= m["ci_low"] <= m["mean"] <= m["ci_high"] <= max(want) + 1e-9
    assert m["wins"] == np.mean(want > 0)
    assert ("full_mgm", "compare:full_mgm", "1-4") in paired               # main vs compare, same videos
    assert ("compare:full_mgm", "copy_last", "1-4") in paired
    assert not any(k[0] in ("copy_last", "reconstruction") for k in paired)
    # no real frame of these clips repeats the last context frame, so the new-view margins are the same
    real = real_videos(tiny_frames_dataset, results, 12)
    repeats = sum(int((v[1:] == v[0]).all(axis=(1, 2, 3)).sum()) for v in real)
    assert results["repeated_views"] == repeats == 0
    assert fbf["psnr_bands_new_view"] == fbf["psnr_bands"]
    assert m["new_view"] == {k: v for k, v in m.items() if k in m["new_view"]}
    report = (out / "report.md").read_text()
    assert "## Paired margins" in report and "| `fbf_mgm` | `copy_last` | 5-12 |" in report


@pytest.mark.slow
def test_pair_with_an_earlier_eval_of_the_same_videos(tiny_world_checkpoint, tiny_frames_dataset, tmp_path):
    import json

    kw = dict(experiments=["fbf_mgm"], fvd=False)
    first = tmp_path / "first"
    evaluate(make_cfg(tiny_world_checkpoint, tiny_frames_dataset, first, **kw))
    # the same settings dream the same frames: every paired margin is exactly 0
    again = evaluate(make_cfg(tiny_world_checkpoint, tiny_frames_dataset, tmp_path / "again", pair_with=str(first),
                              **kw))
    mine = [m for m in again["paired"] if m["against"] == "pair_with:fbf_mgm"]
    assert [m["band"] for m in mine] == ["1-4", "5-12"]
    # band_frames=2 cuts the bands at 2, 8 (4x) and the end instead of at the window k = 4
    two = evaluate(make_cfg(tiny_world_checkpoint, tiny_frames_dataset, tmp_path / "two", band_frames=2, **kw))
    rows = {r["id"]: r for r in two["rows"]}
    assert list(rows["fbf_mgm@3x"]["psnr_bands"]) == list(rows["copy_last@3x"]["psnr_bands"]) == ["1-2", "3-8", "9-12"]
    assert np.mean(rows["fbf_mgm@3x"]["psnr_bands"]["1-2"]) == pytest.approx(
        np.mean(rows["fbf_mgm@3x"]["psnr_curve"][:2]), abs=2e-3)
    assert {m["band"] for m in two["paired"]} == {"1-2", "3-8", "9-12"}
    assert all(m["mean"] == m["ci_low"] == m["ci_high"] == 0 and m["wins"] == 0 for m in mine)
    # other sampling settings, same videos: margins against the earlier row are computed and reported
    other = evaluate(make_cfg(tiny_world_checkpoint, tiny_frames_dataset, tmp_path / "other",
                              pair_with=str(first / "results.json"), temperature=0.0, **kw))
    diffs = [m["mean"] for m in other["paired"] if m["against"] == "pair_with:fbf_mgm"]
    assert len(diffs) == 2 and any(d != 0 for d in diffs)
    assert "`pair_with:fbf_mgm`" in (tmp_path / "other" / "report.md").read_text()
    # different videos, a missing or foreign file, and results without per-video scores are refused up front
    bad = [(dict(seed=1), r"scored different videos"),
           (dict(horizons=[1]), r"scored different videos .* longest horizon"),
           (dict(pair_with=str(tmp_path / "nowhere")), r"pair_with=.*nowhere: no eval results there")]
    (tmp_path / "junk.json").write_text("{not json")
    bad.append((dict(pair_with=str(tmp_path / "junk.json")), r"not a readable results.json"))
    old = json.loads((first / "results.json").read_text())
    for r in old["rows"]:
        del r["psnr_bands"], r["psnr_bands_new_view"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    bad.append((dict(pair_with=str(tmp_path / "old.json")), r"no per-video scores .* re-run"))
    for extra, match in bad:
        settings = {**kw, "pair_with": str(first), **extra}
        with pytest.raises(ConfigError, match=match):
            evaluate(make_cfg(tiny_world_checkpoint, tiny_frames_dataset, tmp_path / "bad", **settings))
        assert not (tmp_path / "bad" / "report.md").exists()
    # two finished evals paired afterwards (benchmarks/pair_evals.py) give the margins pair_with gives while running
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "pair_evals", Path(__file__).resolve().parents[3] / "benchmarks" / "pair_evals.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    after = bench.pair(str(tmp_path / "other"), str(first / "results.json"))["margins"]
    during = [m for m in other["paired"] if m["against"] == "pair_with:fbf_mgm"]
    assert [{**m, "against": "-"} for m in after] == [{**m, "against": "-"} for m in during]
    moved = json.loads((first / "results.json").read_text())
    moved["videos"][0]["first_dreamed_frame"] += 1
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    with pytest.raises(ConfigError, match="scored different videos .* first difference at video 0"):
        bench.pair(str(tmp_path / "other"), str(tmp_path / "moved.json"))
    with pytest.raises(ConfigError, match="B: .*old.json carries no per-video scores"):
        bench.pair(str(first), str(tmp_path / "old.json"))


def test_main_vs_compare_is_paper_table_3_only_for_frame_vs_constant_masking():
    from worldmodel.evaluation.report import COMPARISONS, group_title

    title = COMPARISONS[0][0]
    rows = [{"training_masking": "frame", "model": "main (frame masking)"},
            {"training_masking": "constant", "model": "compare (constant masking)"}]
    assert group_title(title, rows) == title == "frame-level vs constant masking (paper Table 3)"
    rows[1] = {"training_masking": "frame", "model": "release"}
    assert group_title(title, rows) == "main vs compare checkpoint (main (frame masking) vs release)"
    assert group_title("MGM vs FM sampling", rows) == "MGM vs FM sampling"
