"""Metrics and report building."""

from cmim_dense.evaluation.classification import TopKAccuracy
from cmim_dense.evaluation.dense_metric import DenseMetric
from cmim_dense.evaluation.dense_visualizer import DenseLocalVisualizer
from cmim_dense.evaluation.report import read_run_metrics, write_run_metrics
from cmim_dense.utils.io import write_json_atomic

__all__ = [
    "DenseLocalVisualizer",
    "DenseMetric",
    "TopKAccuracy",
    "read_run_metrics",
    "write_json_atomic",
    "write_run_metrics",
]
