"""CLI values: every key of every verb is checked for type and range before any work starts.

A bad value is a one-line ``maskflow VERB: error: KEY must be ALLOWED, got VALUE`` with exit code 2,
never a traceback; the same checks guard the plain Python entry points.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from envs.common.config_check import check_mapping, check_value, describe, keys_of
from envs.common.errors import ConfigError
from worldmodel.cli import CONFIGS, VERBS, check, compose, config_class, main

REPO = Path(__file__).resolve().parents[2]

# (verb, overrides, key named in the message, value named in the message); data=/checkpoint= fill
# required keys and point nowhere: the check must fail before anything is read
BAD = [
    # the audit's cases
    ("dream", ["frames=abc"], "frames", "'abc'"),
    ("dream", ["temperature=hot"], "temperature", "'hot'"),
    ("dream", ["steps=abc"], "steps", "'abc'"),
    ("collect", ["episodes=abc"], "episodes", "'abc'"),
    ("train", ["ckpt_every=0"], "ckpt_every", "0"),
    ("train", ["log_every=0"], "log_every", "0"),
    ("train-tokenizer", ["ckpt_every=0"], "ckpt_every", "0"),
    ("train-tokenizer", ["log_every=0"], "log_every", "0"),
    ("train-tokenizer", ["eval_every=0"], "eval_every", "0"),
    ("dream", ["fps=0"], "fps", "0"),
    ("train", ["lr=-1"], "lr", "-1"),
    ("train-tokenizer", ["lr=-1"], "lr", "-1"),
    ("train", ["batch_size=0"], "batch_size", "0"),
    ("train-tokenizer", ["batch_size=0"], "batch_size", "0"),
    ("tokenize", ["batch_size=-1"], "batch_size", "-1"),
    ("eval", ["batch_size=0"], "batch_size", "0"),
    ("collect", ["test_fraction=1.5"], "test_fraction", "1.5"),
    ("collect", ["test_fraction=-0.1"], "test_fraction", "-0.1"),
    ("dream", ["context=-1"], "context", "-1"),
    ("dream", ["steps=-1"], "steps", "-1"),
    ("dream", ["stride=0"], "stride", "0"),
    # enumerated string keys
    ("dream", ["sampler=xyz"], "sampler", "'xyz'"),
    ("dream", ["schedule=nope"], "schedule", "'nope'"),
    ("dream", ["device=gpu"], "device", "'gpu'"),
    ("dream", ["split=val"], "split", "'val'"),
    ("train", ["device=tpu"], "device", "'tpu'"),
    ("train", ["precision=fp8"], "precision", "'fp8'"),
    ("train", ["masking=random"], "masking", "'random'"),
    ("train", ["scheduler=cubic"], "scheduler", "'cubic'"),
    ("train", ["size=huge"], "size", "'huge'"),
    ("train-tokenizer", ["quantizer=pq"], "quantizer", "'pq'"),
    ("collect", ["policy=drunk"], "policy", "'drunk'"),
    ("eval", ["schedule=nope"], "schedule", "'nope'"),
    # types beyond int/float: bool, list, Optional, non-finite
    ("train", ["resume=maybe"], "resume", "'maybe'"),
    ("dream", ["overwrite=1"], "overwrite", "1"),
    ("dream", ["frames=1.5"], "frames", "1.5"),
    ("dream", ["gumbel=-1"], "gumbel", "-1"),
    ("train", ["lr=nan"], "lr", "nan"),
    ("eval", ["horizons=5"], "horizons", "5"),
    ("eval", ["horizons=[1,x]"], "horizons", "[1, 'x']"),
    ("eval", ["horizons=[0]"], "horizons", "[0]"),
    ("train-tokenizer", ["fsq_levels=[8,x]"], "fsq_levels", "[8, 'x']"),
    ("train-tokenizer", ["max_train_frames=-1"], "max_train_frames", "-1"),
    ("collect", ["video=sometimes"], "video", "'sometimes'"),
]


def required(verb: str) -> list[str]:
    """Overrides that fill the verb's required (``???``) keys with paths that do not exist."""
    from worldmodel.cli import configs_dir

    base = OmegaConf.load(Path(configs_dir()) / f"{VERBS[verb][0]}.yaml")
    return [f"{k}=/nonexistent/{k}" for k in sorted(OmegaConf.missing_keys(base))]


@pytest.mark.parametrize("verb, overrides, key, value", BAD, ids=[f"{v}-{' '.join(o)}" for v, o, _, _ in BAD])
def test_bad_value_is_a_one_line_error_naming_key_and_value(verb, overrides, key, value, capsys, tmp_path):
    code = main([verb, *required(verb), f"out={tmp_path / 'out'}", *overrides])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"maskflow {verb}: error: {key} must be "), err
    assert f"got {value}" in err, err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()                  # refused before any work


