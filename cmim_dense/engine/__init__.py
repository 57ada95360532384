"""mmengine extensions: hooks, the train/test launcher, benchmarks."""

from cmim_dense.engine.hooks import BinarizerProgressHook, NumClassesCheckHook
from cmim_dense.engine.prediction_dump import DensePredictionDumpHook
from cmim_dense.engine.rbnn_hook import RBNNRotationHook

__all__ = [
    "BinarizerProgressHook",
    "DensePredictionDumpHook",
    "NumClassesCheckHook",
    "RBNNRotationHook",
]
