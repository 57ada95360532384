"""The pretraining classifier: a binary ResNet with its classifier, CE + lambda * CMIM."""

from __future__ import annotations

from typing import NamedTuple

import timm
import torch
import torch.nn.functional as F
from mmengine.dist import broadcast, is_distributed
from mmengine.model import BaseModel
from torch import Tensor, nn

from cmim_dense.binary import ActivationTaps
from cmim_dense.binary.lns import LNSBinarizer, lns_noisy_label_loss
from cmim_dense.registry import MODELS
from cmim_dense.utils.checkpoint import load_state_dict_strict, read_state_dict
from cmim_dense.utils.errors import InputError


def build_teacher(
    arch: str,
    checkpoint: str,
    num_classes: int,
    prefix: str = "",
    mlp_hidden: int | None = None,
) -> nn.Module:
    """A frozen real-valued timm network with weights from ``checkpoint`` (never executes code).

    Args:
        arch: timm architecture name, e.g. ``'resnet18'``.
        checkpoint: a local file (state dict, optionally under ``state_dict``).
        prefix: keep only keys under this prefix, with it removed.
        mlp_hidden: replace the classifier by Linear(F, mlp_hidden)-ReLU-Linear(mlp_hidden,
            num_classes), the projection head of MoCo v2 / SimCLR checkpoints (``fc.0``,
            ``fc.2`` keys for a ResNet), before loading.
    """
    teacher = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    if mlp_hidden:
        name = teacher.pretrained_cfg.get("classifier", "fc")
        if "." in name:
            raise InputError(f"mlp_hidden needs a top-level classifier; {arch} has {name!r}")
        head = [nn.Linear(teacher.num_features, mlp_hidden), nn.ReLU(inplace=True)]
        setattr(teacher, name, nn.Sequential(*head, nn.Linear(mlp_hidden, num_classes)))
    state = read_state_dict(checkpoint, prefix or None)
    load_state_dict_strict(teacher, state, checkpoint, f"the {arch} teacher")
    teacher.requires_grad_(False)
    # mmengine's init_weights() calls the init_weights() of every child not marked initialised,
    # and timm networks have one: without this the Runner would re-randomise the teacher.
    teacher.is_init = True
    return teacher.eval()


CMIM_SOURCES = ("taps", "teacher")


class TrainForward(NamedTuple):
    """What one training forward gives the losses.

    logits: (N, num_classes) of the binary network.
    pairs: CMIM's K pairs (a_F, a_B), each (N, D_k) (None when CMIM is off).
    teacher_logits: (N, num_classes) of the frozen teacher (None without one).
    """

    logits: Tensor
    pairs: list[tuple[Tensor, Tensor]] | None
    teacher_logits: Tensor | None


def _refresh_tap_schedule(model: BinaryImageClassifier, incompatible_keys) -> None:
    """After a checkpoint load: the Python copies of the tap schedule follow the buffers."""
    model._tap_seed, model._tap_step = int(model.tap_seed), int(model.tap_step)


