"""The five-minute GPU check: AMP, channels_last, NCCL, throughput and memory of the real configs.

Stages (each a function returning a plain dict of figures; units are in the key names:
``_ms`` milliseconds, ``_s`` seconds, ``_mib`` MiB of ``torch.cuda.max_memory_allocated``,
``images_per_s`` images per second):

1. :func:`pretrain_stage`: the ImageNet IR-Net + CMIM classifier at 224x224, batch 256 (halved
   until it fits), under each AMP dtype through mmengine's ``AmpOptimWrapper``, in the
   contiguous and the channels_last memory format (the faster is kept), and the CMIM step /
   plain step ratio (:func:`~cmim_dense.engine.benchmark.median_step_times`).
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

import contextlib
import copy
import gc
import itertools
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import OptimWrapper, build_optim_wrapper
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from PIL import Image
from torch import Tensor, nn

from cmim_dense.binary import BinaryConv2d
from cmim_dense.engine.benchmark import dense_batch, median_step_times
from cmim_dense.engine.config import enable_amp
from cmim_dense.utils.io import write_json_atomic, write_text_atomic

REPO = Path(__file__).resolve().parents[2]
PRETRAIN_CONFIG = "configs/pretrain/imagenet_bin_r18_irnet_cmim.py"
TRANSFER_CONFIG = "configs/nyud_deeplab_bin_r18.py"
DIST_TRAIN = "tools/dist_train.sh"
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
    """``config`` as given if it exists, else relative to the repository root."""
    path = Path(config)
    return path if path.is_file() or path.is_absolute() else REPO / path


def load_cfg(config: str | os.PathLike) -> Config:
    """Read a project config in the mmseg scope (registries imported)."""
    init_default_scope("mmseg")
    return Config.fromfile(str(config_path(config)))


def build_pretrain_model(cfg: Config, cmim: bool = True) -> nn.Module:
    """The config's classifier; ``cmim=False`` gives the same network with lambda = 0."""
    init_default_scope("mmseg")
    model_cfg = copy.deepcopy(cfg.model.to_dict())
    if not cmim:
        model_cfg["cmim_lambda"] = 0.0
    return MODELS.build(model_cfg)


def build_transfer_model(cfg: Config, freeze: bool | None = None) -> nn.Module:
    """The config's dense model without pretrained weights or data preprocessor; SyncBN
    becomes BN (no process group here). ``freeze``: None keeps the config's setting."""
    init_default_scope("mmseg")
    model_cfg = copy.deepcopy(cfg.model.to_dict())
    if freeze is not None:
        model_cfg["freeze_backbone"] = freeze
    model_cfg.pop("data_preprocessor", None)
    model_cfg["backbone"] = dict(model_cfg["backbone"], pretrained=None, init_cfg=None)
    return revert_sync_batchnorm(MODELS.build(model_cfg))


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
    timed interleaved by :func:`~cmim_dense.engine.benchmark.median_step_times`.

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
        runs = []
        for fmt in MEMORY_FORMATS:
            run = fit_batch(
                lambda b, dtype=dtype, fmt=fmt: measure_throughput(
                    pretrain_step(cfg, dtype, b, size, fmt, device), b, iters, warmup, device
                ),
                batch,
                log,
            )
            # later runs start at the batch that fitted; halved counts from the requested one
            batch = run["batch"]
            run.update(dtype=name, memory_format=fmt, requested_batch=batch_size)
            run["halved"] = batch < batch_size
            runs.append(run)
            log(
                f"[pretrain] {name} {fmt} batch {run['batch']}: {run['images_per_s']:.0f} img/s, "
                f"peak {_fmt_mib(run['peak_memory_mib'])}, non-finite losses "
                f"{run['nonfinite_losses']}"
            )
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


