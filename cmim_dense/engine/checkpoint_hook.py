"""A CheckpointHook that never leaves a run without a checkpoint.

mmengine 0.10.7's ``CheckpointHook`` removes the oldest checkpoint (``max_keep_ckpts``) and the
previous best one *before* writing the new one: if that write fails (a full disk), the run is
left with fewer checkpoints than it had, possibly none. Here removals wait until the new file is
complete (checkpoints are written atomically, :mod:`cmim_dense.compat`), and a failed write
stops the run with one line while every earlier checkpoint stays on disk.
"""

from __future__ import annotations

import os.path as osp
from contextlib import contextmanager, suppress

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook

from cmim_dense.registry import HOOKS
from cmim_dense.utils.errors import InputError
from cmim_dense.utils.io import write_text_atomic


class CheckpointWriteError(InputError):
    """A checkpoint could not be written (full disk, file size limit, read-only folder)."""


class _DeferredRemovals:
    """A file backend whose ``remove``/``rmtree`` are queued until :meth:`flush`."""

    def __init__(self, backend):
        self._backend = backend
        self.queued: list[tuple[str, str]] = []

    def remove(self, path) -> None:
        self.queued.append(("remove", path))

    def rmtree(self, path) -> None:
        self.queued.append(("rmtree", path))

    def flush(self) -> None:
        for method, path in self.queued:
            getattr(self._backend, method)(path)
        self.queued.clear()

    def __getattr__(self, name):
        return getattr(self._backend, name)


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments) that saves first and prunes after.

    A write that fails with an ``OSError`` raises :class:`CheckpointWriteError` naming the
    file and the reason; no earlier checkpoint is removed, so ``--resume`` continues from the
    last one that was written. ``last_checkpoint`` is written atomically too.
    """

    _depth = 0

    @contextmanager
    def _save_then_prune(self):
        """Queue the removals made inside; run them only if every save inside succeeded."""
        outer = self._depth == 0
        if outer:
            self.file_backend = _DeferredRemovals(self.file_backend)
        self._depth += 1
        try:
            yield
            if outer:
                self.file_backend.flush()
        finally:
            self._depth -= 1
            if outer:
                self.file_backend = self.file_backend._backend

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        with self._save_then_prune():
            filename = self.filename_tmpl.format(step)
            path = self.file_backend.join_path(self.out_dir, filename)
            try:
                self._save_and_point(runner, step, meta)
            except OSError as err:
                self._repair_pointer(runner, path)
                reason = err.strerror or type(err).__name__
                raise CheckpointWriteError(
                    f"could not write checkpoint {path}: {reason}; the earlier checkpoints are "
                    f"kept (resume with --resume)"
                ) from err

    def _save_and_point(self, runner, step, meta) -> None:
        """mmengine's save, whose ``last_checkpoint`` pointer is then rewritten atomically
        (mmengine writes it with a plain ``open``, which a full disk leaves empty)."""
        super()._save_checkpoint_with_step(runner, step, meta)
        if is_main_process():
            write_text_atomic(osp.join(runner.work_dir, "last_checkpoint"), self.last_ckpt)

    @staticmethod
    def _repair_pointer(runner, path: str) -> None:
        """After a failure: a failed save leaves ``last_checkpoint`` as it was (mmengine writes
        it after the save); a failed pointer write after a complete save is retried."""
        if is_main_process() and osp.isfile(path):
            with suppress(OSError):  # the disk may still be full; the run stops anyway
                write_text_atomic(osp.join(runner.work_dir, "last_checkpoint"), path)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        with self._save_then_prune():
            try:
                super()._save_best_checkpoint(runner, metrics)
            except OSError as err:
                raise CheckpointWriteError(
                    f"could not write the best checkpoint in {self.out_dir}: "
                    f"{err.strerror or type(err).__name__}; the earlier checkpoints are kept"
                ) from err
