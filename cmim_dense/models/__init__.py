"""Models: binary ResNet backbones, the pretraining classifier, the dense multi-task model."""

from cmim_dense.models.backbones import BinaryResNet
from cmim_dense.models.classifier import BinaryImageClassifier
from cmim_dense.models.data_preprocessor import DenseDataPreProcessor
from cmim_dense.models.dense import MultiTaskDense
from cmim_dense.models.heads import DepthASPPHead, DepthDepthwiseSeparableASPPHead
from cmim_dense.models.s2bnn import S2BNNClassifier

__all__ = [
    "BinaryImageClassifier",
    "BinaryResNet",
    "DenseDataPreProcessor",
    "DepthASPPHead",
    "DepthDepthwiseSeparableASPPHead",
    "MultiTaskDense",
    "S2BNNClassifier",
]
