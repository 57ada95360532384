"""Config -> model, the one path: finding a config, ``--cfg-options``, the work dir, AMP, a
check of every key, and building the model with an optional strict checkpoint."""

from __future__ import annotations

import argparse
import copy
import inspect
import math
import os
import os.path as osp
from collections.abc import Sequence
from pathlib import Path

import torch
from mmengine.config import Config, DictAction
from torch import nn

from cmim_dense.binary.registry import BINARIZERS
from cmim_dense.registry import (
    DATASETS,
    HOOKS,
    LOOPS,
    METRICS,
    MODELS,
    OPTIM_WRAPPERS,
    OPTIMIZERS,
    PARAM_SCHEDULERS,
    TASK_UTILS,
    TRANSFORMS,
    init_scope,
)
from cmim_dense.utils.checkpoint import load_state_dict_strict, read_state_dict
from cmim_dense.utils.errors import InputError

# The configs shipped inside the package: the wheel carries the repository's ``configs/`` there
# (setup.py), where mmseg and mmpretrain keep theirs.
PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / ".mim" / "configs"

# Which registry builds the ``type`` of each part of a config (nested dicts follow their parent).
_REGISTRIES = {
    "model": MODELS,
    "train_cfg": LOOPS,
    "val_cfg": LOOPS,
    "test_cfg": LOOPS,
    "custom_hooks": HOOKS,
    "default_hooks": HOOKS,
    "optim_wrapper": OPTIM_WRAPPERS,
    "param_scheduler": PARAM_SCHEDULERS,
    "val_evaluator": METRICS,
    "test_evaluator": METRICS,
}
_NESTED_REGISTRIES = {
    "optimizer": OPTIMIZERS,
    "dataset": DATASETS,
    "pipeline": TRANSFORMS,
    "binarizer": BINARIZERS,
    "sampler": TASK_UTILS,  # a decode head's pixel sampler
}
_DATALOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")
# mmengine builds a loop without ``type`` from ``by_epoch``.
_DEFAULT_LOOPS = {True: "EpochBasedTrainLoop", False: "IterBasedTrainLoop"}
# Arguments a builder passes itself, or that mmengine reads and removes before building.
_IMPLICIT = {"type", "_scope_", "runner", "dataloader", "evaluator", "params", "model", "by_epoch"}
# Keys the Runner or a builder reads and removes before calling the class, per registry.
_IMPLICIT_BY_REGISTRY = {
    id(HOOKS): {"priority"},
    id(PARAM_SCHEDULERS): {"convert_to_iter_based"},
    id(OPTIM_WRAPPERS): {"constructor", "paramwise_cfg"},
}
# Layer configs that mmcv's build_norm_layer / build_conv_layer / initialisers interpret with
# extra keys of their own (``requires_grad``, ...): not checked against a class signature.
_LAYER_CONFIGS = {"norm_cfg", "act_cfg", "conv_cfg", "init_cfg", "dcn", "plugins"}


def parse_cfg_options(words: Sequence[str]) -> dict:
    """``["a=1", "b.c=x,y"]`` -> ``{"a": 1, "b.c": ["x", "y"]}``, exactly as mmengine parses
    ``--cfg-options``: its ``DictAction``, called through argparse's public Action interface."""
    namespace = argparse.Namespace()
    DictAction(option_strings=[], dest="options")(None, namespace, list(words))
    return namespace.options


def resolve_config(config: str | os.PathLike) -> str:
    """The file of ``config``: a path as given, else a config shipped with the package, named
    with or without ``.py`` (``nyud_deeplab_bin_r18``, ``pretrain/cifar10_bin_r18_irnet_cmim``).

    Raises:
        InputError: neither exists.
    """
    path = Path(config)
    if path.is_file():
        return str(path)
    if not path.is_absolute():
        for candidate in (PACKAGE_CONFIGS / path, PACKAGE_CONFIGS / path.with_suffix(".py")):
            if candidate.is_file():
                return str(candidate)
    raise InputError(
        f"config file not found: {config} (neither a file nor a config of the package)"
    )


def load_config(
    config: str | os.PathLike,
    cfg_options: dict | None = None,
    work_dir: str | None = None,
    launcher: str = "none",
) -> Config:
    """Read ``config``, apply ``--cfg-options``, check every key and choose the work dir.

    The work dir is, by priority: ``work_dir``, the config's ``work_dir``,
    ``work_dirs/<config name>``.

    Raises:
        InputError: the config file is missing, or a key is not an argument of what it builds.
    """
    cfg = Config.fromfile(resolve_config(config))
    if cfg_options:
        _merge_checked(cfg, cfg_options)
    check_config_keys(cfg)
    _fix_worker_options(cfg)
    _save_before_pruning(cfg)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", Path(config).stem)
    return cfg


