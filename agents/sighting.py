"""A search signal for the dream: a bonus the first time in a dream episode the goal comes into view.

The dream's reward pays for reaching the goal. A dream-trained policy learns the approach from it fully, but it
finds the goal less often than the exploration random walk (``benchmarks/goal_sightings.py``): a 32-frame dream
started near a goal pays for approaching, not for looking around. This module gives the dream a denser signal
for the search itself:

- :class:`SightNet`, a small CNN that says from one frame whether the goal is in view. It learns from real
  frames of maze datasets, labelled by :func:`envs.maze.dmlab.goal_in_view` from each frame's pose, the episode's
  goal and its layout (:func:`envs.maze.dmlab.goal_seen`). It reads frames, so it scores dreamed frames the same way.
- :class:`SightBonus`, an SB3 ``VecEnvWrapper`` that adds ``bonus`` to the reward of the step on which the probe
  first sees the goal in an episode where it did not see it at the start. Once per episode, so that turning the
  goal in and out of view earns nothing.

On disk a probe is ``sight.safetensors`` + ``sight.json`` (format, input size, threshold, the held-out scores),
sealed with the weights' sha256. ``python -m agents.sighting --data D [D ...] --out DIR`` trains one.

Axis letters: b batch, y x pixels, c colour.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnvWrapper
from torch import nn

from envs.common.config_check import at_least, check_value
from envs.common.errors import CheckpointError, ConfigError, DatasetError

SIGHT_FORMAT = "maskflow-sight-probe"
SIGHT_VERSION = 1


class NothingInView(DatasetError):
    """The frames given never show the goal in view: a probe has nothing to learn from."""


class SightNet(nn.Module):
    """(b y x c) uint8 frames -> (b,) logits that the goal is in view. Max-pooled over the picture, since a far
    goal covers a few pixels anywhere in it."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.width = int(width)
        w = self.width
        self.body = nn.Sequential(
            nn.Conv2d(3, w // 2, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(w // 2, w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(2 * w, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float() / 255.0          # b y x c -> b c y x
        return self.head(self.body(x).amax(dim=(2, 3))).squeeze(-1)


# -- labels -------------------------------------------------------------------------------------------
def _make_env(env_id: str, env_kwargs: dict | None):
    """A registered env, made only to replay an episode's reset (gymnasium imported here: only old datasets need it)."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers the env ids)

    return gym.make(env_id, **dict(env_kwargs or {}))


def episode_goal(attrs: dict, env_id: str, env_kwargs: dict | None = None, env=None) -> np.ndarray:
    """The goal (x, z) of a maze episode: ``attrs['goal']``, or for a dataset collected before it was recorded,
    the goal the env draws on the episode's reset (``seed`` with ``maze_seed`` pinned, as collection resets);
    ``env``: an open env of ``env_id`` to reset (else one is made and closed here)."""
    if "goal" in attrs:
        return np.asarray(attrs["goal"], np.float32)
    if "seed" not in attrs or "maze_seed" not in attrs:
        raise DatasetError("a maze episode without attrs 'goal' needs 'seed' and 'maze_seed' to recover it")
    own = env is None
    if own:
        env = _make_env(env_id, env_kwargs)
    try:
        _, info = env.reset(seed=int(attrs["seed"]), options={"maze_seed": int(attrs["maze_seed"])})
    finally:
        if own:
            env.close()
    return np.asarray(info["goal"], np.float32)


def labelled_frames(data: list[str], split: str, every: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Frames (n y x c) uint8 and their in-view labels (n,) from frames datasets of a maze env (every
    ``every``-th frame); raises :class:`DatasetError` for a dataset without poses or layouts."""
    from envs.dataset import EpisodeDataset, load_manifest, recorded_env
    from envs.maze.dmlab import goal_seen

    frames, labels = [], []
    for d in data:
        manifest = load_manifest(d)
        if manifest["kind"] != "frames":
            raise DatasetError(f"{d} holds {manifest['kind']}; the sighting probe learns from a frames dataset")
        ds = EpisodeDataset(d, split=split)
        env_kwargs = recorded_env(manifest)[1]
        env = None                                  # made once, only for episodes without a recorded goal
        try:
            for i in range(len(ds)):
                ep = ds.episode(i)
                if "goal" not in ep["attrs"] and "poses" in ep:      # recorded before goals were kept: its reset's goal
                    env = env or _make_env(ds.env_id, env_kwargs)
                    ep["attrs"] = {**ep["attrs"], "goal": episode_goal(ep["attrs"], ds.env_id, env_kwargs, env)}
                frames.append(ep["frames"][::every])
                labels.append(goal_seen(ep, f"the sighting probe's data {d}")[::every])
        finally:
            ds.close()
            if env is not None:
                env.close()
    return np.concatenate(frames), np.concatenate(labels)


# -- training -----------------------------------------------------------------------------------------
def scores(net: SightNet, frames: np.ndarray, labels: np.ndarray, threshold: float = 0.5,
           batch: int = 512) -> dict[str, float]:
    """Recall, precision and accuracy of ``net`` at ``threshold`` over labelled frames."""
    p = predict(net, frames, batch)
    hit = p > threshold
    tp = float((hit & labels).sum())
    return {"frames": int(len(labels)), "positives": int(labels.sum()), "accuracy": float((hit == labels).mean()),
            "recall": tp / max(int(labels.sum()), 1), "precision": tp / max(int(hit.sum()), 1)}


@torch.inference_mode()
def predict(net: SightNet, frames: np.ndarray, batch: int = 512) -> np.ndarray:
    """(n,) probabilities that the goal is in view, for frames (n y x c) uint8."""
    net.eval()
    out = [torch.sigmoid(net(torch.as_tensor(frames[i:i + batch]))).numpy() for i in range(0, len(frames), batch)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def train_sight_probe(data: list[str], out: str, steps: int = 1500, batch: int = 128, lr: float = 2e-3,
                      every: int = 2, seed: int = 0, threads: int | None = 1, tokenizer: str | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Train a :class:`SightNet` on the train splits of ``data`` (frames datasets of a maze env), score it on their
    test splits where they have one (and on those frames encoded and decoded by ``tokenizer``, as a dream shows
    them, if given), and write it to ``out`` (``sight.json`` last: a folder with it is complete). ``threads``:
    torch's CPU threads (None: leave them). Returns the probe's JSON."""
    from envs.common.files import save_weights, write_sealed_json
    from envs.dataset import load_manifest

    for key, value in (("steps", steps), ("batch", batch), ("every", every)):
        check_value(key, value, int, at_least(1))
    if not data:
        raise ConfigError("data: give at least one frames dataset of a maze env")
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    x, y = labelled_frames(data, "train", every)
    if y.sum() == 0:
        raise NothingInView(f"{data}: no frame shows the goal in view; the probe has nothing to learn from")
    net = SightNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    loss_fn = nn.BCEWithLogitsLoss()
    net.train()
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="sight probe")
    for _ in it:
        idx = rng.integers(0, len(x), batch)
        frames = x[idx]
        if rng.random() < 0.5:                      # a mirrored maze is a maze: the goal is in view either way
            frames = frames[:, :, ::-1]
        logits = net(torch.as_tensor(np.ascontiguousarray(frames)))
        loss = loss_fn(logits, torch.as_tensor(y[idx], dtype=torch.float32))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    result: dict[str, Any] = {"format": SIGHT_FORMAT, "format_version": SIGHT_VERSION, "width": net.width,
                              "resolution": int(x.shape[1]), "threshold": 0.5, "data": [str(d) for d in data],
                              "steps": steps, "batch": batch, "seed": seed, "train_frames": int(len(y)),
                              "train_positives": int(y.sum())}
    tested = [d for d in data if "test" in {sh["split"] for sh in load_manifest(d)["shards"]}]
    if tested:                                      # held-out mazes, where the datasets have them
        xt, yt = labelled_frames(tested, "test", every)
        result["test_real"] = scores(net, xt, yt)
        if tokenizer:
            from worldmodel.tokenizer.codec import decode_tokens, encode_frames
            from worldmodel.tokenizer.files import load_tokenizer

            tok = load_tokenizer(tokenizer)
            with torch.inference_mode():
                dec = decode_tokens(tok, encode_frames(tok, xt))
            result["test_decoded"] = scores(net, dec, yt)
            result["tokenizer"] = str(tokenizer)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    save_weights(outp / "sight.safetensors", net.state_dict(), metadata={"format": SIGHT_FORMAT})
    write_sealed_json(outp / "sight.json", result, files=("sight.safetensors",))
    return result


def load_sight_probe(path: str | Path) -> tuple[SightNet, dict[str, Any]]:
    """(net, meta) of a probe folder, its weights checked against the JSON's seal, in eval mode."""
    from envs.common.files import load_state_dict_strict, load_weights, read_format_json

    p = Path(path)
    if not (p / "sight.json").is_file() or not (p / "sight.safetensors").is_file():
        raise CheckpointError(f"{p} is not a sighting probe: it needs sight.json and sight.safetensors (written by "
                              "`python -m agents.sighting`)")
    meta = read_format_json(p / "sight.json", "sighting probe", SIGHT_FORMAT, SIGHT_VERSION,
                            ("width", "resolution", "threshold"), check_files=True)
    net = SightNet(int(meta["width"]))
    load_state_dict_strict(net, load_weights(p / "sight.safetensors"), str(p / "sight.safetensors"))
    net.eval()
    return net, meta


# -- the bonus ----------------------------------------------------------------------------------------
class SightBonus(VecEnvWrapper):
    """An SB3 VecEnv of (b y x c) uint8 frames that adds ``bonus`` on the step ``net`` first sees the goal in an
    episode that did not start with it in view; ``info['sighting'] = True`` on that step, and ``sightings``
    counts them."""

    def __init__(self, venv, net: SightNet, threshold: float, bonus: float):
        super().__init__(venv)
        self.net, self.threshold, self.bonus = net, float(threshold), float(bonus)
        self.seen = np.zeros(self.num_envs, bool)
        self.sightings = 0

    def _in_view(self, frames: np.ndarray) -> np.ndarray:
        return predict(self.net, np.ascontiguousarray(frames)) > self.threshold

    def reset(self):
        obs = self.venv.reset()
        self.seen = self._in_view(obs)
        return obs

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        last = np.array(obs, copy=True)             # the step's own frame: an ended episode's is its last
        for i in np.flatnonzero(dones):
            last[i] = infos[i]["terminal_observation"]
        view = self._in_view(last)
        pay = view & ~self.seen
        self.sightings += int(pay.sum())
        rewards = rewards + np.float32(self.bonus) * pay
        for i in np.flatnonzero(pay):
            infos[i]["sighting"] = True
        self.seen |= view
        ended = np.flatnonzero(dones)
        if len(ended):                              # a new episode starts from obs: seen if it shows the goal
            self.seen[ended] = self._in_view(obs[ended])
        return obs, rewards, dones, infos


def sight_bonus(venv, probe: str, bonus: float) -> SightBonus:
    """``venv`` (an SB3 VecEnv of (b y x c) uint8 frames) with :class:`SightBonus` around it, seeing through the
    probe folder ``probe``."""
    net, meta = load_sight_probe(probe)
    shape = venv.observation_space.shape
    if len(shape) != 3 or shape[0] != meta["resolution"] or shape[2] != 3:
        raise ConfigError(f"sight_probe {probe} reads ({meta['resolution']}, {meta['resolution']}, 3) frames; the env "
                          f"shows {tuple(shape)} (obs_type must be rgb, at the probe's resolution)")
    return SightBonus(venv, net, float(meta["threshold"]), bonus)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m agents.sighting", description=__doc__.split("\n")[0])
    ap.add_argument("--data", nargs="+", required=True, help="frames datasets of a maze env (poses and layouts)")
    ap.add_argument("--out", required=True, help="probe folder to write")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--every", type=int, default=2, help="use every n-th frame")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokenizer", default=None, help="also score on test frames encoded and decoded by it")
    a = ap.parse_args(argv)
    result = train_sight_probe(a.data, a.out, a.steps, a.batch, every=a.every, seed=a.seed, threads=a.threads,
                               tokenizer=a.tokenizer)
    print(json.dumps({k: v for k, v in result.items() if k.startswith("test") or k == "seconds"}, indent=1))
    return result


if __name__ == "__main__":
    main()
