"""Stage 3: a one-process NCCL training run through torchrun."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cmim_dense.bench.gpu_check.common import (
    PRETRAIN_CONFIG,
    Log,
    _print,
    config_path,
)


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


TRAIN_MODULE = "cmim_dense.cli.train"


def dist_train_command(
    config: str | os.PathLike, work_dir: str | os.PathLike, options: dict, port: int = 29500
) -> list[str]:
    """torchrun with one process on the package's train command (what ``tools/dist_train.sh``
    runs): ``CONFIG --launcher pytorch --work-dir DIR --cfg-options k=v ...``."""
    values = [f"{k}={'None' if v is None else v}" for k, v in options.items()]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1"]
    torchrun += [f"--master_port={port}", "-m", TRAIN_MODULE]
    train = [str(config), "--launcher", "pytorch", "--work-dir", str(work_dir)]
    return [*torchrun, *train, "--cfg-options", *values]


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
        cmd = dist_train_command(config, work_dir, options, _free_port())
        returncode, output = _run_process_group(cmd, dict(os.environ), timeout_s)
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
