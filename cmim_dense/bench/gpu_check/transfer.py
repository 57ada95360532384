"""Stage 2: the NYUD DeepLab model at 480x640 with AMP; frozen against fine-tuned."""

from __future__ import annotations

import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

from cmim_dense.bench.gpu_check.common import (
    TRANSFER_CONFIG,
    Log,
    StepFn,
    _print,
    _synced,
    build_transfer_model,
    fit_batch,
    load_cfg,
    measure_throughput,
    optim_wrapper_cfg,
    training_step,
)
from cmim_dense.bench.gpu_check.pretrain import default_amp_dtype
from cmim_dense.bench.gpu_check.report import _fmt_mib
from cmim_dense.bench.timing import dense_batch, median_step_times


def transfer_step(
    cfg: Config,
    dtype: str | None,
    batch_size: int,
    height: int = 480,
    width: int = 640,
    device: str | torch.device = "cuda",
    freeze: bool | None = None,
) -> StepFn:
    """A training step of the config's dense model (``freeze``: None keeps the config's
    setting) on a generated (batch_size, 3, height, width) batch, AMP ``dtype`` (None: fp32)."""
    torch.manual_seed(0)
    model = build_transfer_model(cfg, freeze).to(device)
    wrapper = build_optim_wrapper(model, optim_wrapper_cfg(cfg, dtype))
    batch = dense_batch(batch_size, height, width, _seg_classes(cfg), device)
    return training_step(model, wrapper, batch)


def transfer_ratio(
    cfg: Config,
    dtype: str | None,
    batch_size: int,
    height: int = 480,
    width: int = 640,
    iters: int = 10,
    warmup: int = 3,
    device: str | torch.device = "cuda",
) -> dict:
    """Frozen-backbone step / fine-tuning step, timed interleaved (medians).

    Returns dict(frozen_step_ms, finetune_step_ms, frozen_finetune_ratio).
    """
    steps = {
        name: _synced(transfer_step(cfg, dtype, batch_size, height, width, device, freeze), device)
        for name, freeze in (("frozen", True), ("finetune", False))
    }
    times = median_step_times(steps, iters, warmup)
    return dict(
        frozen_step_ms=times["frozen"] * 1e3,
        finetune_step_ms=times["finetune"] * 1e3,
        frozen_finetune_ratio=times["frozen"] / times["finetune"],
    )


def _seg_classes(cfg: Config) -> int:
    return cfg.model.seg_head.num_classes if cfg.model.get("seg_head") else 1


def transfer_stage(
    config: str = TRANSFER_CONFIG,
    batch_size: int = 8,
    height: int = 480,
    width: int = 640,
    iters: int = 30,
    warmup: int = 3,
    dtype: str | None = "auto",
    ratio_iters: int = 10,
    device: str | torch.device = "cuda",
    log: Log = _print,
) -> dict:
    """Stage 2: the dense model's throughput and memory with AMP, frozen / fine-tune ratio,
    and the hours of the config's full schedule (``train_cfg.max_iters``) at that rate.

    ``dtype``: ``'auto'`` (bf16 where supported, else fp16), an AMP dtype, or None (fp32).
    """
    cfg = load_cfg(config)
    if dtype == "auto":
        dtype = default_amp_dtype()
    run = fit_batch(
        lambda b: measure_throughput(
            transfer_step(cfg, dtype, b, height, width, device), b, iters, warmup, device
        ),
        batch_size,
        log,
        min_batch=2,
    )
    max_iters = int(cfg.train_cfg.get("max_iters", 0)) or None
    full_run_h = max_iters * run["step_ms"] / 1e3 / 3600 if max_iters else None
    log(
        f"[transfer] {dtype or 'float32'} batch {run['batch']} at {height}x{width}: "
        f"{run['images_per_s']:.1f} img/s, peak {_fmt_mib(run['peak_memory_mib'])}"
        + (f", {max_iters} iterations take {full_run_h:.2f} h" if max_iters else "")
    )
    ratio = fit_batch(
        lambda b: transfer_ratio(cfg, dtype, b, height, width, ratio_iters, warmup, device),
        run["batch"],
        log,
        min_batch=2,
    )
    log(f"[transfer] frozen step / fine-tune step {ratio['frozen_finetune_ratio']:.3f}")
    return dict(
        config=config,
        dtype=dtype or "float32",
        height=height,
        width=width,
        output_stride=cfg.model.backbone.get("output_stride"),
        freeze_backbone=bool(cfg.model.get("freeze_backbone", True)),
        iters=iters,
        **run,
        ratio_batch=ratio["batch"],
        **{k: ratio[k] for k in ("frozen_step_ms", "finetune_step_ms", "frozen_finetune_ratio")},
        max_iters=max_iters,
        full_run_h=full_run_h,
    )


# -- stage 3: NCCL through tools/dist_train.sh ------------------------------------------------
