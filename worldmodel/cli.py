"""The ``maskflow`` command: one Hydra-composed config per verb, each a thin shell over a plain function.

    maskflow VERB key=value ...      e.g.  maskflow collect episodes=8 out=runs/data

Every verb reads ``configs/<verb>.yaml`` (found from any working directory because ``configs`` is
an installed package). Overrides use Hydra's ``key=value`` syntax; an unknown or missing key is
reported by name with the list of valid keys. Before the verb's function runs, every value is
checked against the verb's typed config dataclass (type, then range or choices; see
:mod:`envs.common.config_check`), so ``frames=abc`` or ``lr=-1`` is a one-line error with exit code 2.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib import resources

from omegaconf import DictConfig, OmegaConf

from envs.common.config_check import check_mapping
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
}

# verb -> "module:Class" of its typed config dataclass: the types and ranges every key is checked against
CONFIGS: dict[str, str] = {
    "collect": "envs.collect:CollectConfig",
    "train-tokenizer": "worldmodel.tokenizer.training:TokenizerTrainConfig",
    "tokenize": "worldmodel.tokenizer.tokenize:TokenizeConfig",
    "train": "worldmodel.training.loop:TrainConfig",
    "dream": "worldmodel.dream.verb:DreamConfig",
    "eval": "worldmodel.evaluation.evaluate:EvalConfig",
}


def configs_dir() -> str:
    """Absolute path of the installed ``configs`` package (works for editable and regular installs)."""
    return str(resources.files("configs"))


def _flat_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for k in cfg.keys():
        v = cfg._get_node(k)
        name = f"{prefix}{k}"
        if isinstance(v, DictConfig):
            keys.extend(_flat_keys(v, name + ".") if len(v) else [name])  # an empty dict takes any sub-key
        else:
            keys.append(name)
    return keys


def compose(verb: str, overrides: list[str]) -> DictConfig:
    """Compose the config of ``verb`` with Hydra ``overrides``; raise :class:`ConfigError` on bad keys."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException

    if verb not in VERBS:
        raise ConfigError(f"unknown verb {verb!r}; valid verbs: {', '.join(VERBS)}")
    if not available(verb):
        raise ConfigError(f"`maskflow {verb}` is not available in this version")
    name = VERBS[verb][0]
    with initialize_config_dir(config_dir=configs_dir(), version_base="1.3", job_name=f"maskflow-{verb}"):
        base = hydra_compose(config_name=name)
        valid = _flat_keys(base)
        for ov in overrides:
            key = ov.split("=", 1)[0].lstrip("+~")
            if "=" not in ov:
                raise ConfigError(f"override {ov!r} is not key=value; valid keys for {verb}: {', '.join(valid)}")
            known = key in valid or any(v.startswith(key + ".") or key.startswith(v + ".") for v in valid)
            if not known:
                raise ConfigError(f"unknown key {key!r} for `maskflow {verb}`; valid keys: {', '.join(valid)}")
        try:
            cfg = hydra_compose(config_name=name, overrides=overrides)
        except (ConfigCompositionException, MissingConfigException) as e:
            raise ConfigError(f"bad override for `maskflow {verb}`: {e}; valid keys: {', '.join(valid)}") from e
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"`maskflow {verb}` needs {', '.join(k + '=...' for k in missing)}; "
                          f"valid keys: {', '.join(valid)}")
    return cfg


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
    """The verb's config file as written (defaults and comments; ``???`` marks a required key)."""
    if verb not in VERBS:
        raise ConfigError(f"unknown verb {verb!r}; valid verbs: {', '.join(VERBS)}")
    if not available(verb):
        raise ConfigError(f"`maskflow {verb}` is not available in this version")
    return (resources.files("configs") / f"{VERBS[verb][0]}.yaml").read_text()


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
