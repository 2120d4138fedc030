"""The on-disk trajectory dataset: HDF5 shards plus a JSON manifest, and readers for episodes and clips.

Layout of a dataset directory ``ROOT``::

    ROOT/manifest.json              format, kind, env id, action meanings, shards (file, split,
                                    episode ids, frames, bytes, sha256), collection settings
    ROOT/shards/{split}-{NNNNN}.h5  episodes as groups ``episodes/{episode_id:06d}``

Every episode stores per-frame aligned arrays of length L = steps + 1:

    frames     (L, H, W, 3) uint8    [kind "frames"]   or   tokens (L, h, w) uint16  [kind "tokens"]
    actions    (L,) int16    the action that LED TO frame i; actions[0] = -1 (reset frame)
    rewards    (L,) float32  reward received on arriving at frame i (rewards[0] = 0)
    terminated (L,) bool, truncated (L,) bool   flags at frame i
    poses      (L, 3) float32 (x, z, heading)   [maze envs; token datasets keep them since 2026-12-07]

Episode attrs: ``seed``, ``maze_seed``, ``layout`` (text grid), ``goal`` ((x, z) float32, maze envs; datasets
collected before it lack it). File attrs: ``env_id``,
``action_meanings`` (JSON list), ``format_version``, ``kind``. Shards are written atomically
(temp + rename) and the manifest is rewritten after every shard, so an interrupted job resumes
from the last finished shard. Train and test splits use disjoint maze seeds.

Integrity: the manifest records each shard's sha256 and a digest of its own content; a reader checks
a shard's sha256 when it first opens it (about 20 ms per 30 MB shard), so a flipped byte is an error
naming the shard, never silently different frames or tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from envs.common.errors import DatasetError
from envs.common.files import atomic_write, read_sealed_json, sha256_file, write_sealed_json

FORMAT = "maskflow-dataset"
FORMAT_VERSION = 1
KINDS = {"frames": "frames", "tokens": "tokens"}
PER_FRAME = ("actions", "rewards", "terminated", "truncated", "poses")
DTYPES = {"frames": np.uint8, "tokens": np.uint16, "actions": np.int16, "rewards": np.float32,
          "terminated": np.bool_, "truncated": np.bool_, "poses": np.float32}
NO_ACTION = -1


def shard_name(split: str, index: int) -> str:
    return f"shards/{split}-{index:05d}.h5"


def write_shard(path: str | os.PathLike, episodes: Sequence[dict], kind: str, env_id: str,
                action_meanings: Sequence[str], compression: str | None = None) -> None:
    """Write ``episodes`` (dicts with ``id``, the obs array under ``kind``, per-frame arrays and
    ``attrs``) into one HDF5 shard, atomically. ``compression="gzip"`` compresses the observations
    (frames about 2.6x smaller; h5py reads either kind the same way)."""
    import h5py

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(env_id=env_id, action_meanings=json.dumps(list(action_meanings)),
                           format_version=FORMAT_VERSION, kind=kind)
            for ep in episodes:
                g = f.create_group(f"episodes/{int(ep['id']):06d}")
                obs = np.asarray(ep[kind], dtype=DTYPES[kind])
                g.create_dataset(kind, data=obs, chunks=(min(len(obs), 64), *obs.shape[1:]),
                                 compression=compression, shuffle=compression is not None)
                for key in PER_FRAME:
                    if key in ep:
                        arr = np.asarray(ep[key], dtype=DTYPES[key])
                        if len(arr) != len(obs):
                            raise ValueError(f"episode {ep['id']}: {key} has {len(arr)} entries, "
                                             f"{kind} has {len(obs)}")
                        g.create_dataset(key, data=arr)
                for k, v in ep.get("attrs", {}).items():
                    g.attrs[k] = v


def new_manifest(kind: str, env_id: str, action_meanings: Sequence[str], obs_shape: Sequence[int],
                 config: dict | None = None) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "env_id": env_id,
            "action_meanings": list(action_meanings), "obs_shape": list(obs_shape), "shards": [],
            "config": dict(config or {}), "complete": False}


def add_shard(root: str | os.PathLike, manifest: dict, rel_file: str, split: str,
              episodes: Sequence[dict]) -> None:
    """Record a finished shard in ``manifest`` and rewrite ``ROOT/manifest.json`` atomically."""
    path = Path(root) / rel_file
    kind = manifest["kind"]
    manifest["shards"] = [s for s in manifest["shards"] if s["file"] != rel_file]
    manifest["shards"].append({
        "file": rel_file, "split": split, "episodes": [int(e["id"]) for e in episodes],
        "frames": int(sum(len(e[kind]) for e in episodes)), "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    })
    manifest["shards"].sort(key=lambda s: s["file"])
    write_manifest(root, manifest)


def write_manifest(root: str | os.PathLike, manifest: dict) -> None:
    """Write ``ROOT/manifest.json`` atomically, with a digest of its content checked on read."""
    write_sealed_json(Path(root) / "manifest.json", manifest)


def shard_is_valid(root: str | os.PathLike, entry: dict) -> bool:
    """A manifest entry's file exists with the recorded size and sha256 (used when resuming)."""
    path = Path(root) / entry["file"]
    return path.is_file() and path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]


