"""One pretrain -> transfer chain: pretrain a backbone, evaluate it, transfer it frozen to the
dense tasks, evaluate that. Each run is skipped when already evaluated and resumed when cut."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmengine.runner import find_latest_checkpoint

from cmim_dense.engine.runs import test, train
from cmim_dense.evaluation.report import METRICS_FILE, read_run_metrics
from cmim_dense.utils.errors import InputError


@dataclass
class StageTimer:
    """Wall-clock seconds of named stages, in order, with a log line as each one starts."""

    start: float = field(default_factory=time.perf_counter)
    stages: list[dict] = field(default_factory=list)

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:6.0f} s] {message}", flush=True)

    def run(self, stage: str, job: Callable, *args, **kwargs) -> Any:
        """Run ``job(*args, **kwargs)`` as ``stage``; returns its result."""
        self.log(stage)
        begin = time.perf_counter()
        result = job(*args, **kwargs)
        self.stages.append(dict(stage=stage, seconds=time.perf_counter() - begin))
        return result


def data_options(root: Path, splits: tuple[str, ...]) -> dict:
    """``--cfg-options`` pointing the datasets of ``splits`` at ``root``."""
    return {f"{split}_dataloader.dataset.data_root": str(root) for split in splits}


def last_checkpoint(work_dir: Path) -> Path:
    """The checkpoint a finished training run left in ``work_dir``."""
    found = find_latest_checkpoint(str(work_dir))
    if not found:
        raise InputError(f"{work_dir} has no checkpoint after training")
    return Path(found)


def train_and_test(
    config: Path, work_dir: Path, options: dict, name: str, timer: StageTimer
) -> dict:
    """Train (resuming a cut run) and evaluate, unless ``work_dir`` is already evaluated;
    returns the run's ``metrics.json`` record."""
    if (work_dir / METRICS_FILE).is_file():
        timer.log(f"{name}: already evaluated in {work_dir}")
        return read_run_metrics(work_dir)
    timer.run(f"{name}: train", train, str(config), str(work_dir), "auto", "auto", options)
    checkpoint = str(last_checkpoint(work_dir))
    timer.run(f"{name}: test", test, str(config), checkpoint, str(work_dir), options, name=name)
    return read_run_metrics(work_dir)


def run_chain(
    pretrain_config: Path,
    transfer_config: Path,
    pretrain_dir: Path,
    transfer_dir: Path,
    roots: tuple[Path, Path],
    name: str,
    timer: StageTimer,
    pretrain_options: dict | None = None,
    transfer_options: dict | None = None,
) -> dict:
    """Pretrain on the crops, then transfer the frozen backbone to the NYUD tree.

    ``roots``: (NYUD tree, ImageFolder of crops). Returns ``dict(pretrain=record,
    transfer=record)`` of the two ``metrics.json`` records.
    """
    nyud_root, crops_root = roots
    options = {**data_options(crops_root, ("train", "test")), **(pretrain_options or {})}
    pretrain = train_and_test(pretrain_config, pretrain_dir, options, f"pretrain_{name}", timer)
    options = transfer_cfg_options(nyud_root, pretrain_dir, transfer_options)
    transfer = train_and_test(transfer_config, transfer_dir, options, name, timer)
    return dict(pretrain=pretrain, transfer=transfer)


def transfer_cfg_options(nyud_root: Path, pretrain_dir: Path, extra: dict | None = None) -> dict:
    """The transfer's ``--cfg-options`` in a chain: the NYUD tree, the pretrained backbone of
    ``pretrain_dir``, then ``extra``. An export of the transfer model is identified by its
    resolved config, so whatever runs that export again must pass these same options."""
    return {
        **data_options(nyud_root, ("train", "test")),
        "model.backbone.pretrained": str(last_checkpoint(pretrain_dir)),
        **(extra or {}),
    }
