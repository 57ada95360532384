"""mmengine extensions: hooks."""

from cmim_dense.engine.hooks import BinarizerProgressHook, NumClassesCheckHook
from cmim_dense.engine.rbnn_hook import RBNNRotationHook

__all__ = ["BinarizerProgressHook", "NumClassesCheckHook", "RBNNRotationHook"]
