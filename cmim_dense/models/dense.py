"""Multi-task dense model: one frozen binary backbone, a segmentation and a depth head."""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.structures import PixelData
from mmseg.models.segmentors import BaseSegmentor
from mmseg.structures import SegDataSample
from mmseg.utils import add_prefix
from torch import Tensor

from cmim_dense.registry import BACKBONE_RUNTIMES, MODELS
from cmim_dense.utils.errors import InputError

BACKBONE_BACKENDS = ("torch", "openvino")


class ExportedDense(Protocol):
    """A whole dense model exported from a :class:`MultiTaskDense`, as
    :meth:`MultiTaskDense.run_exported` takes it (e.g. an opened
    ``cmim_dense.deploy.runtime.ExportedModel``)."""

    input_size: tuple[int, int]  # (H, W) of its static input
    output_names: tuple[str, ...]  # 'seg' and/or 'depth'

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """(N, 3, H, W) float32 -> raw head outputs by name, at feature resolution."""
        ...


@MODELS.register_module()
class MultiTaskDense(BaseSegmentor):
    """Frozen backbone + DeepLab heads for semantic segmentation and/or depth.

    The backbone runs once per batch (under ``no_grad`` when frozen) and every head reads
    the same features. Either head may be omitted, which gives the single-task models.

    Args:
        backbone: config of any mmseg backbone (binary or real-valued).
        seg_head: config of an mmseg decode head (e.g. ``ASPPHead``), or None.
        depth_head: config of a depth head (e.g. ``DepthASPPHead``), or None.
        freeze_backbone: keep the backbone fixed (the paper's transfer protocol): no
            gradients, BN in eval mode whatever ``train()`` says, and a forward under
            ``no_grad``, so no graph is kept for it.
        channels_last: run the heads in the NHWC memory format. On CPU, oneDNN's depthwise
            convolutions (DeepLabV3+ heads) are markedly faster in it.
        backbone_backend: ``'torch'``, or ``'openvino'`` to run the frozen binary backbone's
            forward as bit-packed xnor-popcount convolutions (:mod:`cmim_dense.deploy`, found
            through the ``BACKBONE_RUNTIMES`` registry), built in memory from the backbone's
            weights, and built again after a ``load_state_dict`` or when a weight tensor is
            replaced. The heads train in PyTorch and checkpoints are unchanged. Needs
            ``freeze_backbone``.
        test_cfg: ``dict(mode='whole')``: predictions on the whole image (the only mode).
        data_preprocessor: typically ``DenseDataPreProcessor``.
        pretrained: the backbone's pretrained checkpoint, as mmseg's ``EncoderDecoder`` takes
            it (``mmseg.apis.init_model`` sets it to None); the configs set
            ``backbone.pretrained`` instead.

    Inputs (N, 3, H, W); ``predict`` fills each data sample's ``pred_sem_seg`` (1, H0, W0)
    class ids and ``pred_depth_map`` (1, H0, W0) metres at the original image size. After
    :meth:`run_exported`, ``predict`` takes the raw head outputs from an exported whole model
    instead of the backbone and heads, and resizes them the same way.
    """

    def __init__(
        self,
        backbone: dict,
        seg_head: dict | None = None,
        depth_head: dict | None = None,
        freeze_backbone: bool = True,
        channels_last: bool = False,
        backbone_backend: str = "torch",
        train_cfg: dict | None = None,
        test_cfg: dict | None = None,
        data_preprocessor: dict | None = None,
        init_cfg: dict | None = None,
        pretrained: str | None = None,
    ):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if pretrained is not None:
            if backbone.get("pretrained") is not None:
                raise InputError(
                    "both model.pretrained and model.backbone.pretrained are set: give the "
                    "backbone's weights once, not both"
                )
            backbone = dict(backbone, pretrained=pretrained)
        if seg_head is None and depth_head is None:
            raise InputError("MultiTaskDense needs a seg_head, a depth_head, or both")
        mode = (test_cfg or {}).get("mode", "whole")
        if mode != "whole":
            raise InputError(
                f"test_cfg.mode={mode!r} is not supported: MultiTaskDense predicts on the whole "
                "image (set test_cfg=dict(mode='whole'))"
            )
        if backbone_backend not in BACKBONE_BACKENDS:
            raise InputError(
                f"backbone_backend must be one of {BACKBONE_BACKENDS}, got {backbone_backend!r}"
            )
        if backbone_backend != "torch" and not freeze_backbone:
            raise InputError("backbone_backend='openvino' runs a frozen backbone only")
        self.backbone = MODELS.build(backbone)
        self.freeze_backbone = freeze_backbone
        self.seg_head = MODELS.build(seg_head) if seg_head is not None else None
        self.depth_head = MODELS.build(depth_head) if depth_head is not None else None
        self.align_corners = (self.seg_head or self.depth_head).align_corners
        self.channels_last = channels_last
        if channels_last:
            for head in self.heads.values():
                head.to(memory_format=torch.channels_last)
        self.backbone_backend = backbone_backend
        self.exported: ExportedDense | None = None  # see run_exported
        self._engine: tuple[tuple, object] | None = None  # (weight storages, compiled backbone)
        self.backbone.register_load_state_dict_post_hook(self._drop_engine)
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg
        if freeze_backbone:
            self._freeze()

    def _freeze(self) -> None:
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> MultiTaskDense:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def init_weights(self) -> None:
        super().init_weights()
        if self.freeze_backbone:
            if not self.backbone.init_cfg:
                print_log(
                    "the backbone is frozen but has no pretrained weights: its features are "
                    "random. Set model.backbone.pretrained=PATH for a real transfer.",
                    logger="current",
                    level=logging.WARNING,
                )
            self._freeze()

    @property
    def heads(self) -> dict:
        """The present heads by task name."""
        return {
            name: head
            for name, head in (("seg", self.seg_head), ("depth", self.depth_head))
            if head is not None
        }

    @property
    def decode_head(self):
        """The segmentation head (the depth head without one) under mmseg's name, which
        ``mmseg.apis.init_model`` reads when a checkpoint has no ``dataset_meta``."""
        return self.seg_head or self.depth_head

    def run_exported(self, exported: ExportedDense | None) -> None:
        """Predict with ``exported`` instead of the backbone and heads (None: PyTorch again).

        ``exported``: a whole model exported from this one, e.g. an opened
        :class:`cmim_dense.deploy.runtime.ExportedModel`, with ``input_size`` (H, W) of its static
        input, ``output_names`` and a call from (N, 3, H, W) float32 to raw head outputs at
        feature resolution by name: ``'seg'`` logits (N, K, h, w), ``'depth'`` (N, 1, h, w)
        metres. Inputs of another size are resized bilinearly to ``input_size``; the outputs go
        through the heads' own resize and :meth:`predict`'s postprocessing as in PyTorch.

        Raises:
            InputError: ``exported`` lacks an output of one of this model's heads.
        """
        missing = sorted(set(self.heads) - set(exported.output_names)) if exported else []
        if missing:
            raise InputError(
                f"the exported model has outputs {list(exported.output_names)}, this model's "
                f"heads need {sorted(self.heads)}: export the whole dense model"
            )
        self.exported = exported

    def _drop_engine(self, module, incompatible_keys) -> None:
        """``load_state_dict`` post hook: the compiled backbone holds the old weights."""
        self._engine = None

    def _runtime_backbone(self):
        """The backbone compiled by the ``backbone_backend`` runtime from its current weights.

        Built again after a ``load_state_dict`` (hook) or when a tensor is replaced (a new
        storage, e.g. after ``.to()``). In-place edits of a frozen weight by other means are
        not seen: torch has no public per-tensor modification counter.
        """
        storages = tuple(t.data_ptr() for t in self.backbone.state_dict(keep_vars=True).values())
        if self._engine is None or self._engine[0] != storages:
            runtime = BACKBONE_RUNTIMES.get(self.backbone_backend)
            self._engine = (storages, runtime.from_backbone(self.backbone.eval()))
        return self._engine[1]

    def extract_feat(self, inputs: Tensor) -> tuple[Tensor, ...]:
        """(N, 3, H, W) -> the backbone's multi-level features."""
        if self.backbone_backend != "torch":
            feats = self._runtime_backbone()(inputs)
        elif self.freeze_backbone:
            with torch.no_grad():
                feats = self.backbone(inputs)
        else:
            feats = self.backbone(inputs)
        if self.channels_last:
            feats = tuple(f.contiguous(memory_format=torch.channels_last) for f in feats)
        return feats

    def encode_decode(self, inputs: Tensor, batch_img_metas: list[dict]) -> Tensor:
        """Segmentation logits (N, num_classes, H, W), or depth when there is no seg head."""
        feats = self.extract_feat(inputs)
        head = self.seg_head or self.depth_head
        return head.predict(feats, batch_img_metas, self.test_cfg)

    def loss(self, inputs: Tensor, data_samples: list[SegDataSample]) -> dict[str, Tensor]:
        feats = self.extract_feat(inputs)
        losses = {}
        for name, head in self.heads.items():
            losses.update(add_prefix(head.loss(feats, data_samples, self.train_cfg), name))
        return losses

    def predict(
        self, inputs: Tensor, data_samples: list[SegDataSample] | None = None
    ) -> list[SegDataSample]:
        if data_samples is None:
            size = tuple(inputs.shape[2:])
            meta = dict(ori_shape=size, img_shape=size, pad_shape=size, padding_size=[0] * 4)
            data_samples = [SegDataSample(metainfo=meta) for _ in range(inputs.shape[0])]
        metas = [s.metainfo for s in data_samples]
        outputs = self._forward(inputs)
        if self.seg_head is not None:
            seg_logits = self.seg_head.predict_by_feat(outputs["seg"], metas)
            data_samples = self.postprocess_result(seg_logits, data_samples)
        if self.depth_head is not None:
            depth = self.depth_head.predict_by_feat(outputs["depth"], metas)
            for sample, depth_map in zip(data_samples, depth):
                sample.set_data(
                    {"pred_depth_map": PixelData(data=self._restore(depth_map, sample))}
                )
        return data_samples

    def _restore(self, depth: Tensor, sample: SegDataSample) -> Tensor:
        """One depth map (1, H, W) back to its image: padding removed, flip undone, resized
        bilinearly to ``ori_shape``; the depth counterpart of mmseg's ``postprocess_result``
        (mmseg's own sits on ``DepthEstimator``, which this model does not derive from)."""
        meta = sample.metainfo
        left, right, top, bottom = meta.get("img_padding_size", meta.get("padding_size", [0] * 4))
        height, width = depth.shape[-2:]
        depth = depth[None, :, top : height - bottom, left : width - right]
        if meta.get("flip"):
            direction = meta.get("flip_direction")
            if direction not in ("horizontal", "vertical"):
                raise ValueError(f"unknown flip_direction {direction!r}")
            depth = depth.flip(dims=(3,) if direction == "horizontal" else (2,))
        size = tuple(meta["ori_shape"][:2])
        if tuple(depth.shape[-2:]) != size:
            depth = F.interpolate(
                depth, size=size, mode="bilinear", align_corners=self.align_corners
            )
        return depth[0]

    def _forward(self, inputs: Tensor, data_samples: list | None = None) -> dict[str, Tensor]:
        """Raw head outputs at feature resolution, by task name: seg logits (N, K, h, w), depth
        (N, 1, h, w) metres; from the exported model after :meth:`run_exported`."""
        if self.exported is not None:
            return self._exported_forward(inputs)
        feats = self.extract_feat(inputs)
        return {name: head.forward(feats) for name, head in self.heads.items()}

    def _exported_forward(self, inputs: Tensor) -> dict[str, Tensor]:
        """(N, 3, H, W) -> the exported model's head outputs as tensors on the inputs' device."""
        size = tuple(self.exported.input_size)
        x = inputs.detach().float()
        if tuple(x.shape[2:]) != size:
            x = F.interpolate(x, size, mode="bilinear", align_corners=False)
        outputs = self.exported(np.ascontiguousarray(x.cpu().numpy()))
        return {name: torch.from_numpy(outputs[name]).to(inputs.device) for name in self.heads}
