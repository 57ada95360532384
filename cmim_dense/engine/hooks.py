"""Runner hooks that drive binarizer schedules."""

from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from mmengine.runner import IterBasedTrainLoop

from cmim_dense.binary.base import Binarizer


@HOOKS.register_module()
class BinarizerProgressHook(Hook):
    """Tells every :class:`Binarizer` the training progress in [0, 1].

    Epoch-based loops report ``epoch / max_epochs`` before each epoch (IR-Net's EDE
    schedule is per epoch); iteration-based loops report ``iter / max_iters`` every
    ``interval`` iterations.
    """

    priority = "NORMAL"

    def __init__(self, interval: int = 100):
        self.interval = interval

    @staticmethod
    def _set(runner, progress: float) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        for module in model.modules():
            if isinstance(module, Binarizer):
                module.set_progress(min(max(progress, 0.0), 1.0))

    def before_train_epoch(self, runner) -> None:
        if not isinstance(runner.train_loop, IterBasedTrainLoop):
            self._set(runner, runner.epoch / max(runner.max_epochs, 1))

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if isinstance(runner.train_loop, IterBasedTrainLoop) and runner.iter % self.interval == 0:
            self._set(runner, runner.iter / max(runner.max_iters, 1))