_MISSING = object()
# Option names (the last part of a key) that count things: integers >= the given minimum.
_COUNTS = {
    "batch_size": 1, "max_iters": 1, "max_epochs": 1, "val_interval": 1, "interval": 1,
    "num_workers": 0, "max_keep_ckpts": -1, "num_classes": 1,
}  # fmt: skip


def _lookup(cfg, dotted: str):
    """The value at ``a.b.0.c`` in a config, or a sentinel when the path does not exist."""
    first, *rest = dotted.split(".")
    node = cfg.get(first, _MISSING)
    for part in rest:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list | tuple) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_option_value(key: str, value, original=_MISSING) -> None:
    """Refuse (:class:`InputError`, one line) a ``--cfg-options`` value that cannot be meant:
    a word or an empty value where the config has a number (``abc``, ``two``, ``''``), a NaN
    or infinity, a non-integer or too small count (``batch_size=0``, ``num_workers=-1``)."""
    name = key.rsplit(".", 1)[-1]
    shown = f"--cfg-options {key}={value!r}"
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{shown}: must be a finite number")
    if _is_number(original) and value is not None and not _is_number(value):
        raise InputError(f"{shown}: the config has a number here ({original!r}); give a number")
    if name in _COUNTS and (value is not None or original is not None):
        low = _COUNTS[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{shown}: must be an integer >= {low}")


def _merge_checked(cfg: Config, cfg_options: dict) -> None:
    """``cfg.merge_from_dict(cfg_options)``, each value checked against the one it replaces."""
    originals = {key: _lookup(cfg, key) for key in cfg_options}
    cfg.merge_from_dict(cfg_options)
    for key, value in cfg_options.items():
        check_option_value(key, value, originals[key])


def _fix_worker_options(cfg: Config) -> None:
    """``persistent_workers`` needs loader workers: off where ``num_workers`` is 0 (torch's
    DataLoader refuses the pair with a ValueError)."""
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg.get(key)
        if not isinstance(loader, dict):
            continue
        if loader.get("num_workers", 0) == 0 and loader.get("persistent_workers"):
            loader["persistent_workers"] = False


def _save_before_pruning(cfg: Config) -> None:
    """Use :class:`~cmim_dense.engine.checkpoint_hook.SafeCheckpointHook` for a config that
    names mmengine's ``CheckpointHook``, which deletes old checkpoints before saving."""
    hook = (cfg.get("default_hooks") or {}).get("checkpoint")
    if isinstance(hook, dict) and hook.get("type") in ("CheckpointHook", "mmengine.CheckpointHook"):
        hook["type"] = "SafeCheckpointHook"


def build_model(
    config: str | os.PathLike | Config,
    checkpoint: str | os.PathLike | None = None,
    cfg_options: dict | None = None,
    init_weights: bool = False,
) -> nn.Module:
    """The project's one way from a config to a model, used by every tool and benchmark.

    Loads ``config`` with the key check (:func:`load_config`; a :class:`Config` is taken as
    loaded, and ``cfg_options`` are merged and checked again), builds ``cfg.model`` in the
    project's scope, turns SyncBN into BN (no process group outside a launcher), and loads
    ``checkpoint`` strictly: every key with its shape, no other key, read without executing code.
    Without a checkpoint, ``init_weights=True`` runs the config's initialisation (pretrained
    backbones included), quietly; otherwise the modules keep their constructors' weights.

    Raises:
        InputError: a missing config, a bad key, an unreadable or mismatched checkpoint.
    """
    import logging

    from mmengine.logging import MMLogger
    from mmengine.model import revert_sync_batchnorm

    if isinstance(config, Config):
        cfg = config
        if cfg_options:  # on a copy: the caller's config stays as it was
            cfg = copy.deepcopy(config)
            _merge_checked(cfg, cfg_options)
            check_config_keys(cfg)
    else:
        cfg = load_config(config, cfg_options)
    state = read_state_dict(checkpoint) if checkpoint is not None else None
    init_scope()
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    if state is not None:
        name = Path(cfg.filename).stem if cfg.filename else type(model).__name__
        load_state_dict_strict(model, state, str(checkpoint), name)
    elif init_weights:
        logger = MMLogger.get_current_instance()
        level = logger.level
        logger.setLevel(logging.ERROR)  # initialisation reports are about training runs
        try:
            model.init_weights()
        finally:
            logger.setLevel(level)
    return model


def check_schedule(cfg: Config) -> None:
    """Refuse (:class:`InputError`) a training schedule that would train nothing: ``max_iters``
    or ``max_epochs`` (and ``val_interval``) must be integers >= 1."""
    train_cfg = cfg.get("train_cfg") or {}
    keys = [k for k in ("max_iters", "max_epochs") if k in train_cfg]
    if not keys:
        raise InputError("train_cfg has neither max_iters nor max_epochs: nothing to train")
    for key in (*keys, "val_interval"):
        value = train_cfg.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"train_cfg.{key} must be an integer >= 1, got {value!r}")


