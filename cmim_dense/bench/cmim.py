"""CMIM's overhead in a pretraining step: plain, flip critic and embed critic."""

from __future__ import annotations

import torch

from cmim_dense.bench.timing import train_step
from cmim_dense.models.classifier import BinaryImageClassifier


def cmim_steps(batch_size: int, size: int, n_nce: int = 4096, num_classes: int = 100) -> dict:
    """One training step each of a binary ResNet-18 classifier: plain, CMIM flip, CMIM embed.

    The three models have the same architecture and weights, and see the same batch
    (with fresh dataset indices every step, as in an epoch). 32x32 inputs use the CIFAR
    stem, larger ones the ImageNet stem.
    """
    stem = "cifar" if size <= 64 else "imagenet"
    backbone = dict(type="BinaryResNet", depth=18, binarizer="irnet", stem=stem)
    variants = {
        "plain": dict(cmim_lambda=0.0),
        "flip": dict(cmim_lambda=3.2, cmim=dict(critic="flip")),
        "embed": dict(cmim_lambda=3.2, cmim=dict(critic="embed", n_nce=n_nce)),
    }
    inputs = torch.randn(batch_size, 3, size, size)
    labels = torch.randint(0, num_classes, (batch_size,))
    steps = {}
    for name, kwargs in variants.items():
        torch.manual_seed(0)
        model = BinaryImageClassifier(backbone=backbone, num_classes=num_classes, **kwargs)
        counter = iter(range(10**9))

        def batch(counter=counter) -> dict:
            start = next(counter) * batch_size
            index = torch.arange(start, start + batch_size)
            return dict(inputs=inputs, label=labels, index=index)

        steps[name] = train_step(model, batch)
    return steps
