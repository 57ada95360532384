"""Datasets: NYUD-v2 (real and synthetic, official format) and classification sets."""

from cmim_dense.datasets.classification import (  # noqa: F401
    CIFARClassification,
    ImageFolderClassification,
)
