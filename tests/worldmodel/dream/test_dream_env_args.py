"""MaskFlowDream-v0's arguments on a tiny real checkpoint: the time limit through ``gymnasium.make`` /
``make_vec`` and the spec that reports it, Gymnasium's env checker with default arguments (no wall-clock
info), reset options that are unknown or conflicting, and constructor values out of range."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers MaskFlowDream-v0)
from envs.common.errors import ConfigError
from worldmodel.dream.env import DreamEnvError, MaskFlowDreamEnv
from worldmodel.dream.vector_env import MaskFlowDreamVectorEnv

pytestmark = pytest.mark.slow          # every test here dreams on the tiny trained checkpoint

ENV_ID = "MaskFlowDream-v0"


def steps_to_truncation(env, limit: int) -> int:
    """Step until truncated (never terminated: done_threshold=1.0); the step count, or limit + 1 if none."""
    env.reset(seed=0)
    for t in range(1, limit + 2):
        _, _, terminated, truncated, _ = env.step(1)
        assert not terminated
        if truncated:
            return t
    return limit + 1


# -- time limit -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [3, 5, 301])
def test_gym_make_max_episode_steps_is_the_limit(ckpt, data, n):
    # 301 > the registered 300: the env must not cut the episode short on a limit of its own
    env = gym.make(ENV_ID, checkpoint=ckpt, data=data, steps_per_frame=1, obs_type="tokens", done_threshold=1.0,
                   max_episode_steps=n)
    try:
        assert env.spec.max_episode_steps == n
        assert steps_to_truncation(env, n) == n
    finally:
        env.close()


def test_gym_make_default_limit_is_the_registered_one_and_the_spec_says_so(ckpt, data):
    env = gym.make(ENV_ID, checkpoint=ckpt, data=data, steps_per_frame=1, obs_type="tokens", done_threshold=1.0)
    try:
        assert gym.spec(ENV_ID).max_episode_steps == 300 and env.spec.max_episode_steps == 300
        assert steps_to_truncation(env, 300) == 300
    finally:
        env.close()
    direct = MaskFlowDreamEnv(ckpt, data=data, steps_per_frame=1, done_threshold=1.0, max_episode_steps=4)
    try:
        assert direct.max_episode_steps == 4 and steps_to_truncation(direct, 4) == 4
    finally:
        direct.close()


@pytest.mark.parametrize("n", [None, 3])
def test_make_vec_max_episode_steps_is_the_limit_and_the_spec_says_so(ckpt, data, n):
    kw = {} if n is None else {"max_episode_steps": n}
    venv = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="vector_entry_point", checkpoint=ckpt, data=data,
                        steps_per_frame=1, obs_type="tokens", done_threshold=1.0, **kw)
    try:
        limit = 300 if n is None else n
        assert isinstance(venv, MaskFlowDreamVectorEnv)
        assert venv.max_episode_steps == limit and venv.spec.max_episode_steps == limit
        venv.reset(seed=0)
        flags = [venv.step(np.array([1, 1]))[3] for _ in range(limit)]
        assert not any(f.any() for f in flags[:-1]) and flags[-1].all()
    finally:
        venv.close()


# -- env checker, timing info ---------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["live", "dataset"])
def test_env_checker_passes_with_default_arguments(ckpt, data, source):
    env = gym.make(ENV_ID, checkpoint=ckpt, **({"data": data} if source == "dataset" else {}))
    try:
        check_env(env.unwrapped)
        env.reset(seed=0)
        assert "step_time_s" not in env.step(1)[4]
    finally:
        env.close()


def test_timing_info_is_off_by_default_and_on_when_asked(ckpt, data):
    for timing_info in (False, True):
        env = MaskFlowDreamEnv(ckpt, data=data, steps_per_frame=1, **({"timing_info": True} if timing_info else {}))
        venv = MaskFlowDreamVectorEnv(2, ckpt, data=data, steps_per_frame=1,
                                      **({"timing_info": True} if timing_info else {}))
        try:
            env.reset(seed=0)
            venv.reset(seed=0)
            info, vinfo = env.step(1)[4], venv.step(np.array([1, 1]))[4]
            assert ("step_time_s" in info) == ("step_time_s" in vinfo) == timing_info
            if timing_info:
                assert info["step_time_s"] > 0 and (vinfo["step_time_s"] > 0).all() and vinfo["_step_time_s"].all()
        finally:
            env.close()
            venv.close()


# -- reset options --------------------------------------------------------------------------------------------
def test_reset_options_unknown_key_or_both_contexts_are_refused(ckpt, data):
    frames = np.zeros((3, 64, 64, 3), np.uint8)
    tokens = np.zeros((3, 8, 8), np.int64)
    env = MaskFlowDreamEnv(ckpt, data=data, steps_per_frame=1)
    try:
        with pytest.raises(DreamEnvError, match=r"'context_frame'.*context_frames, context_tokens, context_actions"):
            env.reset(seed=0, options={"context_frame": frames})        # a typo must not silently give other context
        with pytest.raises(DreamEnvError, match="reset_mask"):
            env.reset(seed=0, options={"reset_mask": np.array([True])})  # a vector env option
        with pytest.raises(DreamEnvError, match=r"both context_frames=.*and context_tokens=.*give one"):
            env.reset(seed=0, options={"context_frames": frames, "context_tokens": tokens})
        with pytest.raises(DreamEnvError, match="context_actions.*context_frames or context_tokens"):
            env.reset(seed=0, options={"context_actions": np.zeros(3, np.int64)})
        assert env.reset(seed=0, options={})[1]["context_source"].startswith(data)    # empty options: the source
        assert env.reset(seed=0, options={"context_tokens": tokens})[1]["context_source"] == "given"
    finally:
        env.close()
    venv = MaskFlowDreamVectorEnv(2, ckpt, data=data, steps_per_frame=1)
    try:
        with pytest.raises(DreamEnvError, match=r"'context_frame'.*reset_mask"):
            venv.reset(seed=0, options={"context_frame": np.stack([frames] * 2)})
        with pytest.raises(DreamEnvError, match=r"both context_frames=.*and context_tokens=.*give one"):
            venv.reset(seed=0, options={"context_frames": np.stack([frames] * 2),
                                        "context_tokens": np.stack([tokens] * 2)})
        venv.reset(seed=0)
        _, info = venv.reset(options={"reset_mask": np.array([False, True]), "context_tokens": tokens[None]})
        assert info["_context_source"].tolist() == [False, True] and info["context_source"][1] == "given"
    finally:
        venv.close()


# -- constructor ranges ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("vector", [False, True])
@pytest.mark.parametrize("kwargs,match", [
    ({"steps_per_frame": 0}, r"steps_per_frame.*>= 1.*got 0"),
    ({"steps_per_frame": -2}, r"steps_per_frame.*>= 1.*got -2"),
    ({"context_length": -1}, r"context_length.*\[1, 3\].*got -1"),
    ({"context_length": 0}, r"context_length.*\[1, 3\].*got 0"),
    ({"context_length": 4}, r"context_length.*\[1, 3\].*window is 4.*got 4"),     # the tiny model's window is 4
    ({"context_length": 16}, r"context_length.*\[1, 3\].*got 16"),
    ({"context": -1}, r"context=-1.*auto, dataset, live, given"),
    ({"max_episode_steps": 0}, r"max_episode_steps.*>= 1.*got 0"),
    ({"precision": "fp16"}, r"precision='fp16' is not one of auto, fp32, bf16"),
])
def test_constructor_values_out_of_range_are_refused(ckpt, data, vector, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        if vector:
            MaskFlowDreamVectorEnv(2, ckpt, data=data, **kwargs)
        else:
            MaskFlowDreamEnv(ckpt, data=data, **kwargs)
