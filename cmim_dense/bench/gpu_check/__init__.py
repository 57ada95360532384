"""The five-minute GPU check: AMP, channels_last, NCCL, throughput and memory of the real configs.

Stages (each a function returning a plain dict of figures; units are in the key names:
``_ms`` milliseconds, ``_s`` seconds, ``_mib`` MiB of ``torch.cuda.max_memory_allocated``,
``images_per_s`` images per second):

1. :func:`pretrain_stage`: the ImageNet IR-Net + CMIM classifier at 224x224, batch 256 (halved
   until it fits), under each AMP dtype through mmengine's ``AmpOptimWrapper``, in the
   contiguous and the channels_last memory format (the faster is kept), and the CMIM step /
   plain step ratio (:func:`~cmim_dense.bench.timing.median_step_times`).
2. :func:`transfer_stage`: the NYUD DeepLab model at 480x640, output stride 8, batch 8, with
   AMP; the frozen step / fine-tune step ratio and the time of the config's full schedule.
3. :func:`nccl_stage`: 10 iterations of one NCCL process through ``tools/dist_train.sh`` on a
   generated ImageFolder tree.
4. :func:`agreement_stage`: one fixed batch in fp32 on the GPU against the CPU: binary conv
   outputs exactly equal, the CMIM loss within 1e-4 relative.

:func:`run_gpu_check` runs them and :func:`write_report` writes ``gpu_check.json`` (every
figure) and ``gpu_check.md`` (one table). Data is random tensors of the real shapes.
"""

from __future__ import annotations

import gc
import os
import platform
import time
import traceback
from collections.abc import Sequence
from datetime import datetime, timezone

import torch

from cmim_dense.bench.gpu_check.agreement import agreement_stage, capture_binary_convs
from cmim_dense.bench.gpu_check.common import (
    AMP_DTYPES,
    JSON_NAME,
    MD_NAME,
    NO_CUDA,
    PRETRAIN_CONFIG,
    STAGES,
    TRANSFER_CONFIG,
    Log,
    _print,
    build_pretrain_model,
    build_transfer_model,
    classification_batch,
    config_path,
    fit_batch,
    load_cfg,
    measure_throughput,
    optim_wrapper_cfg,
    require_cuda,
    time_steps,
    training_step,
)
from cmim_dense.bench.gpu_check.nccl import (
    TRAIN_MODULE,
    dist_train_command,
    nccl_cfg_options,
    nccl_stage,
    write_image_folder,
)
from cmim_dense.bench.gpu_check.pretrain import cmim_ratio, pretrain_stage, pretrain_step
from cmim_dense.bench.gpu_check.report import write_report
from cmim_dense.bench.gpu_check.transfer import transfer_ratio, transfer_stage, transfer_step
from cmim_dense.bench.timing import dense_batch

# -- the whole check and its report -----------------------------------------------------------


def environment(device: str | torch.device = "cuda") -> dict:
    """GPU name, torch / CUDA / cuDNN versions, host and start time."""
    cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    props = torch.cuda.get_device_properties(device) if cuda else None
    return dict(
        gpu=torch.cuda.get_device_name(device) if cuda else None,
        gpu_memory_mib=props.total_memory / 2**20 if props else None,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if cuda else None,
        nccl=_nccl_version() if cuda else None,
        python=platform.python_version(),
        host=platform.node(),
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _nccl_version() -> str | None:
    try:
        version = torch.cuda.nccl.version()
    except Exception:  # builds without NCCL
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def checks(figures: dict) -> dict[str, bool]:
    """Pass/fail of every check whose stage ran: ``finite_losses`` (pretraining and transfer
    losses), then, in stage order, ``nccl``, ``agreement`` and any stage that raised (False)."""
    out = {}
    losses = [figures[s].get("nonfinite_losses") for s in ("pretrain", "transfer") if s in figures]
    if any(v is not None for v in losses):
        out["finite_losses"] = all(v == 0 for v in losses if v is not None)
    for stage in STAGES:
        data = figures.get(stage)
        if data is not None and "error" in data:
            out[stage] = False
        elif data is not None and "passed" in data:
            out[stage] = bool(data["passed"])
    return out


def run_gpu_check(
    out_dir: str | os.PathLike,
    stages: Sequence[str] = STAGES,
    pretrain_batch: int = 256,
    transfer_batch: int = 8,
    iters: int = 30,
    device: str = "cuda",
    log: Log = _print,
) -> dict:
    """Run ``stages`` in order; rewrite the report after each, so an interrupted run keeps
    what finished. A stage that raises is recorded as ``{'error': ...}`` and the rest still
    run. Returns every figure (``checks`` and ``passed`` included)."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    if torch.device(device).type == "cuda":
        require_cuda()
    figures: dict = dict(environment=environment(device))
    env = figures["environment"]
    log(
        f"GPU check on {env.get('gpu')} (torch {env.get('torch')}, CUDA {env.get('cuda')}) "
        f"-> {out_dir}"
    )
    runners = dict(
        pretrain=lambda: pretrain_stage(
            batch_size=pretrain_batch, iters=iters, device=device, log=log
        ),
        transfer=lambda: transfer_stage(
            batch_size=transfer_batch, iters=iters, device=device, log=log
        ),
        nccl=lambda: nccl_stage(out_dir, log=log),
        agreement=lambda: agreement_stage(device=device, log=log),
    )
    start = time.perf_counter()
    for stage in (s for s in STAGES if s in stages):
        stage_start = time.perf_counter()
        try:
            figures[stage] = runners[stage]()
        except Exception as err:  # a failed stage is a finding; the others still run
            figures[stage] = dict(
                error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc()
            )
            log(f"[{stage}] error: {type(err).__name__}: {err}\n{traceback.format_exc()}")
        figures[stage]["seconds"] = time.perf_counter() - stage_start
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        figures["seconds"] = time.perf_counter() - start
        figures["checks"] = checks(figures)
        figures["passed"] = all(figures["checks"].values())
        write_report(figures, out_dir)
    return figures


__all__ = [
    "AMP_DTYPES",
    "JSON_NAME",
    "MD_NAME",
    "NO_CUDA",
    "PRETRAIN_CONFIG",
    "STAGES",
    "TRAIN_MODULE",
    "TRANSFER_CONFIG",
    "_nccl_version",
    "agreement_stage",
    "build_pretrain_model",
    "build_transfer_model",
    "capture_binary_convs",
    "checks",
    "classification_batch",
    "cmim_ratio",
    "config_path",
    "dense_batch",
    "dist_train_command",
    "environment",
    "fit_batch",
    "load_cfg",
    "measure_throughput",
    "nccl_cfg_options",
    "nccl_stage",
    "optim_wrapper_cfg",
    "pretrain_stage",
    "pretrain_step",
    "run_gpu_check",
    "time_steps",
    "training_step",
    "transfer_ratio",
    "transfer_stage",
    "transfer_step",
    "write_image_folder",
    "write_report",
]
