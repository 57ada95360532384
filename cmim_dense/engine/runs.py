"""Training and evaluation runs of any project config through the mmengine Runner."""

from __future__ import annotations

import math
import os
import os.path as osp
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner, find_latest_checkpoint

from cmim_dense.engine.config import check_schedule, enable_amp, load_config
from cmim_dense.engine.distributed import (
    DEFAULT_TIMEOUT_S,
    collective_faults,
    init_cpu_distributed,
)
from cmim_dense.engine.prediction_dump import DensePredictionDumpHook
from cmim_dense.engine.test_outputs import TestOutputs, check_show_dir, test_set_identity
from cmim_dense.engine.work_dir import prepare_work_dir
from cmim_dense.evaluation.report import METRICS_FILE, read_run_metrics, run_record
from cmim_dense.utils.checkpoint import (
    check_finite,
    check_state_dict,
    load_state_dict_strict,
    nonfinite_ok_keys,
    read_checkpoint_meta,
    read_state_dict,
)
from cmim_dense.utils.errors import InputError

if TYPE_CHECKING:
    from cmim_dense.deploy.runtime import ExportedModel


class NonFiniteMetricError(InputError):
    """An evaluation produced NaN or infinite headline metrics (a diverged or broken model)."""


def _model(runner: Runner):
    return runner.model.module if is_model_wrapper(runner.model) else runner.model


def train(
    config: str,
    work_dir: str | None = None,
    resume: str | None = None,
    amp: str = "auto",
    cfg_options: dict | None = None,
    launcher: str = "none",
) -> Runner | None:
    """Train any config of the project; returns the finished Runner, or None when the resumed
    checkpoint already finished the schedule (nothing is trained; one line says so).

    ``resume``: None (start anew), ``'auto'`` (the latest checkpoint in the work dir, if any)
    or a checkpoint path. The checkpoint is read safely and checked key by key against the
    model, and for NaN/inf values, before training starts.
    """
    cfg = load_config(config, cfg_options, work_dir, launcher)
    check_schedule(cfg)
    prepare_work_dir(cfg.work_dir)
    enable_amp(cfg, amp)
    checkpoint = None
    if resume == "auto":
        checkpoint = find_latest_checkpoint(cfg.work_dir) if osp.isdir(cfg.work_dir) else None
    elif resume:
        checkpoint = resume
    if checkpoint:
        state = read_state_dict(checkpoint)
        done = finished_schedule(cfg, read_checkpoint_meta(checkpoint))
        if done:
            print(f"nothing to train: {checkpoint} already finished the schedule ({done})")
            return None
        check_resumable_optimizer(cfg, read_checkpoint_meta(checkpoint, "optimizer"), checkpoint)
        cfg.resume, cfg.load_from = True, checkpoint
    init_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg)
    if checkpoint:
        model = _model(runner)
        check_state_dict(model.state_dict(), state, checkpoint, Path(config).stem)
        check_finite(state, checkpoint, nonfinite_ok_keys(model))
    timeout = cfg.get("env_cfg", {}).get("dist_cfg", {}).get("timeout", DEFAULT_TIMEOUT_S)
    with collective_faults(timeout):
        runner.train()
    return runner


def check_resumable_optimizer(cfg: Config, saved: dict, checkpoint: str) -> None:
    """Refuse (:class:`InputError`) to resume when the config's optimizer is not the one whose
    state the checkpoint holds (its param groups lack the optimizer's settings, e.g. SGD's
    ``momentum`` after Adam): mmengine would fail deep inside with a KeyError."""
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    optimizer = (cfg.get("optim_wrapper") or {}).get("optimizer")
    if not groups or not isinstance(optimizer, dict):
        return
    from cmim_dense.registry import OPTIMIZERS

    probe = OPTIMIZERS.build(dict(optimizer, params=[torch.zeros(1, requires_grad=True)]))
    missing = sorted(set(probe.param_groups[0]) - set(groups[0]) - {"params"})
    if missing:
        raise InputError(
            f"{checkpoint}: its optimizer state is not of the config's {optimizer.get('type')} "
            f"(no {', '.join(missing)}); resume with the optimizer it was trained with, or "
            "start anew with --cfg-options load_from=CHECKPOINT"
        )


def finished_schedule(cfg: Config, meta: dict) -> str | None:
    """``"iter 4 of 4"`` when a checkpoint's ``meta`` is at or past the end of ``cfg``'s
    schedule, else None."""
    train_cfg = cfg.get("train_cfg") or {}
    for unit, key in (("iter", "max_iters"), ("epoch", "max_epochs")):
        if key in train_cfg and isinstance(meta.get(unit), int) and meta[unit] >= train_cfg[key]:
            return f"{unit} {meta[unit]} of {train_cfg[key]}"
    return None


def run_meta(cfg: Config) -> dict:
    """Binarizer, CMIM lambda and pretraining accuracy of a config, for ``metrics.json``.

    A dense config reads the lambda and top-1/top-5 from the ``metrics.json`` of the run
    that produced its pretrained backbone (the checkpoint's directory), when there is one.
    """
    model = cfg.model
    backbone = model.get("backbone", {})
    binarizer = backbone.get("binarizer")
    meta = dict(
        binarizer=binarizer.get("type") if isinstance(binarizer, dict) else binarizer,
        cmim_lambda=model.get("cmim_lambda"),
    )
    pretrained = backbone.get("pretrained")
    if pretrained and osp.isfile(osp.join(osp.dirname(pretrained), METRICS_FILE)):
        source = read_run_metrics(osp.dirname(pretrained))
        meta.update(
            cmim_lambda=source["meta"].get("cmim_lambda"),
            pretrain_top1=source["metrics"].get("top1"),
            pretrain_top5=source["metrics"].get("top5"),
        )
    return meta


