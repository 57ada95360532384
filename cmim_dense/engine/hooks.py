"""Runner hooks that drive binarizer schedules."""

from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import IterBasedTrainLoop
from torch import nn

from cmim_dense.binary.conv import BinaryConv2d
from cmim_dense.registry import HOOKS
from cmim_dense.utils.errors import InputError


def trained_binary_convs(model: nn.Module) -> list[BinaryConv2d]:
    """The binary convs of ``model`` whose weights are trained (not frozen)."""
    return [m for m in model.modules() if isinstance(m, BinaryConv2d) and m.weight.requires_grad]


@HOOKS.register_module()
class BinarizerProgressHook(Hook):
    """Tells the binarizer of every trained binary conv the training progress in [0, 1].

    Epoch-based loops report ``epoch / max_epochs`` before each epoch (IR-Net's EDE
    schedule is per epoch); iteration-based loops report ``iter / max_iters`` every
    ``interval`` iterations. The binarizers keep their schedule state in buffers, so a
    resumed run continues exactly where the checkpoint left it. A conv whose weight is
    frozen (a transferred backbone) is left alone, so it leaves training bit-identical.
    """

    priority = "NORMAL"

    def __init__(self, interval: int = 100):
        self.interval = interval

    @staticmethod
    def _set(runner, progress: float) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        for conv in trained_binary_convs(model):
            conv.binarizer.set_progress(min(max(progress, 0.0), 1.0))

    def before_train_epoch(self, runner) -> None:
        if not isinstance(runner.train_loop, IterBasedTrainLoop):
            self._set(runner, runner.epoch / max(runner.max_epochs, 1))

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if isinstance(runner.train_loop, IterBasedTrainLoop) and runner.iter % self.interval == 0:
            self._set(runner, runner.iter / max(runner.max_iters, 1))


@HOOKS.register_module()
class NumClassesCheckHook(Hook):
    """Fails early, with a clear message, when the model's ``num_classes`` is not the dataset's.

    It reads ``num_classes`` of the segmentation head (dense models) or of the model
    (classifiers). Without it a mismatch shows up only as an index error deep inside the loss
    (or, on GPU, a device-side assert). Label-free datasets (no ``classes``) are not checked.
    """

    priority = "VERY_HIGH"

    @staticmethod
    def _check(runner, dataset) -> None:
        classes = (getattr(dataset, "metainfo", None) or {}).get("classes")
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        owner = getattr(model, "seg_head", None) or model
        num_classes = getattr(owner, "num_classes", None)
        if classes is None or num_classes is None:
            return
        if len(classes) != num_classes:
            raise InputError(
                f"config mismatch: the model has num_classes={num_classes} but the "
                f"dataset {type(dataset).__name__} has {len(classes)} classes; set "
                f"num_classes={len(classes)} in the model's config"
            )

    def before_train(self, runner) -> None:
        self._check(runner, runner.train_loop.dataloader.dataset)

    def before_val(self, runner) -> None:
        self._check(runner, runner.val_loop.dataloader.dataset)

    def before_test(self, runner) -> None:
        self._check(runner, runner.test_loop.dataloader.dataset)
