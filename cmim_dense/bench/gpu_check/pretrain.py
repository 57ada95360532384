"""Stage 1: the ImageNet IR-Net + CMIM classifier under AMP, in both memory formats."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

from cmim_dense.bench.gpu_check.common import (
    AMP_DTYPES,
    MEMORY_FORMATS,
    PRETRAIN_CONFIG,
    Log,
    StepFn,
    _print,
    _synced,
    build_pretrain_model,
    classification_batch,
    fit_batch,
    load_cfg,
    measure_throughput,
    optim_wrapper_cfg,
    training_step,
)
from cmim_dense.bench.gpu_check.report import _fmt_mib
from cmim_dense.bench.timing import median_step_times


def pretrain_step(
    cfg: Config,
    dtype: str | None,
    batch_size: int,
    size: int = 224,
    memory_format: str = "contiguous",
    device: str | torch.device = "cuda",
    cmim: bool = True,
) -> StepFn:
    """A training step of the config's classifier (``cmim=False``: lambda = 0) on a generated
    (batch_size, 3, size, size) batch, in ``memory_format``, AMP ``dtype`` (None: fp32)."""
    torch.manual_seed(0)
    model = build_pretrain_model(cfg, cmim).to(device)
    channels_last = memory_format == "channels_last"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    wrapper = build_optim_wrapper(model, optim_wrapper_cfg(cfg, dtype))
    batch = classification_batch(batch_size, size, cfg.model.num_classes, device, channels_last)
    return training_step(model, wrapper, batch)


def cmim_ratio(
    cfg: Config,
    dtype: str | None,
    batch_size: int,
    size: int = 224,
    memory_format: str = "contiguous",
    iters: int = 15,
    warmup: int = 3,
    device: str | torch.device = "cuda",
) -> dict:
    """CMIM step / plain step (lambda = 0, same network) under the same wrapper and batch,
    timed interleaved by :func:`~cmim_dense.bench.timing.median_step_times`.

    Returns dict(plain_step_ms, cmim_step_ms, cmim_step_ratio) (medians).
    """
    steps = {}
    for name, cmim in (("plain", False), ("cmim", True)):
        step = pretrain_step(cfg, dtype, batch_size, size, memory_format, device, cmim)
        steps[name] = _synced(step, device)
    times = median_step_times(steps, iters, warmup)
    return dict(
        plain_step_ms=times["plain"] * 1e3,
        cmim_step_ms=times["cmim"] * 1e3,
        cmim_step_ratio=times["cmim"] / times["plain"],
    )


def supported_dtypes(dtypes: Sequence[str] = AMP_DTYPES) -> tuple[list[str], dict[str, str]]:
    """(usable AMP dtypes, {skipped dtype: why}); bf16 needs an Ampere or newer GPU."""
    usable, skipped = [], {}
    for dtype in dtypes:
        if dtype == "bfloat16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            skipped[dtype] = "this GPU has no bfloat16"
        else:
            usable.append(dtype)
    return usable, skipped


def _format_runs(
    cfg: Config,
    dtype: str | None,
    batch: int,
    requested: int,
    size: int,
    iters: int,
    warmup: int,
    device: str | torch.device,
    log: Log,
) -> list[dict]:
    """Throughput of the pretraining step under ``dtype`` in each memory format, starting at
    ``batch`` and halving until it fits; later formats start at the batch that fitted."""
    name = dtype or "float32"
    runs = []
    for fmt in MEMORY_FORMATS:
        run = fit_batch(
            lambda b, fmt=fmt: measure_throughput(
                pretrain_step(cfg, dtype, b, size, fmt, device), b, iters, warmup, device
            ),
            batch,
            log,
        )
        batch = run["batch"]
        run.update(dtype=name, memory_format=fmt, requested_batch=requested)
        run["halved"] = batch < requested  # counted from the requested batch
        runs.append(run)
        log(
            f"[pretrain] {name} {fmt} batch {run['batch']}: {run['images_per_s']:.0f} img/s, "
            f"peak {_fmt_mib(run['peak_memory_mib'])}, non-finite losses "
            f"{run['nonfinite_losses']}"
        )
    return runs


def pretrain_stage(
    config: str = PRETRAIN_CONFIG,
    batch_size: int = 256,
    size: int = 224,
    iters: int = 30,
    warmup: int = 3,
    dtypes: Sequence[str | None] = AMP_DTYPES,
    ratio_iters: int = 15,
    device: str | torch.device = "cuda",
    log: Log = _print,
) -> dict:
    """Stage 1: throughput, peak memory and CMIM overhead of pretraining under each AMP dtype.

    Every dtype runs ``iters`` steps in each memory format (the faster is kept for that
    dtype) and the CMIM / plain ratio in the kept format. ``dtypes`` entries are AMP dtypes,
    or None for fp32 (CPU tests).

    Returns dict(config, size, iters, requested_batch, runs: one dict per (dtype, format),
    amp: {dtype: the kept run + the ratio}, skipped: {dtype: why}, nonfinite_losses).
    """
    cfg = load_cfg(config)
    amp_dtypes, skipped = supported_dtypes([d for d in dtypes if d is not None])
    run_dtypes = [d for d in dtypes if d is None or d in amp_dtypes]
    figures: dict = dict(
        config=config,
        size=size,
        iters=iters,
        requested_batch=batch_size,
        runs=[],
        amp={},
        skipped=skipped,
    )
    batch = batch_size
    for dtype in run_dtypes:
        name = dtype or "float32"
        runs = _format_runs(cfg, dtype, batch, batch_size, size, iters, warmup, device, log)
        batch = runs[-1]["batch"]
        figures["runs"] += runs
        kept = max(runs, key=lambda r: r["images_per_s"])
        ratio = fit_batch(
            lambda b, dtype=dtype, fmt=kept["memory_format"]: cmim_ratio(
                cfg, dtype, b, size, fmt, ratio_iters, warmup, device
            ),
            batch,
            log,
        )
        batch = ratio["batch"]
        figures["amp"][name] = dict(
            kept,
            ratio_batch=ratio["batch"],
            **{k: ratio[k] for k in ("plain_step_ms", "cmim_step_ms", "cmim_step_ratio")},
        )
        log(
            f"[pretrain] {name}: keeps {kept['memory_format']}; CMIM step / plain step "
            f"{ratio['cmim_step_ratio']:.3f} at batch {ratio['batch']}"
        )
    figures["nonfinite_losses"] = sum(r["nonfinite_losses"] for r in figures["runs"])
    return figures


# -- stage 2: transfer ----------------------------------------------------------------------


def default_amp_dtype() -> str:
    """bfloat16 where the GPU has it, else float16."""
    usable, _ = supported_dtypes()
    return usable[0]