def _backend_record(cfg: Config, exported: ExportedModel | None) -> dict:
    """How the model ran: ``backend`` of the backbone (an IR runs whole in OpenVINO),
    ``precision`` (``fp32`` or ``int8_heads``), ``ir_sha256`` (of the IR files'
    digests, :func:`~cmim_dense.deploy.runtime.ir_sha256`) and ``ir`` (folder), or None."""
    if exported is not None:
        ir = dict(ir_sha256=exported.sha256(), ir=str(exported.folder))
        return dict(backend="openvino", precision=exported.precision, **ir)
    dense = cfg.model.type == "MultiTaskDense"
    backend = cfg.model.get("backbone_backend", "torch") if dense else "torch"
    return dict(backend=backend, precision="fp32", ir_sha256=None, ir=None)


def _open_ir(ir: str | os.PathLike, cfg: Config, checkpoint: str) -> ExportedModel:
    """The export folder ``ir``, refused unless made from this config and checkpoint."""
    from cmim_dense.deploy.runtime import open_export  # OpenVINO only where it runs

    return open_export(ir, cfg, checkpoint)


def _check_finite_metrics(metrics: dict, checkpoint: str) -> None:
    """Raise :class:`NonFiniteMetricError` naming the headline metrics that are NaN or inf."""
    bad = sorted(
        k
        for k, v in metrics.items()
        if "." not in k and isinstance(v, float) and not math.isfinite(v)
    )
    if bad:
        raise NonFiniteMetricError(
            f"{checkpoint}: non-finite metrics {', '.join(bad)}; the model's outputs are "
            "not usable (diverged training?), so the earlier results were kept"
        )


def _is_dump_hook(hook: object) -> bool:
    """Whether a ``custom_hooks`` entry (a Hook, or its dict with a class or a registry name,
    scoped or not) is the :class:`DensePredictionDumpHook`."""
    if isinstance(hook, Hook):
        return isinstance(hook, DensePredictionDumpHook)
    if not isinstance(hook, dict):
        return False  # mmengine's Runner refuses it, with its own message
    kind = hook.get("type")
    if isinstance(kind, str):
        return kind.rpartition(".")[2] == DensePredictionDumpHook.__name__
    return isinstance(kind, type) and issubclass(kind, DensePredictionDumpHook)


def test(
    config: str,
    checkpoint: str,
    work_dir: str | None = None,
    cfg_options: dict | None = None,
    launcher: str = "none",
    show_dir: str | None = None,
    name: str | None = None,
    ir: str | os.PathLike | None = None,
) -> tuple[Runner, dict]:
    """Evaluate ``checkpoint`` on the config's test set and write ``<work_dir>/metrics.json``.

    The checkpoint is loaded strictly: every model key present with its shape, no other key,
    no NaN/inf. ``ir``: a folder that ``cmim-dense export`` wrote from this config (with the
    same ``cfg_options``) and checkpoint; a dense model then predicts with that whole exported
    model in OpenVINO (:meth:`~cmim_dense.models.dense.MultiTaskDense.run_exported`), through
    the same resizing and metrics. Dense models also save the first test images' predictions under
    ``<work_dir>/predictions/`` (for ``tools/report.py``) and, with ``show_dir``, a
    picture per test image. Everything is staged and moved into place only when the test
    succeeded (:mod:`cmim_dense.engine.test_outputs`); ``metrics.json`` records the test set's
    identity, the backend, the precision and the IR's hash. Returns (runner, metrics).

    Raises:
        InputError: an unreadable, mismatched or non-finite checkpoint, a bad config key, a
            ``show_dir`` that is a file or holds other files than pictures; an ``ir`` that is
            not an export of this config and checkpoint, or that this CPU cannot run.
        NonFiniteMetricError: a headline metric is NaN or infinite (nothing is written).
    """
    state = read_state_dict(checkpoint)
    cfg = load_config(config, cfg_options, work_dir, launcher)
    cfg.load_from = None  # loaded strictly below, not by mmengine's lenient load
    dense = cfg.model.type == "MultiTaskDense"
    if show_dir and not dense:
        raise InputError("--show-dir draws dense predictions; this config is not a dense model")
    if show_dir:
        check_show_dir(show_dir)
    if ir is not None and not dense:
        raise InputError("--ir evaluates an exported dense model; this config is not one")
    exported = _open_ir(ir, cfg, checkpoint) if ir is not None else None
    prepare_work_dir(cfg.work_dir)
    if dense:
        hooks = list(cfg.get("custom_hooks", []))
        # a config that a test run dumped into its work dir already lists the hook
        if not any(_is_dump_hook(hook) for hook in hooks):
            hooks.append(dict(type="DensePredictionDumpHook"))
        cfg.custom_hooks = hooks
    init_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg)
    load_state_dict_strict(_model(runner), state, checkpoint, Path(config).stem)
    if exported is not None:
        _model(runner).run_exported(exported)
    outputs = TestOutputs(cfg.work_dir, show_dir)
    for hook in runner.hooks:
        if isinstance(hook, DensePredictionDumpHook):
            hook.out_dir, hook.show_dir = outputs.predictions, outputs.show_path
    try:
        metrics = runner.test()
        _check_finite_metrics(metrics, checkpoint)
        meta = run_meta(cfg)
        if not dense:
            meta.update(pretrain_top1=metrics.get("top1"), pretrain_top5=metrics.get("top5"))
        record = run_record(
            name or Path(config).stem, config, checkpoint, meta, metrics,
            test_set=test_set_identity(runner.test_dataloader.dataset),
            run=_backend_record(cfg, exported),
        )  # fmt: skip
        outputs.commit(record)
    except BaseException:
        outputs.discard()
        raise
    return runner, metrics
