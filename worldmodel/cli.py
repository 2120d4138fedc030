"""The ``maskflow`` command: one Hydra-composed config per verb, each a thin shell over a plain function.

    maskflow VERB key=value ...      e.g.  maskflow collect episodes=8 out=runs/data

Every verb reads ``configs/<verb>.yaml`` (found from any working directory because ``configs`` is
an installed package). Overrides use Hydra's ``key=value`` syntax; an unknown or missing key is
reported by name with the list of valid keys. Before the verb's function runs, every value is
checked against the verb's typed config dataclass (type, then range or choices; see
:mod:`envs.common.config_check`), so ``frames=abc`` or ``lr=-1`` is a one-line error with exit code 2.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import sys
import typing
from importlib import resources
from typing import Any

from omegaconf import DictConfig, OmegaConf

from envs.common.config_check import check_mapping, check_value, field_docs, keys_of
from envs.common.errors import ConfigError, MaskFlowError

# verb -> (config name, "module:function", one-line help)
VERBS: dict[str, tuple[str, str, str]] = {
    "collect": ("collect", "envs.collect:run_collect", "collect maze trajectories into an HDF5 dataset"),
    "train-tokenizer": ("train_tokenizer", "worldmodel.tokenizer.training:run_train_tokenizer",
                        "train the VQ frame tokenizer on a frames dataset"),
    "tokenize": ("tokenize", "worldmodel.tokenizer.tokenize:run_tokenize",
                 "turn a frames dataset into a token dataset"),
    "train": ("train", "worldmodel.training.loop:run_train", "train a MaskFlow world model on a token dataset"),
    "dream": ("dream", "worldmodel.dream.verb:run_dream", "imagine frames from real context; writes mp4 + PSNR curve"),
    "eval": ("eval", "worldmodel.evaluation.evaluate:run_eval",
             "FVD, PSNR/SSIM and the paper's comparisons; writes a report"),
    "calibrate": ("calibrate", "worldmodel.evaluation.rewards:run_calibrate",
                  "pick the dream's reward threshold on held-out mazes (writes reward_calibration.json)"),
    # the agents layer sits above this one: its verbs are named here as strings and imported only when run
    "rl": ("rl", "agents.rl:run_rl_cli", "the world-model RL loop: collect, fine-tune, PPO in the dream, evaluate"),
    "play": ("play", "agents.policy:main_play", "play a saved policy in held-out real mazes (optionally an mp4)"),
}

# verb -> "module:Class" of its typed config dataclass: the types and ranges every key is checked against
CONFIGS: dict[str, str] = {
    "collect": "envs.collect:CollectConfig",
    "train-tokenizer": "worldmodel.tokenizer.config:TokenizerTrainConfig",
    "tokenize": "worldmodel.tokenizer.tokenize:TokenizeConfig",
    "train": "worldmodel.training.loop:TrainConfig",
    "dream": "worldmodel.dream.verb:DreamConfig",
    "eval": "worldmodel.evaluation.evaluate:EvalConfig",
    "calibrate": "worldmodel.evaluation.rewards:CalibrateConfig",
    "rl": "agents.rl:RLConfig",
    "play": "agents.policy:PlayConfig",
}


def configs_dir() -> str:
    """Absolute path of the installed ``configs`` package (works for editable and regular installs)."""
    return str(resources.files("configs"))


def _omegaconf_type(tp: Any) -> Any:
    """``tp`` if OmegaConf can hold it in a structured config, else ``Any`` (e.g. ``str | list[str]``:
    the verb's own checker still types such a key)."""
    probe = dataclasses.make_dataclass("Probe", [("x", tp, dataclasses.field(default="???"))])
    try:
        OmegaConf.structured(probe)
        return tp
    except Exception:  # noqa: BLE001  (omegaconf raises several kinds for unsupported annotations)
        return Any


@functools.cache
def schema(verb: str) -> type:
    """The structured config Hydra composes ``verb`` against: the verb's config dataclass (each key
    defined once, there, with its type, default and comment) plus its ``CLI_KEYS``."""
    cls = config_class(verb)
    hints = typing.get_type_hints(cls)
    # a key the verb's YAML marks `???` must be given (OmegaConf would not let `???` override a default)
    marked = OmegaConf.load(resources.files("configs") / f"{VERBS[verb][0]}.yaml")
    required = set(OmegaConf.missing_keys(marked))
    fields: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(cls):
        tp = _omegaconf_type(hints[f.name])
        if tp is not hints[f.name] or f.name in required:     # re-declared: a type OmegaConf can hold, or required
            default = dataclasses.field(default="???") if f.name in required else \
                dataclasses.field(default=f.default) if f.default is not dataclasses.MISSING else \
                dataclasses.field(default_factory=f.default_factory)
            fields.append((f.name, tp, default))
    for key, spec in getattr(cls, "CLI_KEYS", {}).items():
        fields.append((key, _omegaconf_type(spec.type), dataclasses.field(default=spec.default)))
    return dataclasses.make_dataclass(f"{cls.__name__}Schema", fields, bases=(cls,))


def _dict_keys(verb: str) -> set[str]:
    """Keys of ``verb`` that hold a dict (``env_kwargs``): their sub-keys are the user's to choose."""
    return {f.name for f in dataclasses.fields(schema(verb))
            if typing.get_origin(typing.get_type_hints(schema(verb))[f.name]) is dict
            or typing.get_type_hints(schema(verb))[f.name] is dict}


def compose(verb: str, overrides: list[str]) -> DictConfig:
    """Compose the config of ``verb`` with Hydra ``overrides``; raise :class:`ConfigError` on bad keys.

    Hydra composes ``configs/<verb>.yaml`` over the verb's structured schema (:func:`schema`), so it
    rejects unknown keys and values of the wrong type itself; the error is then said in our words."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.errors import ConfigCompositionException, MissingConfigException

    if verb not in VERBS:
        raise ConfigError(f"unknown verb {verb!r}; valid verbs: {', '.join(VERBS)}")
    if not available(verb):
        raise ConfigError(f"`maskflow {verb}` is not available in this version")
    name = VERBS[verb][0]
    ConfigStore.instance().store(name=f"{name}_schema", node=schema(verb))
    valid = [f.name for f in dataclasses.fields(schema(verb))]
    dict_keys = _dict_keys(verb)
    given = []
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} is not key=value; valid keys for {verb}: {', '.join(valid)}")
        key = ov.split("=", 1)[0]
        if key.split(".", 1)[0] in dict_keys and "." in key and not key.startswith("+"):
            ov = "++" + ov                          # a new sub-key of a dict key (env_kwargs.maze=large)
        given.append(ov)
    _check_given(verb, given)
    with initialize_config_dir(config_dir=configs_dir(), version_base="1.3", job_name=f"maskflow-{verb}"):
        try:
            cfg = hydra_compose(config_name=name, overrides=given)
        except (ConfigCompositionException, MissingConfigException) as e:
            raise _say(verb, e, valid) from e
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"`maskflow {verb}` needs {', '.join(k + '=...' for k in missing)}; "
                          f"valid keys: {', '.join(valid)}")
    return cfg


def _check_given(verb: str, overrides: list[str]) -> None:
    """Each value as the user typed it, through the verb's checker, before Hydra converts it (Hydra would
    take ``overwrite=1`` for true; our rule says a bool is true or false)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    cls = config_class(verb)
    typed, rules = keys_of(cls), getattr(cls, "CHECKS", {})
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(f"cannot read the overrides of `maskflow {verb}`: {e}") from e
    for ov in parsed:
        key = ov.key_or_group
        if key in typed and not ov.is_delete():
            check_value(key, ov.value(), typed[key], rules.get(key), lenient=True)


