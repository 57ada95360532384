"""The shims that make the pinned OpenMMLab stack run safely on torch 2.14.

1. ``mmcv-lite`` ships ``mmcv.ops`` without its compiled ``mmcv._ext``, and mmseg imports
   ``mmcv.ops`` at import time. When ``mmcv._ext`` is missing we register a stub module whose
   functions raise a clear error *when called*, so everything that does not need a compiled
   op (ASPP, CE, the whole of this project) works.
2. torch >= 2.6 loads checkpoints with ``weights_only=True``. mmengine's resume state holds a
   few plain-data classes (``HistoryBuffer``, numpy arrays, scalars and dtypes); we allow-list
   exactly those, so a checkpoint still can never run code. ``HistoryBuffer`` also pickles its
   statistics functions, reached through ``builtins.getattr``, which must stay refused; we save
   it without them (its ``__setstate__`` registers the defaults again).

3. mmengine writes checkpoints with ``open(path, 'wb')``, so a run killed mid-save leaves a
   partial ``iter_N.pth`` under its final name, which ``--resume`` would then pick. Its local
   file backend now writes to a temporary file in the same folder and renames it into place.

:func:`install_mmcv_ext_stub` runs when ``cmim_dense`` is imported, so that mmseg can be
imported after it; :func:`apply` (all three, idempotent) runs when :mod:`cmim_dense.registry`
is imported, which mmengine does before it builds anything in the project's scope.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

_applied = False


class MissingCompiledOpError(RuntimeError):
    """A compiled mmcv op was called while only mmcv-lite is installed."""


def _missing_op(name: str):
    def _raise(*args, **kwargs):
        raise MissingCompiledOpError(
            f"mmcv op '{name}' needs the compiled mmcv extension (mmcv._ext), but only "
            "mmcv-lite is installed. Install the full mmcv 2.1 to use it."
        )

    _raise.__name__ = name
    return _raise


def _stub_getattr(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _missing_op(name)


def _has_compiled_mmcv() -> bool:
    """Whether mmcv's compiled ``_ext`` is installed, found without importing mmcv (slow)."""
    spec = importlib.util.find_spec("mmcv")
    if spec is None or not spec.submodule_search_locations:
        return False
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return any(
        path.name.startswith("_ext") and path.name.endswith(suffixes)
        for folder in spec.submodule_search_locations
        for path in Path(folder).iterdir()
    )


def install_mmcv_ext_stub() -> bool:
    """Register a stub ``mmcv._ext`` if the compiled one is absent. Returns True if installed."""
    if "mmcv._ext" in sys.modules or _has_compiled_mmcv():
        return False
    stub = types.ModuleType("mmcv._ext")
    stub.__doc__ = "Stub installed by cmim_dense.compat: mmcv-lite has no compiled ops."
    stub.__getattr__ = _stub_getattr  # PEP 562: every op name resolves to a raising function
    # A spec without a loader keeps pkgutil.find_loader('mmcv._ext') answering None, so
    # mmengine's mmcv_full_available() (called by every Runner) still says False.
    stub.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", loader=None)
    sys.modules["mmcv._ext"] = stub
    return True


def checkpoint_safe_globals() -> list:
    """The plain-data classes that an mmengine resume checkpoint contains, and nothing else."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    dtype_classes = [type(np.dtype(t)) for t in np.sctypeDict.values()]
    return [
        HistoryBuffer,
        _reconstruct,
        scalar,
        np.ndarray,
        np.dtype,
        *dict.fromkeys(dtype_classes),
    ]


def _history_buffer_state(self) -> dict:
    return {k: v for k, v in self.__dict__.items() if k != "statistics_methods"}


def save_history_buffer_as_data() -> None:
    """Make ``HistoryBuffer`` pickle as plain data, without its statistics functions.

    mmengine's ``__getstate__`` stores them, and protocol-2 pickles reach a method through
    ``builtins.getattr``, which a ``weights_only`` load refuses (rightly: getattr on an allowed
    object can reach any code). Its ``__setstate__`` registers the default methods again, and
    custom ones register on the class when their module is imported.
    """
    from mmengine.logging.history_buffer import HistoryBuffer

    HistoryBuffer.__getstate__ = _history_buffer_state


def allow_checkpoint_globals() -> None:
    """Allow-list :func:`checkpoint_safe_globals` for ``torch.load(weights_only=True)``."""
    import torch

    torch.serialization.add_safe_globals(checkpoint_safe_globals())


def _atomic_put(self, obj: bytes, filepath) -> None:
    from cmim_dense.utils.io import write_bytes_atomic

    write_bytes_atomic(filepath, obj)


def make_local_writes_atomic() -> None:
    """Make mmengine's ``LocalBackend.put`` (checkpoints) write atomically (see module doc)."""
    from mmengine.fileio.backends.local_backend import LocalBackend

    LocalBackend.put = _atomic_put


def apply() -> None:
    """Apply the shims once."""
    global _applied
    if _applied:
        return
    install_mmcv_ext_stub()
    allow_checkpoint_globals()
    save_history_buffer_as_data()
    make_local_writes_atomic()
    _applied = True
