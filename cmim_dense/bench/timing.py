"""Interleaved step timing, and the training steps and batches the benchmarks time.

Variants are timed *interleaved* (one step of each in turn, the order rotating every
round), so drift in machine load hits all of them alike; we report medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample
from torch import nn

StepFn = Callable[[], None]


def median_step_times(steps: dict[str, StepFn], iters: int = 15, warmup: int = 3) -> dict:
    """Median seconds per call of each step function, timed interleaved.

    Args:
        steps: name -> a function that runs one full training step.
        iters: timed rounds (at least 10).
        warmup: untimed rounds first (allocator, caches, the CMIM bank filling up).
    """
    if iters < 10:
        raise ValueError(f"take at least 10 timed iterations, got {iters}")
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(iters):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def train_step(model: nn.Module, batch: Callable[[], dict]) -> StepFn:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    model.train()

    def step() -> None:
        loss, _ = model.parse_losses(model(**batch(), mode="loss"))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def dense_batch(
    batch_size: int, height: int, width: int, num_classes: int, device: str | torch.device = "cpu"
) -> Callable[[], dict]:
    """Batches of the dense model: ``inputs`` (B, 3, H, W) and ``data_samples`` with
    ``gt_sem_seg`` (1, H, W) class ids and ``gt_depth_map`` (1, H, W) metres in [0.5, 5.5]."""
    samples = []
    for _ in range(batch_size):
        sample = SegDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width)))
        sample.set_data(
            dict(
                gt_sem_seg=PixelData(data=torch.randint(0, num_classes, (1, height, width))),
                gt_depth_map=PixelData(data=torch.rand(1, height, width) * 5 + 0.5),
            )
        )
        samples.append(sample.to(device))
    inputs = torch.randn(batch_size, 3, height, width, device=device)
    return lambda: dict(inputs=inputs, data_samples=samples)
