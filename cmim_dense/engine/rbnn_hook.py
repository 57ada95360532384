"""The runner hook that re-solves RBNN's rotation matrices on a schedule."""

from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import IterBasedTrainLoop
from torch import nn

from cmim_dense.binary.rbnn import RBNNBinarizer
from cmim_dense.engine.hooks import trained_binary_convs
from cmim_dense.registry import HOOKS


@HOOKS.register_module()
class RBNNRotationHook(Hook):
    """Calls :meth:`RBNNBinarizer.update_rotation` for every RBNN layer of the model.

    As in the public RBNN code, the rotations are re-solved before the first iteration of
    every ``epoch_interval``-th epoch (epoch-based loops) or every ``iter_interval``
    iterations (iteration-based loops), with ``num_steps`` alternating B / R1 / R2 steps.
    Every rank computes the same update from the same weights, so no communication is needed.

    Args:
        epoch_interval: epochs between updates in epoch-based loops (paper: 1).
        iter_interval: iterations between updates in iteration-based loops.
        num_steps: alternating-optimisation steps per update (public code: 3).
    """

    priority = "NORMAL"

    def __init__(self, epoch_interval: int = 1, iter_interval: int = 1000, num_steps: int = 3):
        if min(epoch_interval, iter_interval, num_steps) < 1:
            raise ValueError("epoch_interval, iter_interval and num_steps must all be >= 1")
        self.epoch_interval = epoch_interval
        self.iter_interval = iter_interval
        self.num_steps = num_steps

    def update(self, model: nn.Module) -> int:
        """Update the trained (not frozen) RBNN layers of ``model``; returns how many."""
        count = 0
        for conv in trained_binary_convs(model):
            for binarizer in conv.binarizer.modules():
                if isinstance(binarizer, RBNNBinarizer):
                    binarizer.update_rotation(conv.weight, self.num_steps)
                    count += 1
        return count

    def _model(self, runner) -> nn.Module:
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def before_train_epoch(self, runner) -> None:
        if not isinstance(runner.train_loop, IterBasedTrainLoop) and (
            runner.epoch % self.epoch_interval == 0
        ):
            self.update(self._model(runner))

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if isinstance(runner.train_loop, IterBasedTrainLoop) and (
            runner.iter % self.iter_interval == 0
        ):
            self.update(self._model(runner))
