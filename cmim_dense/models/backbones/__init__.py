"""Backbones."""

from cmim_dense.models.backbones.bin_resnet import BinaryResNet

__all__ = ["BinaryResNet"]