def write_dataset(root: str | os.PathLike, episodes: Sequence[dict], split: str = "train",
                  kind: str = "frames", env_id: str = "synthetic", action_meanings: Sequence[str] = (),
                  episodes_per_shard: int = 8, config: dict | None = None) -> Path:
    """Write (or extend) a dataset from in-memory episodes; for tests and synthetic data."""
    root = Path(root)
    mpath = root / "manifest.json"
    if mpath.exists():
        manifest = load_manifest(root)
    else:
        obs_shape = np.asarray(episodes[0][kind]).shape[1:]
        manifest = new_manifest(kind, env_id, action_meanings, obs_shape, config)
    start = len([s for s in manifest["shards"] if s["split"] == split])
    for j, i in enumerate(range(0, len(episodes), episodes_per_shard)):
        chunk = episodes[i: i + episodes_per_shard]
        rel = shard_name(split, start + j)
        write_shard(root / rel, chunk, kind, manifest["env_id"], manifest["action_meanings"])
        add_shard(root, manifest, rel, split, chunk)
    manifest["complete"] = True
    write_manifest(root, manifest)
    return root


def compact_dataset(src: str | os.PathLike, dst: str | os.PathLike, episodes: dict[str, int] | None = None,
                    compression: str = "gzip") -> Path:
    """Copy dataset ``src`` into the new folder ``dst`` with compressed observations, keeping at most
    ``episodes[split]`` episodes of each split (the first ones; all where a split is not named).

    For carrying a dataset where bytes count (a GPU machine's upload limit). The manifest keeps every
    record of the source (settings, tokenizer) with ``compacted_from`` added; shards are re-checksummed.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise DatasetError(f"{dst} exists; compact_dataset writes a new folder")
    manifest = load_manifest(src)
    keep = dict(episodes or {})
    splits = sorted({s["split"] for s in manifest["shards"]})
    bad = {k: v for k, v in keep.items() if k not in splits or not isinstance(v, int) or v < 0}
    if bad:
        raise DatasetError(f"compact_dataset episodes={bad}: each key must be a split of {src} ({splits}) "
                           "and each value a count >= 0")
    out = {k: v for k, v in manifest.items() if k != "shards"}
    out.update(shards=[], complete=False,
               compacted_from={"path": str(src), "episodes": keep, "compression": compression})
    dst.mkdir(parents=True)
    for split in splits:
        ds = EpisodeDataset(src, split)
        try:
            n = min(len(ds), keep.get(split, len(ds)))
            for j, i in enumerate(range(0, n, 8)):
                chunk = [ds.episode(k) for k in range(i, min(n, i + 8))]
                rel = shard_name(split, j)
                write_shard(dst / rel, chunk, manifest["kind"], manifest["env_id"], manifest["action_meanings"],
                            compression=compression)
                add_shard(dst, out, rel, split, chunk)
        finally:
            ds.close()          # an error mid-copy leaves no h5 handle open (dst stays incomplete, refused)
    out["complete"] = True
    write_manifest(dst, out)
    return dst


DATASET_ENTRIES = ("manifest.json", "shards")


def is_dataset(root: str | os.PathLike, kind: str) -> bool:
    """Whether ``root`` holds a readable dataset manifest of ``kind`` (written by this project)."""
    try:
        return load_manifest(root).get("kind") == kind
    except DatasetError:
        return False


def recorded_env(manifest: dict) -> tuple[str, dict]:
    """The env a dataset's episodes were played in: (env id, ``gym.make`` kwargs), from a frames dataset's
    collection config or a token dataset's source ("" and {} where the manifest does not say)."""
    where = manifest.get("config") if manifest.get("kind") == "frames" else manifest.get("source")
    return str(manifest.get("env_id") or ""), dict((where or {}).get("env_kwargs") or {})