@MODELS.register_module()
class BinaryImageClassifier(BaseModel):
    """Image classifier for BNN pretraining with CMIM, in one forward pass.

    loss = CE(logits, label) + lambda * CMIM(pairs) [+ distill loss(teacher, student)]
           [+ lns_weight * LNS noisy-label loss]

    The network is one :class:`~cmim_dense.models.BinaryResNet` with its own classifier (timm's
    layout), so a checkpoint's ``backbone.*`` keys load into ``timm.create_model`` as they are.

    CMIM pairs come from ``cmim_source``:
        ``'taps'`` (the paper): (a_F, a_B) of the tapped binary convs, read by activation taps
            during the *same* backbone forward that produces the logits (a_B = sign(a_F));
        ``'teacher'`` (the public code's CRD recipe): one pair, the frozen float teacher's
            pooled last feature as a_F and the binary network's as a_B (needs ``teacher`` and
            the ``'embed'`` critic, since the two widths differ).
    With ``cmim_lambda == 0`` no tap is attached and the model is exactly the plain classifier.

    Args:
        backbone: config of a :class:`~cmim_dense.models.BinaryResNet` (its ``num_classes``
            is set here).
        num_classes: number of classes.
        cmim_lambda: lambda of Eq. 14, on the paper's scale.
        cmim: config of :class:`~cmim_dense.losses.CMIMLoss` (``in_dims`` is filled in).
        cmim_source: ``'taps'`` or ``'teacher'`` (see above).
        tap_mode: ``'stage'`` (one tap per stage, default), ``'all'`` binary convs or ``'last'``.
        tap_reduce: ``'sample'`` (default: the same tap_size^2 positions of a_F and a_B, which
            keeps Eq. 11) or ``'avgpool'`` (pooled to tap_size x tap_size); see
            :class:`~cmim_dense.binary.ActivationTaps`.
        tap_size: taps keep tap_size^2 positions per channel.
        teacher: optional ``dict(arch=..., checkpoint=..., prefix='')`` of a real-valued timm
            network (frozen), for ``distill`` and/or ``cmim_source='teacher'``.
        distill: config of a distillation loss between teacher and student logits (ReActNet /
            S2-BNN recipe); ``loss_weight`` in it scales it. None: no distillation.
        lns_weight: weight of LNS's noisy-label loss of the binarization networks
            (:func:`~cmim_dense.binary.lns.lns_noisy_label_loss`), logged as ``loss_lns``;
            needs ``binarizer='lns'``. 0 (default) leaves the classifier unchanged.
        data_preprocessor: mmengine data preprocessor config.

    Batches are dicts ``inputs`` (N, 3, H, W) float, ``label`` (N,) long,
    ``index`` (N,) long (dataset indices, for the CMIM bank).
    """

    def __init__(
        self,
        backbone: dict,
        num_classes: int,
        cmim_lambda: float = 0.0,
        cmim: dict | None = None,
        cmim_source: str = "taps",
        tap_mode: str = "stage",
        tap_reduce: str = "sample",
        tap_size: int = 4,
        teacher: dict | None = None,
        distill: dict | None = None,
        lns_weight: float = 0.0,
        data_preprocessor: dict | None = None,
        init_cfg: dict | None = None,
    ):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if cmim_source not in CMIM_SOURCES:
            raise InputError(f"cmim_source must be one of {CMIM_SOURCES}, got {cmim_source!r}")
        if (distill or cmim_source == "teacher") and not teacher:
            raise InputError("distill and cmim_source='teacher' need a teacher network")
        self.backbone = MODELS.build(dict(backbone, num_classes=num_classes))
        self.num_classes = num_classes
        self.teacher = build_teacher(num_classes=num_classes, **teacher) if teacher else None
        self.distill = MODELS.build(distill) if distill else None
        self.cmim_lambda = float(cmim_lambda)
        self.cmim_source = cmim_source
        self.cmim = None
        self.taps = None
        if self.cmim_lambda > 0:
            if cmim_source == "taps":
                self.taps = ActivationTaps(
                    self.backbone.tap_layers(tap_mode), reduce=tap_reduce, size=tap_size
                )
                in_dims = self.taps.dims()
                # Sampled tap positions are a function of (seed, step), kept in the checkpoint,
                # so a resumed run draws what the uninterrupted run drew.
                seed = torch.tensor(torch.initial_seed() % 2**31)
                if is_distributed():  # every rank samples the positions of rank 0
                    broadcast(seed, src=0)
                self.register_buffer("tap_seed", seed)
                self.register_buffer("tap_step", torch.tensor(0))
                # Python copies, so a step never waits for the device to read the buffers back.
                self._tap_seed, self._tap_step = int(self.tap_seed), 0
                self.register_load_state_dict_post_hook(_refresh_tap_schedule)
            else:
                in_dims = [(self.teacher.num_features, self.backbone.num_features)]
            self.cmim = MODELS.build(dict(dict(type="CMIMLoss"), **(cmim or {}), in_dims=in_dims))
        self.lns_weight = float(lns_weight)
        if self.lns_weight > 0 and not any(
            isinstance(m, LNSBinarizer) for m in self.backbone.modules()
        ):
            raise InputError("lns_weight > 0 needs an LNS backbone (binarizer='lns')")

    def train(self, mode: bool = True) -> BinaryImageClassifier:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(
        self,
        inputs: Tensor,
        label: Tensor | None = None,
        index: Tensor | None = None,
        mode: str = "tensor",
    ) -> dict[str, Tensor] | Tensor | list[dict]:
        """``'loss'``: the loss terms; ``'tensor'``: logits (N, num_classes); ``'predict'``: one
        ``dict(pred_logits, gt_label)`` per sample (what TopKAccuracy reads)."""
        if mode == "loss":
            return self.loss(inputs, label, index)
        logits = self.backbone(inputs)
        if mode == "tensor":
            return logits
        if mode == "predict":
            labels = label if label is not None else [None] * len(logits)
            return [dict(pred_logits=lg, gt_label=lb) for lg, lb in zip(logits, labels)]
        raise InputError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def forward_train(self, inputs: Tensor) -> TrainForward:
        """One backbone forward (and one teacher forward if there is a teacher)."""
        teacher_feats = teacher_logits = None
        if self.teacher is not None:
            with torch.no_grad():
                feats = self.teacher.forward_features(inputs)
                teacher_feats = self.teacher.forward_head(feats, pre_logits=True)
                teacher_logits = self.teacher.get_classifier()(teacher_feats)
        if self.cmim is not None and self.cmim_source == "teacher":
            pooled = self.backbone.forward_head(
                self.backbone.forward_features(inputs), pre_logits=True
            )
            logits = self.backbone.get_classifier()(pooled)
            return TrainForward(logits, [(teacher_feats, pooled)], teacher_logits)
        if self.taps is None:
            return TrainForward(self.backbone(inputs), None, teacher_logits)
        self.taps.begin_step(self._tap_seed, self._tap_step)
        if self.training:
            self._tap_step += 1
            self.tap_step.add_(1)
        with self.taps:
            logits = self.backbone(inputs)
            return TrainForward(logits, self.taps.pop(), teacher_logits)

    def regularizer_losses(
        self, pairs: list | None, index: Tensor | None, label: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The terms every recipe adds: ``loss_cmim`` and ``loss_lns``."""
        losses = {}
        if pairs is not None:
            losses["loss_cmim"] = self.cmim_lambda * self.cmim(pairs, index, label)
        if self.lns_weight > 0:
            losses["loss_lns"] = self.lns_weight * lns_noisy_label_loss(self.backbone)
        return losses

    def loss(self, inputs: Tensor, label: Tensor | None, index: Tensor | None) -> dict[str, Tensor]:
        """The loss terms of one step; one backbone forward."""
        out = self.forward_train(inputs)
        losses = {}
        if label is not None:
            losses["loss_cls"] = F.cross_entropy(out.logits, label)
        if self.distill is not None:
            losses["loss_distill"] = self.distill(out.logits, out.teacher_logits)
        losses.update(self.regularizer_losses(out.pairs, index, label))
        if not losses:
            raise InputError("no loss to compute: the batch has no labels and there is no teacher")
        return losses
