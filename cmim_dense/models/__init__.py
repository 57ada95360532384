"""Models: binary ResNet backbones, the pretraining classifier, the dense multi-task model."""

from cmim_dense.models.backbones import BinaryResNet, CheckpointMismatchError

__all__ = ["BinaryResNet", "CheckpointMismatchError"]