def _say(verb: str, e: Exception, valid: list[str]) -> ConfigError:
    """Hydra's composition error in our words: an unknown key with the valid ones, or a wrong value
    through the verb's own checker (which names the key, its value and what is allowed)."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    cause = e.__cause__
    key = str(getattr(cause, "full_key", "") or "")
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        head, _, sub = key.partition(".")
        if sub and head in _dict_keys(verb):      # `env_kwargs={styles:[1]}`: a whole dict merges as unknown keys
            return ConfigError(f"set {head}'s entries one by one, e.g. '{head}.{sub}=...' (a whole dict, "
                               f"{head}={{...}}, is not accepted); valid keys: {', '.join(valid)}")
        return ConfigError(f"unknown key {key!r} for `maskflow {verb}`; valid keys: {', '.join(valid)}")
    if isinstance(cause, ValidationError) and key in keys_of(config_class(verb)):
        cls = config_class(verb)
        try:
            check_value(key, getattr(cause, "value", None), keys_of(cls)[key], getattr(cls, "CHECKS", {}).get(key))
        except ConfigError as ours:
            return ours
    return ConfigError(f"bad override for `maskflow {verb}`: {e}; valid keys: {', '.join(valid)}")


def config_class(verb: str) -> type:
    """The typed config dataclass of ``verb``."""
    module, name = CONFIGS[verb].split(":")
    return getattr(importlib.import_module(module), name)


def check(verb: str, cfg: DictConfig) -> DictConfig:
    """Check every key of the composed ``cfg`` (type, range, choices) against the verb's config dataclass;
    returns it normalised (an int given for a float key becomes a float); raises :class:`ConfigError`."""
    values = check_mapping(config_class(verb), OmegaConf.to_container(cfg, resolve=True))
    return OmegaConf.create(values)


def run(verb: str, overrides: list[str]):
    """Compose and check the config of ``verb``, then call its function; returns what the function returns."""
    cfg = check(verb, compose(verb, overrides))
    module, func = VERBS[verb][1].split(":")
    return getattr(importlib.import_module(module), func)(cfg)


def available(verb: str) -> bool:
    """Whether the verb's config and module are installed."""
    import importlib.util

    name, target, _ = VERBS[verb]
    return (resources.files("configs") / f"{name}.yaml").is_file() and \
        importlib.util.find_spec(target.split(":")[0]) is not None


