"""Type and range checks of run settings: one checker behind every `maskflow` verb and every API entry.

Each verb's settings are a typed config dataclass (``TrainConfig``, ``DreamConfig``, ...). Its field
annotations give each key's type; a ``CHECKS`` table beside the fields gives the allowed range or
choices of a key; a ``CLI_KEYS`` table types the keys the verb reads beside the dataclass (e.g.
collect's ``video``). Two entry points share those declarations:

    check_config(cfg)            every field of a config instance: what ``cfg.validate()`` runs first, so
                                 ``train(cfg)``, ``dream(cfg)``, ... refuse bad values before any work
    check_mapping(cls, values)   a composed Hydra config (plain dict) before the verb runs: every key must
                                 be typed, YAML's harmless spellings are normalised (an int for a float, a
                                 number for a string), then the dataclass's own ``validate()`` runs

Every failure is a :class:`ConfigError` naming the key, its value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import re
import textwrap
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from envs.common.errors import ConfigError

_MISMATCH = object()        # "this value does not fit this type"


@dataclasses.dataclass(frozen=True)
class Check:
    """A range or choice rule for one key; ``allowed`` says it in words for the error message."""

    allowed: str
    ok: Callable[[Any], bool]


def _note(note: str) -> str:
    return f" ({note})" if note else ""


def at_least(lo: float, note: str = "") -> Check:
    """``value >= lo``."""
    return Check(f">= {lo}{_note(note)}", lambda v: v >= lo)


def above(lo: float, note: str = "") -> Check:
    """``value > lo``."""
    return Check(f"> {lo}{_note(note)}", lambda v: v > lo)


def within(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False, note: str = "") -> Check:
    """``lo <= value <= hi``, either end optionally open: ``within(0, 1, hi_open=True)`` is [0, 1)."""
    text = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    return Check(text + _note(note),
                 lambda v: (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi))


def one_of(*choices: Any, note: str = "") -> Check:
    """One of the listed values (an enumerated string key)."""
    return Check(f"one of {', '.join(map(str, choices))}{_note(note)}", lambda v: v in choices)


def each(check: Check, *, non_empty: bool = False) -> Check:
    """A rule for every item of a list (``non_empty``: and at least one item)."""
    lead = "a non-empty list" if non_empty else "a list"
    return Check(f"{lead} whose items are each {check.allowed}",
                 lambda v: (len(v) > 0 or not non_empty) and all(check.ok(x) for x in v))


# torch device names the inference verbs accept (training takes cpu | cuda | auto: DDP picks the index)
DEVICE = Check("cpu, cuda, cuda:N or auto",
               lambda v: v in ("cpu", "cuda", "auto") or re.fullmatch(r"cuda:\d+", v) is not None)
SEED = at_least(0, "numpy seeds are non-negative")
THREADS = at_least(0, "0 = the default")
# the dtype a dream computes in (worldmodel.common.device.inference_dtype): auto = bf16 where native
PRECISIONS = ("auto", "fp32", "bf16")
PRECISION = one_of(*PRECISIONS)


# ---- types --------------------------------------------------------------------------------------

_PLURAL = {bool: "booleans", int: "integers", float: "finite numbers", str: "strings"}


def describe(tp: Any) -> str:
    """A type annotation in words: ``int`` -> "an integer", ``list[int]`` -> "a list of integers"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "anything"
    if tp is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a finite number"
    if tp is str:
        return "a string"
    if origin in (list, tuple) or tp in (list, tuple):
        items = [a for a in args if a is not Ellipsis]
        return f"a list of {_PLURAL.get(items[0], describe(items[0]))}" if items else "a list"
    if origin is dict or tp is dict:
        return "a mapping (key: value)"
    raise TypeError(f"no checker for the annotation {tp!r}; extend envs.common.config_check")


def _is_bool(v: Any) -> bool:
    return isinstance(v, (bool, np.bool_))


