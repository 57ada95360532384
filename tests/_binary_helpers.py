"""Helpers shared by the binarizer tests: every method with trained-like parameters, gradients of
a function, and a two-epoch toy Runner over one BinaryConv2d for hooks that act during training."""

from __future__ import annotations

from pathlib import Path

import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

from cmim_dense.binary import BinaryConv2d, list_binarizers

# Every registered method; threshold_shift on Bi-Real with a shifted threshold.
METHODS = {
    name: dict(type="threshold_shift", base="bireal", theta=0.2)
    if name == "threshold_shift"
    else name
    for name in list_binarizers()
}


def block_of(name: str) -> str:
    """The backbone block a method comes with (RPReLU for ReActNet, Maxout for AdaBin)."""
    return name if name in ("react", "adabin") else "basic"


def trained_like(module: nn.Module, seed: int, negative_spread: bool = False) -> None:
    """Non-trivial binarizer parameters and BN statistics, as after training: thresholds and
    shifts away from 0, AdaBin sets away from {-1, +1}, RPReLU/Maxout slopes, BN stats."""
    gen = torch.Generator().manual_seed(seed)

    def rand(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(t.shape, generator=gen) * (hi - lo) + lo

    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("threshold", "act_shift", "weight_shift", "shift_in", "shift_out"):
                p.copy_(rand(p, -0.3, 0.3))
            elif leaf == "alpha_a":
                p.fill_(-0.7 if negative_spread else 0.7)
            elif leaf == "beta_a":
                p.fill_(0.2)
            elif leaf in ("pos_scale", "neg_scale"):
                p.copy_(rand(p, 0.1, 1.5))
            elif "mapping" in name:  # LNS's binarization network, not at its zero start
                p.copy_(rand(p, -0.5, 0.5))
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(rand(m.running_mean, -0.2, 0.2))
                m.running_var.copy_(rand(m.running_var, 0.5, 2.0))
                m.weight.copy_(rand(m.weight, 0.5, 1.5))
                m.bias.copy_(rand(m.bias, -0.1, 0.1))


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