def test_dream_context_at_the_window_is_refused_right_after_loading(capsys, tmp_path):
    # the window k is known only from the checkpoint (the shipped model: k = 16)
    for context in ("16", "99"):
        code = main(["dream", f"context={context}", f"out={tmp_path}", "progress=false"])
        err = capsys.readouterr().err
        assert code == 2 and "error: context must be in [0, 15]" in err and f"got {context}" in err, err
        assert "Traceback" not in err
    assert not any(tmp_path.iterdir())                      # nothing dreamed, nothing written


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["dream", "frames=abc"], ["train", "data=x", "lr=-1"]])
def test_subprocess_exit_code_2_and_no_traceback(argv, tmp_path):
    r = subprocess.run([sys.executable, "-m", "worldmodel.cli", *argv], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.startswith(f"maskflow {argv[0]}: error: ")


@pytest.mark.parametrize("verb", list(VERBS))
def test_default_config_of_every_verb_passes_the_checker(verb):
    cfg = check(verb, compose(verb, required(verb)))
    assert set(cfg) == set(compose(verb, required(verb)))


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_yaml_key_is_typed_and_every_rule_names_a_key(verb):
    from worldmodel.cli import configs_dir

    cls = config_class(verb)
    typed = keys_of(cls)
    yaml_keys = set(OmegaConf.load(Path(configs_dir()) / f"{VERBS[verb][0]}.yaml")) - {"defaults"}
    assert yaml_keys <= set(typed), f"{verb}: untyped keys {sorted(yaml_keys - set(typed))}"
    assert set(compose(verb, required(verb))) == set(typed)    # the schema is the config class: one source
    assert set(getattr(cls, "CHECKS", {})) <= set(typed), f"{verb}: rules for unknown keys"
    for annotation in typed.values():
        describe(annotation)                                # every annotation has a checker
    assert set(CONFIGS) == set(VERBS)


def test_yaml_spellings_are_normalised():
    from worldmodel.dream.verb import DreamConfig
    from worldmodel.training.loop import TrainConfig

    assert check_value("max_minutes", 0, float) == 0.0 and isinstance(check_value("x", 3, float), float)
    assert check_value("out", 2024, str, lenient=True) == "2024"          # Hydra reads out=2024 as an int
    with pytest.raises(ConfigError, match="out must be a string, got 2024"):
        check_value("out", 2024, str)                                     # ... but an API caller meant a str
    assert check_value("gumbel", None, float | None) is None
    assert check_value("data", ["a", 5], str | list[str], lenient=True) == ["a", "5"]
    assert check_value("fsq_levels", [8, 5], tuple[int, ...] | None) == (8, 5)
    with pytest.raises(ConfigError, match="frames must be an integer, got True"):
        check_value("frames", True, int)
    with pytest.raises(ConfigError, match="must be a finite number"):
        check_value("lr", float("inf"), float)
    values = check_mapping(DreamConfig, {"temperature": 1, "out": 7})
    assert values == {"temperature": 1.0, "out": "7"}
    with pytest.raises(ConfigError, match="key 'nope' has no typed field in TrainConfig"):
        check_mapping(TrainConfig, {"nope": 1})


def test_python_entry_points_run_the_same_checks(tmp_path):
    from envs.collect import CollectConfig, collect
    from worldmodel.dream.verb import DreamConfig, dream
    from worldmodel.evaluation.evaluate import EvalConfig
    from worldmodel.tokenizer.config import TokenizerTrainConfig
    from worldmodel.tokenizer.tokenize import tokenize_dataset
    from worldmodel.training.loop import TrainConfig, train

    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="lr must be > 0, got -1"):
        train(TrainConfig(data=str(tmp_path), out=str(out), lr=-1))
    with pytest.raises(ConfigError, match="steps must be an integer, got 'abc'"):
        train(TrainConfig(data=str(tmp_path), out=str(out), steps="abc"))
    with pytest.raises(ConfigError, match="fps must be >= 1, got 0"):
        dream(DreamConfig(out=str(out), fps=0))
    cfg = DreamConfig(out=str(out))
    cfg.frames = "abc"                                       # a field changed after construction is caught too
    with pytest.raises(ConfigError, match="frames must be an integer"):
        dream(cfg)
    with pytest.raises(ConfigError, match="test_fraction must be in \\[0, 1\\]"):
        collect(CollectConfig(out=str(out), test_fraction=1.5), progress=False)
    with pytest.raises(ConfigError, match="eval_every must be >= 1, got 0"):
        TokenizerTrainConfig(eval_every=0)
    with pytest.raises(ConfigError, match="num_videos must be an integer"):
        EvalConfig(data="x", num_videos="many")
    with pytest.raises(ConfigError, match="batch_size must be >= 0.*got -1"):
        tokenize_dataset(tmp_path / "frames", tmp_path / "tok", out, batch_size=-1)
    assert not out.exists()


def test_config_fields_round_trip_through_the_checker():
    # every dataclass default is itself valid (apart from the keys the YAML makes required)
    for verb in VERBS:
        cls = config_class(verb)
        required_fields = {f.name: "x" for f in dataclasses.fields(cls)
                           if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        extra = {"data": "x"} if verb == "eval" else {}
        cls(**required_fields, **extra).validate()


@pytest.mark.slow
def test_help_piped_into_head_is_quiet():
    r = subprocess.run(f"'{sys.executable}' -m worldmodel.cli train --help | head -1", shell=True, cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith("# maskflow train") and r.stdout.count("\n") == 1
    assert r.stderr == "", r.stderr


@pytest.mark.slow
def test_help_into_a_closed_pipe_exits_quietly():
    # deterministic form of `| head`: the reader is gone before the first write
    p = subprocess.Popen([sys.executable, "-m", "worldmodel.cli", "eval", "--help"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.parametrize("override", ["frames=abc", "no_such_key=1"])
def test_hydra_itself_refuses_unknown_and_mistyped_keys(override):
    """The YAML composes over the config dataclass as a structured schema: Hydra alone refuses these."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.errors import ConfigCompositionException

    from worldmodel.cli import configs_dir, schema

    ConfigStore.instance().store(name="dream_schema", node=schema("dream"))
    with initialize_config_dir(config_dir=configs_dir(), version_base="1.3"), \
            pytest.raises(ConfigCompositionException):
        hydra_compose(config_name="dream", overrides=[override])


def test_help_shows_each_key_with_its_comment_and_rule(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("lr:"))
    assert "0.001" in line and "[> 0]" in line and "#" in line
    assert next(x for x in out.splitlines() if x.startswith("data:")).split()[1] == "???"
