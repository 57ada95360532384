"""Metrics and report building."""

from cmim_dense.evaluation.dense_metric import DenseMetric  # noqa: F401  (re-export)
from cmim_dense.evaluation.io import write_json_atomic  # noqa: F401  (re-export)
from cmim_dense.evaluation.report import read_run_metrics, write_run_metrics  # noqa: F401