def enable_amp(cfg: Config, amp: str) -> None:
    """Switch the optimizer wrapper to mixed precision.

    ``amp``: ``'auto'`` (on when CUDA is available), ``'on'`` or ``'off'``.
    """
    if amp not in ("auto", "on", "off"):
        raise InputError(f"amp must be auto, on or off, got {amp!r}")
    use = amp == "on" or (amp == "auto" and torch.cuda.is_available())
    if not use:
        return
    wrapper = cfg.optim_wrapper
    if wrapper.get("type", "OptimWrapper") == "AmpOptimWrapper":
        return
    if wrapper.get("type", "OptimWrapper") != "OptimWrapper":
        raise InputError(f"AMP needs an OptimWrapper, the config has {wrapper.type}")
    wrapper.type = "AmpOptimWrapper"
    wrapper.setdefault("loss_scale", "dynamic")


def accepted_arguments(cls: type) -> set[str] | None:
    """Keyword arguments ``cls(...)`` accepts, following ``**kwargs`` up the class hierarchy;
    None when some ``**kwargs`` is not passed on to a parent (anything may be accepted)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names - {"self"}
        if klass is object or klass.__module__.startswith("torch.nn"):
            return None
    return None


def check_config_keys(cfg: Config) -> None:
    """Check that every key of a built part of ``cfg`` is an argument of the class it builds.

    Covers the model (recursively), loops, hooks, optimizer, schedulers, datasets, pipelines and
    evaluators: a typo such as ``model.backbone.binariser`` or ``train_cfg.max_iter`` fails here
    with one line naming the key and the accepted ones, not deep inside the Runner.
    """
    for key, registry in _REGISTRIES.items():
        _check_value(cfg.get(key), key, registry)
    for key in _DATALOADERS:
        loader = cfg.get(key)
        if isinstance(loader, dict):
            _check_value(loader.get("dataset"), f"{key}.dataset", DATASETS)


def _check_value(value, path: str, registry) -> None:
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_value(item, f"{path}[{i}]", registry)
    elif isinstance(value, dict):
        if registry is HOOKS and "type" not in value:  # default_hooks: name -> hook config
            for name, hook in value.items():
                _check_value(hook, f"{path}.{name}", registry)
            return
        _check_dict(value, path, registry)


def _check_dict(cfg: dict, path: str, registry) -> None:
    type_name = cfg.get("type")
    if type_name is None and registry is LOOPS and "by_epoch" in cfg:
        type_name = _DEFAULT_LOOPS[bool(cfg["by_epoch"])]
    if isinstance(type_name, str):
        cls = registry.get(type_name)
        if cls is None:
            raise InputError(f"{path}.type: unknown {registry.name} type {type_name!r}")
        accepted = accepted_arguments(cls) if inspect.isclass(cls) else None
        if accepted is not None:
            implicit = _IMPLICIT | _IMPLICIT_BY_REGISTRY.get(id(registry), set())
            unknown = sorted(k for k in cfg if k not in accepted and k not in implicit)
            if unknown:
                raise InputError(
                    f"{path}.{unknown[0]}: {type_name} has no argument {unknown[0]!r}; "
                    f"it accepts {', '.join(sorted(accepted - _IMPLICIT))}"
                )
    for key, value in cfg.items():
        if key in _LAYER_CONFIGS:
            continue
        nested = _NESTED_REGISTRIES.get(key, registry)
        if registry is BINARIZERS and key == "base":  # threshold_shift's base method
            nested = BINARIZERS
        if isinstance(value, dict) and ("type" in value or key in _NESTED_REGISTRIES):
            _check_dict(value, f"{path}.{key}", nested)
        elif isinstance(value, list | tuple) and key in ("pipeline", "transforms"):
            _check_value(value, f"{path}.{key}", TRANSFORMS)
        elif isinstance(value, list | tuple) and all(
            isinstance(v, dict) and "type" in v for v in value
        ):
            _check_value(value, f"{path}.{key}", nested)
