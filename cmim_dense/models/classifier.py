"""The pretraining classifier: binary ResNet + global pooling + real FC, CE + lambda * CMIM."""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.runner.checkpoint import _load_checkpoint
from mmseg.registry import MODELS
from torch import Tensor, nn

from cmim_dense.binary import ActivationTaps
from cmim_dense.binary.lns import LNSBinarizer, lns_noisy_label_loss


class LinearClsHead(nn.Module):
    """Global average pooling and a real-valued FC: (N, C, h, w) -> logits (N, num_classes)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


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
            raise ValueError(f"mlp_hidden needs a top-level classifier; {arch} has {name!r}")
        head = [nn.Linear(teacher.num_features, mlp_hidden), nn.ReLU(inplace=True)]
        setattr(teacher, name, nn.Sequential(*head, nn.Linear(mlp_hidden, num_classes)))
    ckpt = _load_checkpoint(checkpoint, map_location="cpu")
    state = ckpt.get("state_dict", ckpt)
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    teacher.load_state_dict(state, strict=True)
    teacher.requires_grad_(False)
    # mmengine's init_weights() calls the init_weights() of every child not marked initialised,
    # and timm networks have one: without this the Runner would re-randomise the teacher.
    teacher.is_init = True
    return teacher.eval()


@MODELS.register_module()
class BinaryImageClassifier(BaseModel):
    """Image classifier for BNN pretraining with CMIM, in one forward pass.

    loss = CE(logits, label) + lambda * CMIM(taps) [+ distill_weight * KL(teacher || student)]
           [+ lns_weight * LNS noisy-label loss]

    The CMIM pairs (a_F, a_B) are read by activation taps during the *same* backbone
    forward that produces the logits; with ``cmim_lambda == 0`` no tap is attached and
    the model is exactly the plain classifier.

    Args:
        backbone: config of a :class:`~cmim_dense.models.BinaryResNet` (its ``num_classes``
            and ``out_indices`` are set here).
        num_classes: number of classes.
        cmim_lambda: lambda of Eq. 14.
        cmim: config of :class:`~cmim_dense.losses.CMIMLoss` (``in_dims`` is filled in).
        tap_mode: ``'stage'`` (one tap per stage, default) or ``'all'`` binary convs.
        tap_pool: spatial size the taps average-pool to (None: no pooling).
        teacher: optional ``dict(arch=..., checkpoint=..., prefix='')`` of a real-valued
            timm network for logit distillation (ReActNet / S2-BNN recipe).
        distill: config of the distillation loss; ``loss_weight`` in it scales it.
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
        tap_mode: str = "stage",
        tap_pool: int | None = 4,
        teacher: dict | None = None,
        distill: dict | None = None,
        lns_weight: float = 0.0,
        data_preprocessor: dict | None = None,
        init_cfg: dict | None = None,
    ):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(dict(backbone, num_classes=0, out_indices=(3,)))
        self.head = LinearClsHead(self.backbone.channels[-1], num_classes)
        self.num_classes = num_classes
        self.cmim_lambda = float(cmim_lambda)
        self.cmim = None
        self.taps = None
        if self.cmim_lambda > 0:
            if not tap_pool:
                raise ValueError("CMIM needs tap_pool (a fixed tap size) to size its critics")
            layers = self.backbone.tap_layers(tap_mode)
            self.taps = ActivationTaps(layers, pool_size=tap_pool)
            in_dims = [m.in_channels * tap_pool**2 for m in layers]
            self.cmim = MODELS.build(dict(dict(type="CMIMLoss"), **(cmim or {}), in_dims=in_dims))
        self.teacher = build_teacher(num_classes=num_classes, **teacher) if teacher else None
        self.distill = MODELS.build(distill or dict(type="DistributionLoss")) if teacher else None
        self.lns_weight = float(lns_weight)
        if self.lns_weight > 0 and not any(
            isinstance(m, LNSBinarizer) for m in self.backbone.modules()
        ):
            raise ValueError("lns_weight > 0 needs an LNS backbone (binarizer='lns')")

    def train(self, mode: bool = True) -> BinaryImageClassifier:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def extract_logits(self, inputs: Tensor) -> Tensor:
        """(N, 3, H, W) -> logits (N, num_classes)."""
        return self.head(self.backbone(inputs)[-1])

    def forward(
        self,
        inputs: Tensor,
        label: Tensor | None = None,
        index: Tensor | None = None,
        mode: str = "tensor",
    ):
        if mode == "loss":
            return self.loss(inputs, label, index)
        logits = self.extract_logits(inputs)
        if mode == "tensor":
            return logits
        if mode == "predict":
            labels = label if label is not None else [None] * len(logits)
            return [dict(pred_logits=lg, gt_label=lb) for lg, lb in zip(logits, labels)]
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def tapped_logits(self, inputs: Tensor) -> tuple[Tensor, list | None]:
        """One backbone forward: logits (N, num_classes) and the CMIM (a_F, a_B) pairs
        (None when CMIM is off)."""
        if self.taps is None:
            return self.extract_logits(inputs), None
        with self.taps:
            logits = self.extract_logits(inputs)
            return logits, self.taps.pop()

    def regularizer_losses(self, pairs: list | None, index: Tensor | None) -> dict[str, Tensor]:
        """The label-free terms every recipe adds: ``loss_cmim`` and ``loss_lns``."""
        losses = {}
        if pairs is not None:
            losses["loss_cmim"] = self.cmim_lambda * self.cmim(pairs, index)
        if self.lns_weight > 0:
            losses["loss_lns"] = self.lns_weight * lns_noisy_label_loss(self.backbone)
        return losses

    def loss(self, inputs: Tensor, label: Tensor | None, index: Tensor | None) -> dict[str, Tensor]:
        """The loss terms of one step; one backbone forward."""
        logits, pairs = self.tapped_logits(inputs)
        losses = {}
        if label is not None:
            losses["loss_cls"] = F.cross_entropy(logits, label)
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(inputs)
            losses["loss_distill"] = self.distill(logits, teacher_logits)
        losses.update(self.regularizer_losses(pairs, index))
        if not losses:
            raise ValueError("no loss to compute: the batch has no labels and there is no teacher")
        return losses
