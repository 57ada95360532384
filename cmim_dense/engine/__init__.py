"""mmengine extensions: hooks."""

from cmim_dense.engine.hooks import BinarizerProgressHook

__all__ = ["BinarizerProgressHook"]
