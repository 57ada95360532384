"""Config loading and Runner start-up shared by ``tools/train.py`` and ``tools/test.py``."""

from __future__ import annotations

import argparse
import datetime
import os.path as osp
from pathlib import Path

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.dist import is_main_process
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS
from mmengine.runner import Runner

from cmim_dense.evaluation.report import METRICS_FILE, read_run_metrics, write_run_metrics


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The options that ``tools/train.py`` and ``tools/test.py`` share."""
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config keys")
    parser.add_argument("--launcher", default="none", choices=["none", "pytorch", "slurm", "mpi"])
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0)


def load_config(
    config: str,
    cfg_options: dict | None = None,
    work_dir: str | None = None,
    launcher: str = "none",
) -> Config:
    """Read ``config``, apply ``--cfg-options`` and choose the work dir.

    The work dir is, by priority: ``work_dir``, the config's ``work_dir``,
    ``work_dirs/<config name>``.
    """
    if not osp.isfile(config):
        raise FileNotFoundError(f"config file not found: {config}")
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", Path(config).stem)
    return cfg


def enable_amp(cfg: Config, amp: str) -> None:
    """Switch the optimizer wrapper to mixed precision.

    ``amp``: ``'auto'`` (on when CUDA is available), ``'on'`` or ``'off'``.
    """
    if amp not in ("auto", "on", "off"):
        raise ValueError(f"amp must be auto, on or off, got {amp!r}")
    use = amp == "on" or (amp == "auto" and torch.cuda.is_available())
    if not use:
        return
    wrapper = cfg.optim_wrapper
    if wrapper.get("type", "OptimWrapper") == "AmpOptimWrapper":
        return
    if wrapper.get("type", "OptimWrapper") != "OptimWrapper":
        raise ValueError(f"AMP needs an OptimWrapper, the config has {wrapper.type}")
    wrapper.type = "AmpOptimWrapper"
    wrapper.setdefault("loss_scale", "dynamic")


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """MMDistributedDataParallel for CPU processes: SyncBN layers become BN first.

    torch's SyncBatchNorm needs CUDA (DDP refuses it on CPU), so this does what the Runner
    does for a non-distributed run; each process then keeps its own BN statistics.
    """

    def __init__(self, module: torch.nn.Module, **kwargs):
        super().__init__(module=revert_sync_batchnorm(module), **kwargs)


def init_cpu_distributed(cfg: Config) -> None:
    """Start the torchrun process group of a ``--launcher pytorch`` run without CUDA.

    mmengine 0.10.7's pytorch launcher calls ``torch.cuda.set_device`` and wraps the model in
    DDP with ``device_ids=[LOCAL_RANK]``; both fail on CPU. A group started here makes the
    Runner skip its own ``init_dist``, and :class:`CPUDistributedDataParallel` without
    ``device_ids`` gives CPU DDP.
    """
    if cfg.launcher != "pytorch" or torch.cuda.is_available():
        return
    dist_cfg = cfg.get("env_cfg", {}).get("dist_cfg", {})
    backend = dist_cfg.get("backend", "nccl")
    if backend == "nccl":
        raise ValueError(
            "NCCL needs CUDA; for CPU processes add --cfg-options env_cfg.dist_cfg.backend=gloo"
        )
    if not dist.is_initialized():
        timeout = dist_cfg.get("timeout")
        kwargs = dict(timeout=datetime.timedelta(seconds=timeout)) if timeout else {}
        dist.init_process_group(backend=backend, **kwargs)
    cfg.setdefault(
        "model_wrapper_cfg",
        dict(
            type="CPUDistributedDataParallel",
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get("find_unused_parameters", False),
        ),
    )


def train(
    config: str,
    work_dir: str | None = None,
    resume: str | None = None,
    amp: str = "auto",
    cfg_options: dict | None = None,
    launcher: str = "none",
) -> Runner:
    """Train any config of the project; returns the finished Runner.

    ``resume``: None (start anew), ``'auto'`` (the latest checkpoint in the work dir)
    or a checkpoint path.
    """
    cfg = load_config(config, cfg_options, work_dir, launcher)
    enable_amp(cfg, amp)
    if resume == "auto":
        cfg.resume = True
        cfg.load_from = None
    elif resume:
        cfg.resume = True
        cfg.load_from = resume
    init_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg)
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

    Dense models also save the first test images' predictions under
    ``<work_dir>/predictions/`` (for ``tools/report.py``) and, with ``show_dir``, a
    picture per test image. Returns (runner, metrics).
    """
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    cfg = load_config(config, cfg_options, work_dir, launcher)
    cfg.load_from = checkpoint
    if cfg.model.type == "MultiTaskDense":
        hooks = list(cfg.get("custom_hooks", []))
        hooks.append(dict(type="DensePredictionDumpHook", show_dir=show_dir))
        cfg.custom_hooks = hooks
    elif show_dir:
        raise ValueError("--show-dir draws dense predictions; this config is not a dense model")
    init_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    if is_main_process():
        meta = run_meta(cfg)
        if cfg.model.type != "MultiTaskDense":
            meta.update(pretrain_top1=metrics.get("top1"), pretrain_top5=metrics.get("top5"))
        write_run_metrics(
            cfg.work_dir, name or Path(config).stem, config, checkpoint, meta, metrics
        )
    return runner, metrics