def write_image_folder(
    root: str | os.PathLike, num_images: int, num_classes: int, size: int = 64, seed: int = 0
) -> Path:
    """ImageNet's layout, ``root/train/class_<c>/<i>.jpg``: ``num_images`` random RGB JPEGs of
    ``size`` x ``size``, image i in class i % num_classes; returns ``root``."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for i in range(num_images):
        folder = root / "train" / f"class_{i % num_classes}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


def nccl_cfg_options(
    data_root: str | os.PathLike,
    batch_size: int,
    num_classes: int,
    backend: str = "nccl",
    img_size: int | None = None,
) -> dict:
    """``--cfg-options`` that point the ImageNet config at a generated ImageFolder tree for
    one epoch of (images / batch_size) iterations, without validation or checkpoints, with a
    log record every iteration."""
    options = {
        "train_dataloader.dataset.data_root": str(data_root),
        "train_dataloader.batch_size": batch_size,
        "train_dataloader.num_workers": 2,
        "train_dataloader.persistent_workers": False,
        "train_cfg.max_epochs": 1,
        "model.num_classes": num_classes,
        "val_dataloader": None,
        "val_cfg": None,
        "val_evaluator": None,
        "default_hooks.checkpoint": None,
        "default_hooks.logger.interval": 1,
        "env_cfg.dist_cfg.backend": backend,
    }
    if img_size is not None:
        options["train_dataloader.dataset.img_size"] = img_size
    return options


def dist_train_command(
    config: str | os.PathLike, work_dir: str | os.PathLike, options: dict
) -> list[str]:
    """``bash tools/dist_train.sh CONFIG 1 --work-dir DIR --cfg-options k=v ...`` (one process)."""
    values = [f"{k}={'None' if v is None else v}" for k, v in options.items()]
    cmd = ["bash", str(REPO / DIST_TRAIN), str(config), "1", "--work-dir", str(work_dir)]
    return [*cmd, "--cfg-options", *values]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_process_group(cmd: list[str], env: dict, timeout_s: float) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group; on timeout kill the whole group (torchrun's
    workers too). Returns (exit code or None on timeout, stdout + stderr)."""
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out


def train_records(work_dir: str | os.PathLike) -> list[dict]:
    """The training-iteration records (those with a ``loss``) of ``<work_dir>/*/vis_data/
    scalars.json``, oldest first."""
    records = []
    for path in sorted(Path(work_dir).glob("*/vis_data/scalars.json")):
        lines = path.read_text().splitlines()
        records += [r for r in map(json.loads, lines) if "loss" in r]
    return records


