"""Backbones: the binary ResNet for mmseg, and its timm models (``bin_resnet18/34``)."""

from cmim_dense.models.backbones.bin_resnet import BinaryResNet
from cmim_dense.models.backbones.bin_resnet_timm import TimmBinaryResNet

__all__ = ["BinaryResNet", "TimmBinaryResNet"]
