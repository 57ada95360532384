"""What the GPU check's stages share: the configs, model builders, batches and timing."""

from __future__ import annotations

import copy
import gc
import itertools
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper
from torch import Tensor, nn

from cmim_dense.engine.config import build_model, enable_amp, load_config, resolve_config

# Configs shipped with the package (:func:`~cmim_dense.engine.config.resolve_config`).
PRETRAIN_CONFIG = "pretrain/imagenet_bin_r18_irnet_cmim.py"
TRANSFER_CONFIG = "nyud_deeplab_bin_r18.py"
AMP_DTYPES = ("bfloat16", "float16")
MEMORY_FORMATS = ("contiguous", "channels_last")
STAGES = ("pretrain", "transfer", "nccl", "agreement")
JSON_NAME = "gpu_check.json"
MD_NAME = "gpu_check.md"
CMIM_RTOL = 1e-4

Log = Callable[[str], None]
StepFn = Callable[[], Tensor]


def _print(line: str) -> None:
    print(line, flush=True)


NO_CUDA = "no CUDA device: the GPU check needs one"


def require_cuda() -> None:
    """Raise RuntimeError(:data:`NO_CUDA`) when torch sees no CUDA device."""
    if not torch.cuda.is_available():
        raise RuntimeError(NO_CUDA)


# -- configs and models ---------------------------------------------------------------------


def config_path(config: str | os.PathLike) -> Path:
    """``config`` as given if it is a file, else the package's config of that name."""
    return Path(resolve_config(config))


def load_cfg(config: str | os.PathLike) -> Config:
    """Read a project config with the key check."""
    return load_config(config)


def build_pretrain_model(cfg: Config, cmim: bool = True) -> nn.Module:
    """The config's classifier; ``cmim=False`` gives the same network with lambda = 0."""
    return build_model(cfg, cfg_options=None if cmim else {"model.cmim_lambda": 0.0})


def build_transfer_model(cfg: Config, freeze: bool | None = None) -> nn.Module:
    """The config's dense model without pretrained weights; SyncBN becomes BN (no process
    group here). ``freeze``: None keeps the config's setting."""
    options = {"model.backbone.pretrained": None, "model.backbone.init_cfg": None}
    if freeze is not None:
        options["model.freeze_backbone"] = freeze
    return build_model(cfg, cfg_options=options)


def optim_wrapper_cfg(cfg: Config, dtype: str | None) -> dict:
    """The config's optimizer wrapper, switched to ``AmpOptimWrapper`` with ``dtype``
    (``'bfloat16'`` / ``'float16'``) by :func:`~cmim_dense.engine.config.enable_amp`;
    ``dtype=None`` keeps the config's (fp32) wrapper."""
    cfg = Config(dict(optim_wrapper=copy.deepcopy(cfg.optim_wrapper)))
    if dtype is not None:
        enable_amp(cfg, "on")
        cfg.optim_wrapper.dtype = dtype
    return cfg.optim_wrapper.to_dict()


def training_step(
    model: nn.Module, optim_wrapper: OptimWrapper, batch: Callable[[], dict]
) -> StepFn:
    """One training step as mmengine's ``BaseModel.train_step`` does it, on a ready batch:
    forward under ``optim_context`` (autocast for AMP), ``parse_losses``, ``update_params``.
    The step returns the detached total loss (0-dim)."""
    model.train()

    def step() -> Tensor:
        with optim_wrapper.optim_context(model):
            losses = model(**batch(), mode="loss")
        loss, _ = model.parse_losses(losses)
        optim_wrapper.update_params(loss)
        return loss.detach()

    return step


def classification_batch(
    batch_size: int,
    size: int,
    num_classes: int,
    device: str | torch.device = "cuda",
    channels_last: bool = False,
) -> Callable[[], dict]:
    """Batches of the pretraining model: ``inputs`` (B, 3, size, size) float (ImageNet-
    normalised scale), ``label`` (B,) long, ``index`` (B,) long, fresh indices every call
    (as in an epoch, so the CMIM queue fills with distinct samples)."""
    inputs = torch.randn(batch_size, 3, size, size, device=device)
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    label = torch.randint(0, num_classes, (batch_size,), device=device)
    counter = itertools.count()

    def batch() -> dict:
        start = next(counter) * batch_size
        return dict(
            inputs=inputs, label=label, index=torch.arange(start, start + batch_size, device=device)
        )

    return batch


# -- timing ---------------------------------------------------------------------------------


def _sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _synced(step: StepFn, device: str | torch.device) -> Callable[[], None]:
    """``step`` that waits for the device, so wall-clock timing sees the whole step."""

    def run() -> None:
        step()
        _sync(device)

    return run


def _reset_peak(device: str | torch.device) -> None:
    """Free what earlier runs left (cycles, cached blocks), then restart the peak count."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: str | torch.device) -> float | None:
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def time_steps(
    step: StepFn, iters: int, warmup: int = 3, device: str | torch.device = "cuda"
) -> dict:
    """Run ``warmup`` untimed then ``iters`` timed calls of ``step``.

    Returns dict(step_ms: mean ms per timed step, nonfinite_losses: how many of all the
    returned losses are NaN/inf, last_loss).
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    losses = [step() for _ in range(warmup)]
    _sync(device)
    start = time.perf_counter()
    losses += [step() for _ in range(iters)]
    _sync(device)
    elapsed = time.perf_counter() - start
    stacked = torch.stack(losses).float()
    return dict(
        step_ms=elapsed / iters * 1e3,
        nonfinite_losses=int((~torch.isfinite(stacked)).sum()),
        last_loss=float(stacked[-1]),
    )


def fit_batch(
    run: Callable[[int], dict], batch_size: int, log: Log | None = None, min_batch: int = 1
) -> dict:
    """``run(batch)`` at ``batch_size``, halved on ``torch.cuda.OutOfMemoryError`` until it fits.

    Returns run's dict plus ``batch`` (the batch used), ``requested_batch`` and ``halved``.
    Raises RuntimeError when even ``min_batch`` does not fit (training BN needs 2 samples
    where a layer's output is 1x1, as in the ASPP image pooling).
    """
    batch = batch_size
    while True:
        try:
            result = run(batch)
        except torch.cuda.OutOfMemoryError:
            result = None  # leave the except block first: the traceback holds the tensors
        if result is not None:
            return dict(result, batch=batch, requested_batch=batch_size, halved=batch < batch_size)
        gc.collect()
        torch.cuda.empty_cache()
        if batch // 2 < min_batch:
            raise RuntimeError(f"out of GPU memory even at batch {batch} (requested {batch_size})")
        if log:
            log(f"  batch {batch} does not fit in GPU memory; halving to {batch // 2}")
        batch //= 2


# -- stage 1: pretraining ---------------------------------------------------------------------


def measure_throughput(
    step: StepFn, batch_size: int, iters: int, warmup: int, device: str | torch.device
) -> dict:
    """Images per second and peak memory of ``iters`` calls of a built ``step``.

    Returns dict(images_per_s, peak_memory_mib (None off CUDA), step_ms, nonfinite_losses,
    last_loss).
    """
    _reset_peak(device)
    timing = time_steps(step, iters, warmup, device)
    return dict(
        images_per_s=batch_size / timing["step_ms"] * 1e3,
        peak_memory_mib=_peak_mib(device),
        **timing,
    )
