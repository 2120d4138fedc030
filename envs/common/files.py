"""Atomic file writing, safetensors + JSON checkpoint I/O, checksums, and the guard on ``overwrite``.

Every file a long job writes goes through :func:`atomic_write`: the data is written to a temp
file in the same directory and renamed over the target, so a killed job never leaves a
half-written file behind; a folder written as one piece (a checkpoint, a release, a resumable
state) goes through :func:`atomic_dir` the same way. Weights are safetensors with a JSON config
beside them; nothing a user might download is ever unpickled.

Integrity: a JSON file written with :func:`write_sealed_json` carries an ``integrity`` block, the
sha256 of each file it describes (the weights beside it) and a digest of its own content.
:func:`read_sealed_json` checks both, so a flipped byte in the weights or in the JSON (an ``env_id``
edited by hand, say) is an error naming the file instead of a model that silently dreams garbage.

Overwrite: :func:`check_replaceable` is the one place that decides whether ``overwrite=true`` may
delete a directory: only output this project wrote (recognised by its manifest or marker file and
nothing else in it), never ``/``, ``$HOME``, the working directory or an ancestor of it, and never an
input of the same command.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envs.common.errors import CheckpointError, ConfigError

if TYPE_CHECKING:  # torch is imported lazily: collection workers must start fast
    import torch


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success rename it over ``path`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    """The process's umask (read by setting it, then putting it back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, prefix: str | None = None) -> Iterator[Path]:
    """Yield a new empty temp folder beside ``path`` (named ``prefix…``, default ``.NAME-…``); on success
    replace ``path`` with it, else delete it. A job killed while filling it leaves ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{path.name}-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())      # mkdtemp makes 0700 folders; use the usual permissions
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


INTEGRITY_KEY = "integrity"
SUMS_NAME = "SHA256SUMS.json"          # a release's record of every file's sha256


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")


def read_json(path: str | os.PathLike, what: str = "file") -> dict:
    """Read a JSON object, turning a missing or corrupt file into a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{what} {path} is not valid JSON ({e}); the file is corrupt") from e