def load_manifest(root: str | os.PathLike) -> dict:
    """Read and check ``ROOT/manifest.json``; raise :class:`DatasetError` naming what is wrong."""
    root = Path(root)
    if not (root / "manifest.json").is_file():
        raise DatasetError(f"{root} is not a dataset: no manifest.json (create one with `maskflow collect`)")
    m = read_sealed_json(root / "manifest.json", "dataset manifest", error=DatasetError)
    if m.get("format") != FORMAT:
        raise DatasetError(f"{root}/manifest.json is not a MaskFlow dataset manifest")
    if m.get("format_version") != FORMAT_VERSION:
        raise DatasetError(f"{root}: dataset format version {m.get('format_version')} is not supported "
                           f"(this version reads {FORMAT_VERSION})")
    return m


class EpisodeDataset:
    """Whole episodes of one split. ``episode(i)`` returns a dict of numpy arrays plus ``attrs``.

    Shards are checked when first opened: a missing, truncated or unreadable file, or one whose
    episodes do not match the manifest, raises :class:`DatasetError` naming the file.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", in_memory: bool = False):
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        self.split = split
        self.kind = self.manifest["kind"]
        self.shards = [s for s in self.manifest["shards"] if s["split"] == split]
        if not self.shards:
            splits = sorted({s["split"] for s in self.manifest["shards"]})
            raise DatasetError(f"{self.root} has no episodes in split {split!r} (splits present: {splits})")
        self.index = [(si, eid) for si, s in enumerate(self.shards) for eid in s["episodes"]]
        self._files: dict[int, object] = {}
        self._pid = os.getpid()
        self._cache: dict[int, dict] | None = {} if in_memory else None

    @property
    def action_meanings(self) -> tuple[str, ...]:
        return tuple(self.manifest["action_meanings"])

    @property
    def num_actions(self) -> int:
        return len(self.manifest["action_meanings"])

    @property
    def env_id(self) -> str:
        return self.manifest["env_id"]

    def __len__(self) -> int:
        return len(self.index)

    def _file(self, si: int):
        import h5py

        if os.getpid() != self._pid:  # h5py handles must not cross a fork (DataLoader workers)
            self._files, self._pid = {}, os.getpid()
        if si not in self._files:
            entry = self.shards[si]
            path = self.root / entry["file"]
            if not path.is_file():
                raise DatasetError(f"dataset shard missing: {path}")
            if path.stat().st_size != entry["bytes"]:
                raise DatasetError(f"dataset shard {path} is truncated or changed: {path.stat().st_size} "
                                   f"bytes, manifest says {entry['bytes']}")
            if sha256_file(path) != entry["sha256"]:
                raise DatasetError(f"dataset shard {path} is corrupt: its sha256 differs from the one recorded in "
                                   f"{self.root / 'manifest.json'}; restore the file or collect it again")
            try:
                f = h5py.File(path, "r")
            except OSError as e:
                raise DatasetError(f"dataset shard {path} is corrupt (cannot open as HDF5: {e})") from e
            if f.attrs.get("kind") != self.kind:
                raise DatasetError(f"dataset shard {path} holds {f.attrs.get('kind')!r}, expected {self.kind!r}")
            self._files[si] = f
        return self._files[si]

    def episode(self, i: int) -> dict:
        """Episode ``i`` of this split as numpy arrays (``kind`` obs + per-frame arrays) and ``attrs``."""
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        out = self.arrays(i, (self.kind, *PER_FRAME))
        si, eid = self.index[i]
        name = f"episodes/{eid:06d}"
        if self.kind not in out or any(len(out[k]) != len(out[self.kind]) for k in PER_FRAME if k in out):
            raise DatasetError(f"dataset shard {self.root / self.shards[si]['file']}: episode {name} "
                               "is missing its observations or has arrays of different lengths")
        if self._cache is not None:
            self._cache[i] = out
        return out

    def arrays(self, i: int, keys: tuple[str, ...]) -> dict:
        """Episode ``i``'s per-frame arrays ``keys`` (those it has), its ``attrs`` and ``id``, reading nothing else
        (without the observations: the cheap pass over a dataset's poses or rewards; :meth:`episode` reads all)."""
        si, eid = self.index[i]
        name = f"episodes/{eid:06d}"
        try:
            g = self._file(si)[name]
            out = {k: g[k][()] for k in keys if k in g}
            out["attrs"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
        except (KeyError, OSError) as e:
            raise DatasetError(f"dataset shard {self.root / self.shards[si]['file']} is corrupt: "
                               f"cannot read {name} ({e})") from e
        out["id"] = eid
        return out

    def reward_frames(self) -> list[tuple[int, int]]:
        """(episode, frame) of every frame with a positive reward (reads only the rewards arrays)."""
        out = []
        for i, (si, eid) in enumerate(self.index):
            g = self._file(si)[f"episodes/{eid:06d}"]
            if "rewards" in g:
                out += [(i, int(j)) for j in np.flatnonzero(np.asarray(g["rewards"][()]) > 0)]
        return out

    def lengths(self) -> list[int]:
        """Frames per episode (reads each episode's obs dataset shape only)."""
        out = []
        for si, eid in self.index:
            out.append(int(self._file(si)[f"episodes/{eid:06d}/{self.kind}"].shape[0]))
        return out

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}


class ClipDataset:
    """Every k-frame window of every episode of a split, as a map-style (torch-compatible) dataset.

    Item ``i`` is one (episode, start) window; shuffle and shard it with a sampler to draw random
    clips. Returns ``obs`` (k, ...) [frames uint8 or tokens int64], ``actions`` (k,) int64 with
    -1 = none, ``rewards`` (k,) float32, ``terminated`` (k,) bool, ``episode`` and ``start``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", clip_len: int = 16,
                 in_memory: bool = True):
        self.episodes = EpisodeDataset(root, split, in_memory=in_memory)
        self.clip_len = clip_len
        lengths = self.episodes.lengths()
        self.windows = [(e, s) for e, n in enumerate(lengths) for s in range(n - clip_len + 1)]
        if not self.windows:
            raise DatasetError(f"no episode in {root} ({split}) has {clip_len} frames "
                               f"(longest: {max(lengths)}); use a shorter clip_len")

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        e, s = self.windows[i]
        ep = self.episodes.episode(e)
        sl = slice(s, s + self.clip_len)
        obs = ep[self.episodes.kind][sl]
        return {
            "obs": obs.astype(np.int64) if self.episodes.kind == "tokens" else obs,
            "actions": ep["actions"][sl].astype(np.int64),
            "rewards": ep["rewards"][sl].astype(np.float32),
            "terminated": ep["terminated"][sl].astype(bool),
            "episode": e,
            "start": s,
        }
