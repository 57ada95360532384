"""S2-BNN (Shen et al. CVPR 2021): label-free BNN pretraining by guided distribution calibration.

A training recipe, not a binarizer: the binary student learns to predict the output
distribution of a frozen real-valued self-supervised teacher (the paper's teacher is a MoCo v2
ResNet-50 with its 2048-2048-128 projection head), optionally with an in-batch contrastive term
between two augmented views, and here with CMIM piled on top. No labels are used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cmim_dense.models.classifier import BinaryImageClassifier
from cmim_dense.registry import MODELS
from cmim_dense.utils.errors import InputError


def info_nce_loss(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent between two views, in-batch negatives.

    z1, z2: (N, D) outputs of the two views of the same N images (L2-normalised here). Each of
    the 2N rows is an anchor whose positive is the other view of its image and whose negatives
    are the other 2N - 2 rows; the loss is the mean cross-entropy over the 2N anchors of
    softmax(cos / temperature). Returns a scalar.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise InputError(
            f"need two (N, D) views of one shape, got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T / temperature).masked_fill(
        torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf")
    )
    target = torch.arange(2 * n, device=z.device).roll(n)  # row i <-> row i + N
    return F.cross_entropy(sim, target)


@MODELS.register_module()
class S2BNNClassifier(BinaryImageClassifier):
    """Self-supervised binary pretraining: distribution calibration to a frozen teacher (+ CMIM).

    loss = DistributionLoss(g(s), g(t))                     (``loss_distill``)
           [+ lambda * CMIM(taps)]                           (``loss_cmim``)
           [+ contrastive_weight * NT-Xent(s_view1, s_view2)] (``loss_contrast``)
           [+ lns_weight * LNS noisy-label loss]             (``loss_lns``)

    s (N, D) is the student's output and t (N, D) the teacher's on the same images, D =
    ``num_classes`` (the teacher's projection or classifier size); g L2-normalises when
    ``normalize`` is set. DistributionLoss is -sum_c softmax(g(t)/T)_c log_softmax(g(s)/T)_c,
    i.e. KL(softmax(g(t)/T) || softmax(g(s)/T)) plus the teacher's entropy, which does not
    depend on the student: the S2-BNN / ReActNet loss, with T = 0.2 (the public code's MoCo
    temperature) by default.

    The teacher (built by :func:`~cmim_dense.models.classifier.build_teacher` from a local
    checkpoint) is frozen: ``requires_grad=False``, always in eval mode, run under ``no_grad``.
    A batch's ``label``, if present, is ignored; ``index`` (dataset indices) feeds the CMIM bank.

    The contrastive term is off by default (the paper's best ImageNet result uses the
    distillation loss alone). It needs two views per image, ``inputs`` (N, 2, 3, H, W), e.g. from
    ``UnlabeledDataset(num_views=2)``; both views then go through the student and the teacher
    as one batch of 2N, so distillation and CMIM use both. It is SimCLR's in-batch NT-Xent on
    the student's outputs, not the MoCo momentum queue of the paper's contrastive baseline.

    Args:
        backbone, cmim_lambda, cmim, cmim_source, tap_mode, tap_reduce, tap_size, lns_weight,
            data_preprocessor: as :class:`~cmim_dense.models.BinaryImageClassifier`.
        num_classes: D, the teacher's output size (128 for a MoCo v2 head).
        teacher: ``dict(arch=..., checkpoint=..., prefix='', mlp_hidden=None)``; required.
        distill: the distillation loss config (default ``DistributionLoss``, T = 0.2).
        normalize: L2-normalise student and teacher outputs before the temperature, as the public
            code does for MoCo embeddings; set False for a teacher that outputs class logits.
        head_hidden: hidden width of an MLP student classifier (S2-BNN's MoCo-style head,
            ``BinaryResNet(head_hidden=...)``); None keeps the linear one.
        contrastive_weight: weight of the NT-Xent term; 0 turns it off.
        contrastive_temperature: its temperature (MoCo v2's 0.2).
    """

    def __init__(
        self,
        backbone: dict,
        num_classes: int,
        teacher: dict,
        cmim_lambda: float = 0.0,
        cmim: dict | None = None,
        cmim_source: str = "taps",
        tap_mode: str = "stage",
        tap_reduce: str = "sample",
        tap_size: int = 4,
        distill: dict | None = None,
        normalize: bool = True,
        head_hidden: int | None = None,
        contrastive_weight: float = 0.0,
        contrastive_temperature: float = 0.2,
        lns_weight: float = 0.0,
        data_preprocessor: dict | None = None,
        init_cfg: dict | None = None,
    ):
        if not teacher:
            raise InputError("S2BNNClassifier needs a teacher: dict(arch=..., checkpoint=...)")
        if contrastive_weight < 0 or contrastive_temperature <= 0:
            raise InputError(
                f"need contrastive_weight >= 0 and contrastive_temperature > 0, got "
                f"{contrastive_weight}, {contrastive_temperature}"
            )
        super().__init__(
            dict(backbone, head_hidden=head_hidden),
            num_classes,
            cmim_lambda=cmim_lambda,
            cmim=cmim,
            cmim_source=cmim_source,
            tap_mode=tap_mode,
            tap_reduce=tap_reduce,
            tap_size=tap_size,
            teacher=teacher,
            distill=distill or dict(type="DistributionLoss", temperature=0.2),
            lns_weight=lns_weight,
            data_preprocessor=data_preprocessor,
            init_cfg=init_cfg,
        )
        self.normalize = normalize
        self.contrastive_weight = float(contrastive_weight)
        self.contrastive_temperature = float(contrastive_temperature)

    def _calibrated(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) if self.normalize else x

    def loss(
        self, inputs: Tensor, label: Tensor | None = None, index: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The loss terms of one step; ``label`` is ignored.

        inputs: (N, 3, H, W) or (N, V, 3, H, W) with V views; index: (N,) dataset indices.
        """
        if inputs.dim() == 5:
            n, num_views = inputs.shape[:2]
            inputs = inputs.flatten(0, 1)  # image-major: (img0 view0, img0 view1, img1 view0, ...)
            if index is not None:
                index = index.repeat_interleave(num_views)
        elif inputs.dim() == 4:
            n, num_views = inputs.shape[0], 1
        else:
            raise InputError(
                f"inputs must be (N, 3, H, W) or (N, V, 3, H, W), got {inputs.dim()}-d"
            )
        if self.contrastive_weight > 0 and num_views < 2:
            raise InputError(
                "the contrastive term needs two views, inputs (N, 2, 3, H, W): wrap the dataset in "
                "UnlabeledDataset(num_views=2)"
            )

        out = self.forward_train(inputs)
        logits = out.logits
        losses = {
            "loss_distill": self.distill(
                self._calibrated(logits), self._calibrated(out.teacher_logits)
            )
        }
        if self.contrastive_weight > 0:
            views = logits.view(n, num_views, -1)
            losses["loss_contrast"] = self.contrastive_weight * info_nce_loss(
                views[:, 0], views[:, 1], self.contrastive_temperature
            )
        losses.update(self.regularizer_losses(out.pairs, index))
        return losses
