"""Backbones."""

from cmim_dense.models.backbones.bin_resnet import BinaryResNet, CheckpointMismatchError

__all__ = ["BinaryResNet", "CheckpointMismatchError"]
