"""Helpers shared by the binarizer tests: gradients of a function, and a two-epoch toy Runner
over one BinaryConv2d for hooks that act during training."""

from __future__ import annotations

from pathlib import Path

import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

from cmim_dense.binary import BinaryConv2d


def grad_of(fn, x: torch.Tensor, upstream: torch.Tensor | None = None) -> torch.Tensor:
    """d sum(upstream * fn(x)) / dx."""
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    y.backward(torch.ones_like(y) if upstream is None else upstream)
    return x.grad


class ToyBinaryNet(BaseModel):
    """One BinaryConv2d (2 in, ``out_channels`` out, ``kernel`` x ``kernel``); calls
    ``record(conv)`` at every training step so a test can see what the hooks set."""

    def __init__(self, binarizer: str, out_channels: int, kernel: int, record) -> None:
        super().__init__()
        self.conv = BinaryConv2d(2, out_channels, kernel, padding=kernel // 2, binarizer=binarizer)
        self.record = record

    def forward(self, inputs, data_samples=None, mode="tensor"):
        out = self.conv(inputs)
        if mode == "loss":
            self.record(self.conv)
            return dict(loss=out.pow(2).mean())
        return out


class _ToyImages(Dataset):
    """Four constant (2, size, size) images with values -1.5, -0.5, 0.5 and 1.5."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        return dict(inputs=torch.full((2, self.size, self.size), float(i) - 1.5))


def train_toy(
    model: ToyBinaryNet, work_dir: Path, custom_hooks: list[dict], lr: float, image_size: int
) -> None:
    """Two epochs of two iterations (batch 2, no shuffling) with SGD at ``lr``."""
    runner = Runner(
        model=model,
        work_dir=str(work_dir),
        experiment_name=work_dir.name,
        train_dataloader=dict(
            dataset=_ToyImages(image_size),
            sampler=dict(type="DefaultSampler", shuffle=False),
            batch_size=2,
            collate_fn=dict(type="default_collate"),
        ),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=lr)),
        train_cfg=dict(by_epoch=True, max_epochs=2),
        default_hooks=dict(checkpoint=None, logger=None),
        custom_hooks=custom_hooks,
        default_scope=None,  # a DefaultScope would outlive the test and redirect later builds
    )
    runner.train()
