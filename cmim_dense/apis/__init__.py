"""Inference for users: segmentation and depth of images, folders and videos, with a trained
dense model in PyTorch, with its backbone in OpenVINO, or as a whole exported model."""

from cmim_dense.apis.inferencer import DenseInferencer, DenseResult
from cmim_dense.apis.run import infer_to_folder

__all__ = ["DenseInferencer", "DenseResult", "infer_to_folder"]