def nccl_stage(
    out_dir: str | os.PathLike,
    config: str = PRETRAIN_CONFIG,
    iters: int = 10,
    batch_size: int = 8,
    num_classes: int = 4,
    backend: str = "nccl",
    img_size: int | None = None,
    timeout_s: float = 150.0,
    log: Log = _print,
) -> dict:
    """Stage 3: ``bash tools/dist_train.sh CONFIG 1`` for ``iters`` iterations on a generated
    ImageFolder tree (``iters * batch_size`` random JPEGs), with ``backend`` (``'gloo'``
    runs it on CPU).

    Passes when the run exits 0 within ``timeout_s`` seconds and logged ``iters`` finite
    losses. With one process, torch's SyncBatchNorm and the CMIM all_gather
    (:mod:`cmim_dense.losses.dist_utils`) skip their collectives (world size 1); the run checks
    the launcher, NCCL start-up and the DDP wrapping. Logs go to ``<out_dir>/nccl_run``.

    Returns dict(passed, returncode (None on timeout), seconds, iterations, losses,
    command, output_tail (on failure)).
    """
    work_dir = Path(out_dir).resolve() / "nccl_run"
    config = str(config_path(config))
    shutil.rmtree(work_dir, ignore_errors=True)  # train_records reads every run in it
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_data_") as tmp:
        root = write_image_folder(Path(tmp), iters * batch_size, num_classes)
        options = nccl_cfg_options(root, batch_size, num_classes, backend, img_size)
        cmd = dist_train_command(config, work_dir, options)
        env = dict(
            os.environ,
            PORT=str(_free_port()),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        returncode, output = _run_process_group(cmd, env, timeout_s)
    seconds = time.perf_counter() - start
    records = train_records(work_dir) if work_dir.is_dir() else []
    losses = [r["loss"] for r in records]
    finite = all(isinstance(v, int | float) and math.isfinite(v) for v in losses)
    passed = returncode == 0 and len(records) == iters and finite
    figures = dict(
        passed=passed,
        backend=backend,
        returncode=returncode,
        timed_out=returncode is None,
        seconds=seconds,
        iterations=len(records),
        expected_iterations=iters,
        batch=batch_size,
        losses=losses,
        work_dir=str(work_dir),
        command=" ".join(cmd),
    )
    if not passed:
        figures["output_tail"] = output[-4000:]
    status = "passed" if passed else "FAILED" + (" (timeout)" if returncode is None else "")
    log(
        f"[nccl] dist_train.sh with 1 process ({backend}): {status}, {len(records)}/{iters} "
        f"iterations in {seconds:.0f} s"
    )
    return figures


# -- stage 4: CPU / GPU agreement -------------------------------------------------------------


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """fp32 matmuls and convolutions in full fp32 (no TF32) inside the block."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def capture_binary_convs(
    model: nn.Module, inputs: Tensor, label: Tensor, index: Tensor
) -> tuple[dict[str, float], list[tuple[Tensor, Tensor]]]:
    """One fp32 ``mode='loss'`` forward (no grad) recording every BinaryConv2d.

    Returns (the loss terms as floats, [(input (N, C_in, H, W), output (N, C_out, H', W'))
    on the CPU, one per binary conv in ``model.modules()`` order]).
    """
    records: list[tuple[Tensor, Tensor]] = []

    def hook(module, args, output) -> None:
        records.append((args[0].detach().cpu(), output.detach().cpu()))

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, BinaryConv2d)
    ]
    try:
        with torch.no_grad():
            losses = model(inputs, label, index, mode="loss")
    finally:
        for handle in handles:
            handle.remove()
    return {k: float(v) for k, v in losses.items()}, records


def _binary_convs(model: nn.Module) -> list[BinaryConv2d]:
    return [m for m in model.modules() if isinstance(m, BinaryConv2d)]


def compare_same_input(
    cpu_layers: Sequence[BinaryConv2d],
    dev_layers: Sequence[BinaryConv2d],
    cpu_convs: Sequence[tuple[Tensor, Tensor]],
) -> dict:
    """Run every device conv on the input its CPU twin saw (``cpu_convs`` from
    :func:`capture_binary_convs`) and compare with the CPU output, bit for bit.

    Where one differs on CUDA it is run again without cuDNN (whose Winograd and FFT
    algorithms are not exact even on integer data), which tells cuDNN's algorithm choice from
    a binarization difference. Returns dict(same_input_equal, same_input_max_abs_diff,
    same_input_equal_without_cudnn (None when not needed), binary_weights_equal).
    """
    equal, weights, diff, mismatched = 0, 0, 0.0, []
    with torch.no_grad():
        for i, (cpu_conv, conv, (x, y)) in enumerate(zip(cpu_layers, dev_layers, cpu_convs)):
            weights += int(torch.equal(conv.binary_weight().cpu(), cpu_conv.binary_weight()))
            out = conv(x.to(conv.weight.device)).cpu()
            if torch.equal(out, y):
                equal += 1
            else:
                mismatched.append(i)
                diff = max(diff, float((out - y).abs().max()))
        without_cudnn = None
        if mismatched and dev_layers[0].weight.is_cuda:
            with torch.backends.cudnn.flags(enabled=False, allow_tf32=False):
                without_cudnn = equal + sum(
                    torch.equal(dev_layers[i](cpu_convs[i][0].cuda()).cpu(), cpu_convs[i][1])
                    for i in mismatched
                )
    return dict(
        same_input_equal=equal,
        same_input_max_abs_diff=diff,
        same_input_equal_without_cudnn=without_cudnn,
        binary_weights_equal=weights,
    )


def agreement_stage(
    config: str = PRETRAIN_CONFIG,
    batch_size: int = 8,
    size: int = 224,
    seed: int = 0,
    device: str | torch.device = "cuda",
    rtol: float = CMIM_RTOL,
    log: Log = _print,
) -> dict:
    """Stage 4: one fixed batch through the config's CMIM classifier in fp32 (TF32 off) on the
    CPU and on ``device``, same weights (train mode, as in a training step).

    Binary conv outputs are sums of +-1 products times per-channel powers of two, exact in
    fp32, so they must be equal bit for bit. ``same_input``: every device conv run on the
    CPU forward's input to that conv (the check). ``full_forward``: the convs of the two
    forwards compared as they ran; a real-valued layer before a binary conv can round a
    near-zero activation to the other sign (``sign_flips``, IR-Net binarizes at 0), which
    then differs downstream, so this part is reported, not required. The CMIM loss
    (``loss_cmim``) must agree within ``rtol`` relative.

    Returns dict(passed, layers, :func:`compare_same_input`'s figures,
    full_forward_equal, full_forward_max_abs_diff, sign_flips, binary_inputs,
    loss_cmim_cpu, loss_cmim_device, loss_cmim_rel_diff, loss_cls_rel_diff, ...).
    """
    cfg = load_cfg(config)
    torch.manual_seed(seed)
    cpu_model = build_pretrain_model(cfg)
    dev_model = build_pretrain_model(cfg)
    dev_model.load_state_dict(cpu_model.state_dict())
    dev_model.to(device)
    cpu_model.train()
    dev_model.train()
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch_size, 3, size, size, generator=gen)
    label = torch.randint(0, cfg.model.num_classes, (batch_size,), generator=gen)
    index = torch.arange(batch_size)
    with no_tf32():
        cpu_losses, cpu_convs = capture_binary_convs(cpu_model, inputs, label, index)
        dev_losses, dev_convs = capture_binary_convs(
            dev_model, inputs.to(device), label.to(device), index.to(device)
        )
        same = compare_same_input(_binary_convs(cpu_model), _binary_convs(dev_model), cpu_convs)
    full_equal, full_diff, flips, total = 0, 0.0, 0, 0
    for (cx, cy), (dx, dy) in zip(cpu_convs, dev_convs):
        full_equal += int(torch.equal(cy, dy))
        full_diff = max(full_diff, float((cy - dy).abs().max()))
        flips += int(((cx > 0) != (dx > 0)).sum())
        total += cx.numel()
    layers = len(cpu_convs)

    def rel(key: str) -> float | None:
        if key not in cpu_losses:
            return None
        return abs(cpu_losses[key] - dev_losses[key]) / max(abs(cpu_losses[key]), 1e-12)

    cmim_rel = rel("loss_cmim")
    passed = (
        layers == len(dev_convs) > 0
        and same["same_input_equal"] == layers
        and cmim_rel is not None
        and cmim_rel <= rtol
    )
    figures = dict(
        passed=passed,
        config=config,
        device=str(device),
        batch=batch_size,
        size=size,
        layers=layers,
        **same,
        full_forward_equal=full_equal,
        full_forward_max_abs_diff=full_diff,
        sign_flips=flips,
        binary_inputs=total,
        loss_cmim_cpu=cpu_losses.get("loss_cmim"),
        loss_cmim_device=dev_losses.get("loss_cmim"),
        loss_cmim_rel_diff=cmim_rel,
        loss_cls_rel_diff=rel("loss_cls"),
        rtol=rtol,
    )
    log(
        f"[agreement] binary convs equal on the same input: {same['same_input_equal']}/{layers}, "
        f"in the full forward: {full_equal}/{layers} ({flips} sign flips); loss_cmim rel diff "
        f"{_fmt_num(cmim_rel, '.2e')}: {'passed' if passed else 'FAILED'}"
    )
    return figures


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


def _fmt_num(value, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def _fmt_mib(value) -> str:
    return "n/a" if value is None else f"{value:,.0f} MiB"


def _batch_note(run: dict) -> str:
    if run.get("halved"):
        return f"batch {run['batch']} (halved from {run['requested_batch']} to fit)"
    return f"batch {run['batch']}"


def _pretrain_rows(p: dict) -> list[tuple[str, str, str]]:
    rows = []
    for run in p.get("runs", []):
        kept = p.get("amp", {}).get(run["dtype"], {}).get("memory_format") == run["memory_format"]
        rows.append(
            (
                "pretrain",
                f"{run['dtype']}, {run['memory_format']}{' (kept)' if kept else ''}, "
                f"{_batch_note(run)}, {p['size']}x{p['size']}",
                f"{run['images_per_s']:,.0f} img/s, peak {_fmt_mib(run['peak_memory_mib'])}",
            )
        )
    for dtype, amp in p.get("amp", {}).items():
        rows.append(
            (
                "pretrain",
                f"{dtype}, CMIM step / plain step, batch {amp['ratio_batch']}",
                f"{amp['cmim_step_ratio']:.3f} ({amp['cmim_step_ms']:.1f} / "
                f"{amp['plain_step_ms']:.1f} ms)",
            )
        )
    for dtype, why in p.get("skipped", {}).items():
        rows.append(("pretrain", dtype, f"skipped: {why}"))
    if "nonfinite_losses" in p:
        rows.append(("pretrain", "non-finite losses", str(p["nonfinite_losses"])))
    return rows


def _transfer_rows(t: dict) -> list[tuple[str, str, str]]:
    size = f"{t['height']}x{t['width']}, output stride {t['output_stride']}"
    frozen = "frozen backbone" if t["freeze_backbone"] else "fine-tuned backbone"
    rows = [
        (
            "transfer",
            f"{t['dtype']}, {_batch_note(t)}, {size}, {frozen}",
            f"{t['images_per_s']:,.1f} img/s, peak {_fmt_mib(t['peak_memory_mib'])}",
        ),
        (
            "transfer",
            f"frozen step / fine-tune step, batch {t['ratio_batch']}",
            f"{t['frozen_finetune_ratio']:.3f} ({t['frozen_step_ms']:.1f} / "
            f"{t['finetune_step_ms']:.1f} ms)",
        ),
    ]
    if t.get("max_iters"):
        rows.append(
            (
                "transfer",
                f"full {t['max_iters']:,}-iteration run at batch {t['batch']}",
                f"{t['full_run_h']:.2f} h",
            )
        )
    rows.append(("transfer", "non-finite losses", str(t["nonfinite_losses"])))
    return rows


def _nccl_rows(n: dict) -> list[tuple[str, str, str]]:
    if n["passed"]:
        result = "passed"
    elif n["timed_out"]:
        result = "FAILED: timed out"
    else:
        result = f"FAILED: exit code {n['returncode']}"
    return [
        (
            "nccl",
            f"tools/dist_train.sh, 1 process, {n['backend']}, batch {n['batch']} (world size 1: "
            "SyncBN and the CMIM all_gather run no collective)",
            f"{result}, {n['iterations']}/{n['expected_iterations']} iterations in "
            f"{n['seconds']:.0f} s",
        )
    ]


def _agreement_rows(a: dict) -> list[tuple[str, str, str]]:
    where = f"fp32, batch {a['batch']} at {a['size']}x{a['size']}, CPU vs {a['device']}"
    return [
        (
            "agreement",
            f"binary conv outputs, same input ({where})",
            f"{a['same_input_equal']}/{a['layers']} exactly equal" + _mismatch_note(a),
        ),
        (
            "agreement",
            "binary conv outputs, full forward",
            f"{a['full_forward_equal']}/{a['layers']} exactly equal, {a['sign_flips']} sign "
            f"flips in {a['binary_inputs']:,} binary inputs",
        ),
        (
            "agreement",
            f"CMIM loss (within {a['rtol']:g} relative)",
            f"CPU {_fmt_num(a['loss_cmim_cpu'], '.6f')}, "
            f"{a['device']} {_fmt_num(a['loss_cmim_device'], '.6f')}, "
            f"rel diff {_fmt_num(a['loss_cmim_rel_diff'], '.2e')}: "
            f"{'passed' if a['passed'] else 'FAILED'}",
        ),
    ]


def _mismatch_note(a: dict) -> str:
    if a["same_input_equal"] == a["layers"]:
        return ""
    note = f" (max abs diff {a['same_input_max_abs_diff']:.3g}"
    if a.get("same_input_equal_without_cudnn") is not None:
        note += f"; {a['same_input_equal_without_cudnn']}/{a['layers']} equal without cuDNN"
    return note + f"; binary weights {a['binary_weights_equal']}/{a['layers']} equal)"


_ROWS = dict(
    pretrain=_pretrain_rows, transfer=_transfer_rows, nccl=_nccl_rows, agreement=_agreement_rows
)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(figures: dict) -> str:
    """``gpu_check.md``: the environment, then one "stage | setting | figure" table."""
    env = figures.get("environment", {})
    passed = figures.get("passed")
    lines = [
        "# GPU check",
        "",
        f"- GPU: {env.get('gpu') or 'n/a'}"
        + (f" ({env['gpu_memory_mib']:,.0f} MiB)" if env.get("gpu_memory_mib") else ""),
        f"- torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, "
        f"NCCL {env.get('nccl')}",
        f"- started {env.get('started')}, took {_fmt_num(figures.get('seconds'), '.0f')} s",
        "- result: "
        + ("all checks passed" if passed else "FAILED")
        + "".join(f"; {k} {'ok' if v else 'FAILED'}" for k, v in figures.get("checks", {}).items()),
        "",
        "| stage | setting | figure |",
        "| --- | --- | --- |",
    ]
    details = []
    for stage in STAGES:
        data = figures.get(stage)
        if data is None:
            continue
        rows = [(stage, "error", data["error"])] if "error" in data else _ROWS[stage](data)
        if "seconds" in data:
            rows.append((stage, "stage time", f"{data['seconds']:.0f} s"))
        lines += [f"| {' | '.join(_cell(c) for c in row)} |" for row in rows]
        if data.get("output_tail"):
            details += ["", f"## {stage}: end of the output", "", "```", data["output_tail"], "```"]
    lines += details
    return "\n".join(lines) + "\n"


def write_report(figures: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<out_dir>/gpu_check.json`` (every figure) and ``<out_dir>/gpu_check.md``
    atomically; returns their paths."""
    out_dir = Path(out_dir)
    json_path = write_json_atomic(out_dir / JSON_NAME, figures)
    md_path = write_text_atomic(out_dir / MD_NAME, render_markdown(figures))
    return json_path, md_path
