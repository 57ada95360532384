"""Datasets: NYUD-v2 (real and synthetic, official format) and classification sets."""

from cmim_dense.datasets.classification import CIFARClassification, ImageFolderClassification
from cmim_dense.datasets.nyud import NYUDv2Dataset, NYUDv2Dataset13
from cmim_dense.datasets.transforms import LoadDepthAnnotation, RandomResizeDepth
from cmim_dense.datasets.unlabeled import UnlabeledDataset

__all__ = [
    "CIFARClassification",
    "ImageFolderClassification",
    "LoadDepthAnnotation",
    "NYUDv2Dataset",
    "NYUDv2Dataset13",
    "RandomResizeDepth",
    "UnlabeledDataset",
]
