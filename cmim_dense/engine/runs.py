"""Training and evaluation runs of any project config through the mmengine Runner."""

from __future__ import annotations

import math
import os.path as osp
from pathlib import Path

from mmengine.config import Config
from mmengine.dist import is_main_process
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner, find_latest_checkpoint

from cmim_dense.engine.config import enable_amp, load_config
from cmim_dense.engine.distributed import init_cpu_distributed
from cmim_dense.evaluation.report import METRICS_FILE, read_run_metrics, write_run_metrics
from cmim_dense.utils.checkpoint import (
    check_finite,
    check_state_dict,
    load_state_dict_strict,
    nonfinite_ok_keys,
    read_state_dict,
)
from cmim_dense.utils.errors import InputError


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
) -> Runner:
    """Train any config of the project; returns the finished Runner.

    ``resume``: None (start anew), ``'auto'`` (the latest checkpoint in the work dir, if any)
    or a checkpoint path. The checkpoint is read safely and checked key by key against the
    model, and for NaN/inf values, before training starts.
    """
    cfg = load_config(config, cfg_options, work_dir, launcher)
    enable_amp(cfg, amp)
    checkpoint = None
    if resume == "auto":
        checkpoint = find_latest_checkpoint(cfg.work_dir) if osp.isdir(cfg.work_dir) else None
    elif resume:
        checkpoint = resume
    if checkpoint:
        state = read_state_dict(checkpoint)
        cfg.resume, cfg.load_from = True, checkpoint
    init_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg)
    if checkpoint:
        model = _model(runner)
        check_state_dict(model.state_dict(), state, checkpoint, Path(config).stem)
        check_finite(state, checkpoint, nonfinite_ok_keys(model))
    runner.train()
    return runner


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


def test(
    config: str,
    checkpoint: str,
    work_dir: str | None = None,
    cfg_options: dict | None = None,
    launcher: str = "none",
    show_dir: str | None = None,
    name: str | None = None,
) -> tuple[Runner, dict]:
    """Evaluate ``checkpoint`` on the config's test set and write ``<work_dir>/metrics.json``.

    The checkpoint is loaded strictly: every model key present with its shape, no other key.
    Dense models also save the first test images' predictions under
    ``<work_dir>/predictions/`` (for ``tools/report.py``) and, with ``show_dir``, a
    picture per test image. Returns (runner, metrics).

    Raises:
        InputError: an unreadable or mismatched checkpoint, a bad config key.
        NonFiniteMetricError: a headline metric is NaN or infinite (nothing is written).
    """
    state = read_state_dict(checkpoint)
    cfg = load_config(config, cfg_options, work_dir, launcher)
    cfg.load_from = None  # loaded strictly below, not by mmengine's lenient load
    if cfg.model.type == "MultiTaskDense":
        hooks = list(cfg.get("custom_hooks", []))
        hooks.append(dict(type="DensePredictionDumpHook", show_dir=show_dir))
        cfg.custom_hooks = hooks
    elif show_dir:
        raise InputError("--show-dir draws dense predictions; this config is not a dense model")
    init_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg)
    load_state_dict_strict(_model(runner), state, checkpoint, Path(config).stem)
    metrics = runner.test()
    bad = sorted(
        k
        for k, v in metrics.items()
        if "." not in k and isinstance(v, float) and not math.isfinite(v)
    )
    if bad:
        raise NonFiniteMetricError(
            f"{checkpoint}: non-finite metrics {', '.join(bad)}; the model's outputs are not "
            "usable (diverged training?), so no metrics.json was written"
        )
    if is_main_process():
        meta = run_meta(cfg)
        if cfg.model.type != "MultiTaskDense":
            meta.update(pretrain_top1=metrics.get("top1"), pretrain_top5=metrics.get("top5"))
        write_run_metrics(
            cfg.work_dir, name or Path(config).stem, config, checkpoint, meta, metrics
        )
    return runner, metrics