def config_text(verb: str) -> str:
    """``maskflow VERB --help``: every key with its default (``???`` = required), what it means and
    what it allows, from the verb's config dataclass (the one place a key is defined)."""
    if verb not in VERBS:
        raise ConfigError(f"unknown verb {verb!r}; valid verbs: {', '.join(VERBS)}")
    if not available(verb):
        raise ConfigError(f"`maskflow {verb}` is not available in this version")
    cls = config_class(verb)
    defaults = OmegaConf.to_container(compose_defaults(verb), resolve=False)
    docs = field_docs(cls)
    rules = getattr(cls, "CHECKS", {})
    lines = [f"# maskflow {verb}: {VERBS[verb][2]}",
             f"# keys defined by {cls.__module__}.{cls.__name__}; set them as key=value", ""]
    for key, value in defaults.items():
        shown = "???" if value == "???" else json.dumps(value)
        note = docs.get(key, "")
        if key in rules:
            note = f"{note} [{rules[key].allowed}]" if note else f"[{rules[key].allowed}]"
        lines.append(f"{key}: {shown}".ljust(30) + (f"  # {note}" if note else ""))
    return "\n".join(lines) + "\n"


def compose_defaults(verb: str) -> DictConfig:
    """The verb's composed defaults, required keys left as ``???``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=f"{VERBS[verb][0]}_schema", node=schema(verb))
    with initialize_config_dir(config_dir=configs_dir(), version_base="1.3", job_name=f"maskflow-{verb}"):
        return hydra_compose(config_name=VERBS[verb][0])


def usage() -> str:
    lines = ["usage: maskflow VERB [key=value ...]", "", "verbs:"]
    lines += [f"  {v:<16} {h}{'' if available(v) else '  (not available yet)'}" for v, (_, _, h) in VERBS.items()]
    lines += ["", "`maskflow VERB --help` prints the verb's config with its defaults."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``maskflow VERB key=value ...``; returns the exit code (2 for a caller's mistake)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _main(argv)
        sys.stdout.flush()              # a closed pipe shows here, not as a traceback at interpreter exit
        return code
    except BrokenPipeError:
        # the reader left (`maskflow train --help | head`): the standard recipe is to point stdout at
        # devnull, so that Python's final flush cannot fail again, and exit quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    verb, overrides = argv[0], argv[1:]
    try:
        if any(a in ("-h", "--help") for a in overrides):
            print(config_text(verb))
            return 0
        run(verb, overrides)
    except MaskFlowError as e:
        print(f"maskflow {verb}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