def save_weights(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> None:
    """Save tensors as safetensors, atomically. Tensors are made contiguous CPU copies first."""
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_write(path) as tmp:
        save_file(flat, str(tmp), metadata=dict(metadata or {}))
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors writes its file anew, 0600: use the usual permissions


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or corrupt file raises :class:`CheckpointError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"weights file {path} is corrupt or not safetensors: {e}") from e


def load_state_dict_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``, naming missing, unexpected and wrongly-shaped tensors."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' …' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append("wrong shapes " + "; ".join(wrong[:5]))
        raise CheckpointError(f"{source} does not match the model built from its config: " + ", ".join(parts))
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _json_digest(body: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``body`` (as it reads back from disk: tuples become lists)."""
    canon = json.loads(json.dumps(body, default=_json_default))
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()


def write_sealed_json(path: str | os.PathLike, obj: Mapping[str, Any], files: tuple[str, ...] = ()) -> None:
    """Write ``obj`` as JSON with an ``integrity`` block: the sha256 of each of ``files`` (paths relative
    to the JSON's folder, written before it) and a digest of the JSON's own content."""
    path = Path(path)
    body = {k: v for k, v in obj.items() if k != INTEGRITY_KEY}
    sums = {f: sha256_file(path.parent / f) for f in files}
    body_digest = _json_digest({**body, INTEGRITY_KEY: {"files": sums}})
    write_json(path, {**body, INTEGRITY_KEY: {"files": sums, "json_sha256": body_digest}})


def read_sealed_json(path: str | os.PathLike, what: str = "file", error: type[Exception] = CheckpointError,
                     check_files: bool = True) -> dict:
    """Read a JSON object and check its ``integrity`` block (its own digest, then each listed file's
    sha256); raise ``error`` naming the file that differs. A JSON written before integrity blocks
    existed (no block) is read as it is."""
    path = Path(path)
    try:
        obj = read_json(path, what)
    except CheckpointError as e:
        raise error(str(e)) from e
    if not isinstance(obj, dict) or INTEGRITY_KEY not in obj:
        return obj
    seal = obj[INTEGRITY_KEY]
    body = {k: v for k, v in obj.items() if k != INTEGRITY_KEY}
    if not isinstance(seal, dict) or not isinstance(seal.get("files"), dict) or \
            _json_digest({**body, INTEGRITY_KEY: {"files": seal["files"]}}) != seal.get("json_sha256"):
        raise error(f"{what} {path} does not match its recorded sha256: the file was changed or corrupted "
                    "after it was written; restore it or write it again")
    if check_files:
        verify_files(path.parent, seal["files"], source=path, error=error)
    return obj


def read_format_json(path: str | os.PathLike, what: str, fmt: str, version: int, required: tuple[str, ...] = (),
                     check_files: bool = False, hint: str = "") -> dict:
    """Read a sealed JSON (:func:`read_sealed_json`) that must be a ``fmt`` record of ``version`` holding the
    ``required`` keys; else raise :class:`CheckpointError` naming the file (and ``hint``, how to fix an old one)."""
    meta = read_sealed_json(path, what=what, check_files=check_files)
    if not isinstance(meta, dict) or meta.get("format") != fmt or any(k not in meta for k in required):
        raise CheckpointError(f"{path} is not a MaskFlow {what} (format {fmt!r} expected)")
    if meta.get("format_version") != version:
        raise CheckpointError(f"{path} has format_version {meta.get('format_version')}; this code reads version "
                              f"{version}{'. ' + hint if hint else ''}")
    return meta


def verify_files(root: Path, sums: Mapping[str, str], source: Path, error: type[Exception] = CheckpointError) -> None:
    """Check each ``root/name`` against its recorded sha256 (recorded in ``source``)."""
    for name, digest in sums.items():
        f = Path(root) / name
        if not f.is_file():
            raise error(f"{f} is missing (listed in {source})")
        if sha256_file(f) != digest:
            raise error(f"{f} does not match its sha256 recorded in {source}: the file was changed or corrupted "
                        "after it was written; restore it or write it again")


def check_replaceable(out: str | os.PathLike, *, own: Callable[[Path], bool], what: str,
                      inputs: tuple[str | os.PathLike, ...] = (), allowed: Callable[[str], bool] | None = None,
                      key: str = "out") -> None:
    """Raise :class:`ConfigError` unless ``overwrite`` may replace the directory ``out``.

    ``own(out)`` says whether ``out`` holds output this project wrote (its manifest or marker file);
    ``allowed(name)`` whether a top-level entry is one the project writes there (default: any, once
    ``own`` holds). A missing or empty directory may always be replaced. Whatever it holds, ``out`` may
    never be ``/``, ``$HOME``, the working directory or one of its ancestors, nor contain, equal or lie
    inside one of ``inputs`` (the same command's input data).
    """
    p = Path(out).expanduser().resolve()
    cwd = Path.cwd().resolve()
    protected = {Path("/"), Path.home().resolve()}
    if p in protected or p == cwd or p in cwd.parents:
        which = "the working directory or one of its parents" if p == cwd or p in cwd.parents else "protected"
        raise ConfigError(f"{key}={out} with overwrite=true would delete {p}, which is {which}; "
                          "overwrite only ever replaces a folder this project wrote: choose another out=")
    for src in inputs:
        q = Path(src).expanduser().resolve()
        if p == q or p in q.parents or q in p.parents:
            raise ConfigError(f"{key}={out} overlaps the input {q} of this command; overwrite=true would delete "
                              "the input: choose an out= outside it")
    if not p.exists():
        return
    if not p.is_dir():
        raise ConfigError(f"{key}={out} is a file, not a folder; choose another out=")
    entries = [e.name for e in p.iterdir()]
    if not entries:
        return
    if not own(p):
        raise ConfigError(f"{key}={out} holds files this project did not write (no {what} there); overwrite=true "
                          "only replaces earlier output of the same kind: choose another out= or move the files")
    foreign = sorted(e for e in entries if allowed is not None and not allowed(e))
    if foreign:
        shown = ", ".join(foreign[:5]) + (" …" if len(foreign) > 5 else "")
        raise ConfigError(f"{key}={out} holds {what} but also files this project did not write ({shown}); "
                          "overwrite=true will not delete them: move them or choose another out=")


def verify_sums(path: str | os.PathLike, unlisted_ok: tuple[str, ...] = ()) -> dict[str, str]:
    """Check every file under ``path`` against its ``SHA256SUMS.json``; raise :class:`CheckpointError`
    naming a changed, missing or unlisted file (unlisted ones named in ``unlisted_ok`` excepted).
    Returns the recorded {file: sha256}."""
    p = Path(path)
    record = read_json(p / SUMS_NAME, what="release checksums")
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"{p / SUMS_NAME} lists no files")
    for name, digest in files.items():
        f = p / name
        if not f.is_file():
            raise CheckpointError(f"release file missing: {f}")
        if sha256_file(f) != digest:
            raise CheckpointError(f"{f} does not match its recorded sha256 in {p / SUMS_NAME}; the file was "
                                  f"changed or corrupted (restore it, e.g. `git checkout -- {f}`)")
    extra = sorted(q.relative_to(p).as_posix() for q in p.rglob("*") if q.is_file()
                   and q.name != SUMS_NAME and q.relative_to(p).as_posix() not in (*files, *unlisted_ok))
    if extra:
        raise CheckpointError(f"{p} holds files not in {SUMS_NAME}: {extra}")
    return dict(files)


def is_temp_name(name: str) -> bool:
    """A temporary file or folder this project leaves while writing (``.NAME.XXXX.tmp``, ``.tmp-XXXX``)."""
    return name.startswith(".") and (name.endswith(".tmp") or name.startswith(".tmp-"))


def remove_entries(root: str | os.PathLike, names: tuple[str, ...] | list[str]) -> None:
    """Delete the named top-level entries of ``root`` (files or folders); the folder itself stays."""
    for name in names:
        q = Path(root) / name
        if q.is_dir() and not q.is_symlink():
            shutil.rmtree(q)
        elif q.exists() or q.is_symlink():
            q.unlink()
