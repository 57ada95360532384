"""mmengine extensions: hooks, config loading, train/test runs, CPU DDP, benchmarks."""

from cmim_dense.engine import distributed  # noqa: F401  (registers CPUDistributedDataParallel)
from cmim_dense.engine.checkpoint_hook import SafeCheckpointHook
from cmim_dense.engine.hooks import BinarizerProgressHook, NumClassesCheckHook
from cmim_dense.engine.prediction_dump import DensePredictionDumpHook
from cmim_dense.engine.rbnn_hook import RBNNRotationHook

__all__ = [
    "BinarizerProgressHook",
    "DensePredictionDumpHook",
    "NumClassesCheckHook",
    "RBNNRotationHook",
    "SafeCheckpointHook",
]
