"""The `maskflow` CLI contract: verbs, key checking, and a real collect run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from envs.common.errors import ConfigError
from worldmodel.cli import VERBS, available, compose, main


def test_help_lists_verbs(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert verb in out


@pytest.mark.parametrize("verb", [v for v in VERBS if v != "collect" and available(v)])
def test_verb_help_prints_defaults_even_with_required_keys(verb, capsys):
    # the training verbs have required keys (data=???); --help must still show the config
    assert main([verb, "--help"]) == 0
    out = capsys.readouterr().out
    assert ("out:" in out or "checkpoint:" in out) and f"maskflow {verb}" in out   # calibrate writes into its


def test_unknown_key_is_named_with_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'episodez'.*valid keys: .*episodes"):
        compose("collect", ["episodez=3"])
    with pytest.raises(ConfigError, match="unknown verb"):
        compose("fly", [])
    # a dict key takes its entries one by one; a whole dict is refused with the form that works
    with pytest.raises(ConfigError, match=r"env_kwargs.styles=\.\.\."):
        compose("collect", ["out=x", "env_kwargs={styles:[1]}"])
    assert list(compose("collect", ["out=x", "env_kwargs.styles=[1]"]).env_kwargs.styles) == [1]


def test_bad_key_exit_code_and_message(capsys):
    assert main(["collect", "nope=1"]) == 2
    assert "unknown key 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_collect_from_other_directory(tmp_path):
    out = tmp_path / "d"
    r = subprocess.run([sys.executable, "-m", "worldmodel.cli", "collect", "episodes=2", "steps=4", "workers=1",
                        f"out={out}", "video=false"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (out / "manifest.json").is_file() and (out / "contact_sheet.png").is_file()


@pytest.mark.slow
def test_collect_test_split_only(tmp_path):
    """test_fraction=1 (a held-out evaluation set) has no train split; the contact sheet comes from test."""
    from worldmodel.cli import main

    out = tmp_path / "t"
    assert main(["collect", "episodes=1", "steps=3", "workers=1", "test_fraction=1.0", f"out={out}",
                 "video=false"]) == 0
    splits = {s["split"] for s in json.loads((out / "manifest.json").read_text())["shards"]}
    assert splits == {"test"} and (out / "contact_sheet.png").is_file()