def _fit(value: Any, tp: Any, lenient: bool) -> Any:
    """``value`` in ``tp``'s canonical form, or ``_MISMATCH``. ``lenient`` (CLI) also turns a number
    into a string for a string key (Hydra reads ``out=2024`` as an int)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if tp is type(None):
        return None if value is None else _MISMATCH
    if origin in (typing.Union, types.UnionType):
        for loose in (False, True) if lenient else (False,):        # an exact fit beats a coerced one
            for arm in args:
                got = _fit(value, arm, loose)
                if got is not _MISMATCH:
                    return got
        return _MISMATCH
    if tp is bool:
        return bool(value) if _is_bool(value) else _MISMATCH
    if tp is int:
        return int(value) if isinstance(value, numbers.Integral) and not _is_bool(value) else _MISMATCH
    if tp is float:                                                  # a YAML int is fine for a float
        ok = isinstance(value, numbers.Real) and not _is_bool(value) and math.isfinite(value)
        return float(value) if ok else _MISMATCH
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):                           # API users pass pathlib.Path
            return os.fspath(value)
        if lenient and isinstance(value, numbers.Real) and not _is_bool(value):
            return str(value)
        return _MISMATCH
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return _MISMATCH
        items = [a for a in args if a is not Ellipsis]
        fitted = [_fit(v, items[0] if items else Any, lenient) for v in value]
        if any(v is _MISMATCH for v in fitted):
            return _MISMATCH
        return tuple(fitted) if tuple in (origin, tp) else fitted
    if origin is dict or tp is dict:
        return dict(value) if isinstance(value, Mapping) else _MISMATCH
    raise TypeError(f"no checker for the annotation {tp!r}; extend envs.common.config_check")


def check_value(key: str, value: Any, tp: Any, rule: Check | None = None, lenient: bool = False) -> Any:
    """``value`` of ``key`` checked against its type and rule; returns it normalised, else raises."""
    got = _fit(value, tp, lenient)
    if got is _MISMATCH:
        raise ConfigError(f"{key} must be {describe(tp)}, got {value!r}")
    if rule is not None and got is not None and not rule.ok(got):
        raise ConfigError(f"{key} must be {rule.allowed}, got {value!r}")
    return got


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


class CliKey(typing.NamedTuple):
    """A key a verb reads beside its config dataclass's fields (``CLI_KEYS``): type, default, meaning."""

    type: Any
    default: Any
    help: str = ""


def keys_of(cls: type) -> dict[str, Any]:
    """Every key a config class types: its fields, then its ``CLI_KEYS`` -> annotation."""
    hints = _hints(cls)
    return {**{k: hints[k] for k in _fields(cls)}, **{k: v.type for k, v in getattr(cls, "CLI_KEYS", {}).items()}}


def field_docs(cls: type) -> dict[str, str]:
    """Each field's comment in the class source (``name: type = default  # comment`` and the comment
    lines indented under it), then each ``CLI_KEYS`` entry's help: the text ``maskflow VERB --help`` shows."""
    import inspect
    import io
    import tokenize

    docs: dict[str, str] = {}
    for klass in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):
        try:
            src = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        names = set(_fields(klass))
        current, field_col = None, 0
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in names:
                current, field_col = tok.string, tok.start[1]
            elif tok.type == tokenize.COMMENT and current is not None:
                text = tok.string.lstrip("#").strip()
                if tok.line.lstrip().startswith("#") and tok.start[1] <= field_col:
                    current = None                       # a comment of its own, not this field's
                else:
                    docs[current] = f"{docs[current]} {text}" if current in docs else text
            elif tok.type == tokenize.NAME and tok.start[1] == 4:
                current = None
    for key, spec in getattr(cls, "CLI_KEYS", {}).items():
        docs[key] = spec.help
    return docs


def check_config(cfg: Any) -> None:
    """Check every field of a config dataclass instance against its type and its ``CHECKS`` rule."""
    cls, rules = type(cfg), getattr(type(cfg), "CHECKS", {})
    for key in _fields(cls):
        check_value(key, getattr(cfg, key), _hints(cls)[key], rules.get(key))


def check_mapping(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Check a verb's composed settings (plain dict) against ``cls``; returns them normalised.

    Every key must be a field or a ``CLI_KEYS`` entry of ``cls``; each value must fit its type and its
    ``CHECKS`` rule; then the dataclass is built from its fields and its ``validate()`` runs (the
    rules between keys)."""
    typed, rules = keys_of(cls), getattr(cls, "CHECKS", {})
    out = {}
    for key, value in values.items():
        if key not in typed:
            raise ConfigError(f"key {key!r} has no typed field in {cls.__name__}; valid keys: {', '.join(typed)}")
        out[key] = check_value(key, value, typed[key], rules.get(key), lenient=True)
    fields = set(_fields(cls))
    cfg = cls(**{k: v for k, v in out.items() if k in fields})
    if hasattr(cfg, "validate"):
        cfg.validate()
    else:
        check_config(cfg)
    return out
