"""Binary ResNet-18/34 (1-bit weights and activations), ImageNet style.

Follows Bi-Real / IR-Net practice: a real-valued stem and real-valued downsample
shortcuts, binary 3x3 convs, and a real-valued shortcut around *every* binary conv.
The ``react`` block adds ReActNet's RPReLU after each residual add, the ``adabin`` block
AdaBin's Maxout (see :data:`BLOCK_ACTIVATIONS`). Registered in mmseg's MODELS (for dense
configs) and in timm, with timm's model contract: ``timm.create_model('bin_resnet18')``,
``forward_features`` / ``forward_head`` / ``forward_intermediates``, ``feature_info`` and
``features_only=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.model import BaseModule
from timm.layers import Mlp, create_classifier
from timm.models import checkpoint_seq
from torch import Tensor, nn

from cmim_dense.binary import BinaryConv2d
from cmim_dense.binary.adabin import Maxout
from cmim_dense.binary.fused import rprelu
from cmim_dense.registry import MODELS
from cmim_dense.utils.checkpoint import load_state_dict_strict, read_state_dict
from cmim_dense.utils.errors import InputError

ARCH_SETTINGS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
STEM_STRIDES = {"imagenet": 4, "cifar": 1}
# (strides, dilations) per output stride, as mmseg's DeepLab configs set them.
OUTPUT_STRIDES = {
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
}


class RPReLU(nn.Module):
    """ReActNet's RPReLU: PReLU(x - gamma_c) + zeta_c, (N, C, H, W) -> same."""

    def __init__(self, channels: int):
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.prelu = nn.PReLU(channels, init=0.25)
        self.shift_out = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return rprelu(x, self.shift_in, self.prelu.weight, self.shift_out)


# Block name -> the activation after each residual add (None: none, as in Bi-Real / IR-Net).
# Each class is built as ``cls(channels)``.
BLOCK_ACTIVATIONS: dict[str, type[nn.Module] | None] = {
    "basic": None,
    "react": RPReLU,
    "adabin": Maxout,
}


class BinaryConvUnit(nn.Module):
    """BN(BinaryConv3x3(x)) + shortcut(x), then the block's activation.

    The shortcut is the identity, or (when the shape changes) a real-valued
    AvgPool(stride) -> Conv1x1 -> BN, as in Bi-Real Net.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        dilation: int,
        binarizer: str | dict,
        block: str,
    ):
        super().__init__()
        self.conv = BinaryConv2d(
            in_channels,
            out_channels,
            3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            binarizer=binarizer,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            pool = nn.AvgPool2d(stride, stride, ceil_mode=True) if stride > 1 else nn.Identity()
            self.shortcut = nn.Sequential(
                pool,
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        act = BLOCK_ACTIVATIONS[block]
        self.act = act(out_channels) if act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)) + self.shortcut(x))


class BinaryBasicBlock(nn.Sequential):
    """Two :class:`BinaryConvUnit` (the ResNet basic block with a shortcut per conv)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        dilation: tuple[int, int],
        binarizer: str | dict,
        block: str,
    ):
        super().__init__(
            BinaryConvUnit(in_channels, out_channels, stride, dilation[0], binarizer, block),
            BinaryConvUnit(out_channels, out_channels, 1, dilation[1], binarizer, block),
        )


def _check_args(
    depth: int,
    block: str,
    stem: str,
    output_stride: int | None,
    strides: Sequence[int],
    dilations: Sequence[int],
    out_indices: Sequence[int],
) -> tuple[Sequence[int], Sequence[int]]:
    """One-line errors for bad :class:`BinaryResNet` arguments; returns (strides, dilations)."""
    if depth not in ARCH_SETTINGS:
        raise InputError(f"depth must be one of {sorted(ARCH_SETTINGS)}, got {depth}")
    if block not in BLOCK_ACTIVATIONS:
        raise InputError(f"block must be one of {sorted(BLOCK_ACTIVATIONS)}, got {block!r}")
    if stem not in STEM_STRIDES:
        raise InputError(f"stem must be one of {sorted(STEM_STRIDES)}, got {stem!r}")
    if output_stride is not None:
        if output_stride not in OUTPUT_STRIDES:
            raise InputError(f"output_stride must be one of 8, 16, 32, got {output_stride}")
        strides, dilations = OUTPUT_STRIDES[output_stride]
    if len(strides) != 4 or len(dilations) != 4:
        raise InputError("strides and dilations need one value per stage (4)")
    if not all(0 <= i < 4 for i in out_indices):
        raise InputError(f"out_indices must be in 0..3, got {tuple(out_indices)}")
    return strides, dilations


def _stem(stem: str, in_chans: int, channels: int) -> nn.Sequential:
    """The real-valued stem: 7x7/2 conv + 3x3/2 max-pool ('imagenet') or 3x3/1 ('cifar')."""
    if stem == "imagenet":
        return nn.Sequential(
            nn.Conv2d(in_chans, channels, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
    return nn.Sequential(
        nn.Conv2d(in_chans, channels, 3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    )


def _stage(
    in_channels: int,
    out_channels: int,
    stride: int,
    dilation_pairs: Sequence[tuple[int, int]],
    binarizer: str | dict,
    block: str,
) -> nn.Sequential:
    """One stage: a :class:`BinaryBasicBlock` per (first, second) conv dilation pair; the
    first block takes the stride and the change of width, (N, C_in, H, W) ->
    (N, C_out, H / stride, W / stride)."""
    return nn.Sequential(
        *(
            BinaryBasicBlock(
                in_channels if j == 0 else out_channels,
                out_channels,
                stride if j == 0 else 1,
                pair,
                binarizer,
                block,
            )
            for j, pair in enumerate(dilation_pairs)
        )
    )


# Keys of the classifier, which a headless backbone (num_classes=0) leaves out of a checkpoint.
CLASSIFIER_PREFIXES = ("fc.", "global_pool.")


@MODELS.register_module()
class BinaryResNet(BaseModule):
    """Binary ResNet backbone, and with ``num_classes > 0`` a classifier (timm convention).

    Args:
        depth: 18 or 34.
        binarizer: registered binarizer name or config (see ``list_binarizers()``).
        block: ``'basic'`` (Bi-Real/IR-Net), ``'react'`` (adds RPReLU) or ``'adabin'``
            (adds Maxout) after every residual add; see :data:`BLOCK_ACTIVATIONS`.
        base_channels: width of the first stage; stages have 1, 2, 4, 8 times it.
        stem: ``'imagenet'`` (7x7/2 conv + 3x3/2 max-pool, stride 4) or ``'cifar'``
            (3x3/1 conv, stride 1). The stem is real-valued.
        in_chans: input channels (timm's name).
        out_indices: stages whose outputs ``forward`` returns when headless (mmseg convention).
        output_stride: 32, 16 or 8; sets ``strides``/``dilations`` as in DeepLab.
        strides, dilations: per-stage values, used when ``output_stride`` is None.
        contract_dilation: the first block of a dilated stage uses half the dilation,
            as in mmseg's ResNetV1c.
        num_classes: 0 (default): a headless mmseg backbone whose ``forward`` returns the
            ``out_indices`` stage outputs. > 0: global pooling and a real-valued classifier,
            and ``forward`` returns logits (N, num_classes).
        global_pool: timm pooling type of the classifier (``'avg'``).
        head_hidden: if set, the classifier is an MLP Linear(C, head_hidden)-ReLU-Linear (the
            projection head of self-supervised teachers, used by S2-BNN) instead of one Linear.
        pretrained: checkpoint path whose ``backbone.*`` keys are loaded by
            ``init_weights`` (shorthand for the ``init_cfg`` below, and settable with
            ``--cfg-options model.backbone.pretrained=PATH``).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH, prefix='backbone.')`` loads
            a checkpoint strictly: missing, unexpected or mis-shaped keys raise
            :class:`~cmim_dense.utils.checkpoint.CheckpointError`. A headless backbone ignores
            the checkpoint's classifier (``fc.*``).

    Shapes: input (N, 3, H, W); stage i output (N, base_channels * 2^i, H / s_i, W / s_i)
    with s = (4, 8, 16, 32) at output stride 32 for the ImageNet stem.
    """

    # mmengine's init flag: a property TorchScript would compile (and could not type).
    __jit_unused_properties__ = ["is_init"]

    def __init__(
        self,
        depth: int = 18,
        binarizer: str | dict = "irnet",
        block: str = "basic",
        base_channels: int = 64,
        stem: str = "imagenet",
        in_chans: int = 3,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        output_stride: int | None = None,
        strides: Sequence[int] = (1, 2, 2, 2),
        dilations: Sequence[int] = (1, 1, 1, 1),
        contract_dilation: bool = True,
        num_classes: int = 0,
        global_pool: str = "avg",
        head_hidden: int | None = None,
        pretrained: str | None = None,
        init_cfg: dict | None = None,
    ):
        if pretrained is not None:
            if init_cfg is not None:
                raise InputError("give either pretrained or init_cfg, not both")
            init_cfg = dict(type="Pretrained", checkpoint=pretrained, prefix="backbone.")
        super().__init__(init_cfg=init_cfg)
        strides, dilations = _check_args(
            depth, block, stem, output_stride, strides, dilations, out_indices
        )
        self.depth = depth
        self.out_indices = tuple(out_indices)
        self.channels = tuple(base_channels * 2**i for i in range(4))
        self.num_features = self.channels[-1]
        self.head_hidden = head_hidden
        self.grad_checkpointing = False
        self.global_pool_type = global_pool

        self.stem = _stem(stem, in_chans, base_channels)
        self.stages = nn.ModuleList()
        self.feature_info = []
        reduction = STEM_STRIDES[stem]
        in_channels = base_channels
        for i, (num_blocks, out_channels, stride, dilation) in enumerate(
            zip(ARCH_SETTINGS[depth], self.channels, strides, dilations)
        ):
            first = dilation // 2 if contract_dilation and dilation > 1 else dilation
            dilation_pairs = [(first, dilation)] + [(dilation, dilation)] * (num_blocks - 1)
            self.stages.append(
                _stage(in_channels, out_channels, stride, dilation_pairs, binarizer, block)
            )
            reduction *= stride
            self.feature_info.append(
                dict(num_chs=out_channels, reduction=reduction, module=f"stages.{i}")
            )
            in_channels = out_channels
        self.reset_classifier(num_classes)

    # -- weights ---------------------------------------------------------------------------
    def init_weights(self) -> None:
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get("type") == "Pretrained":
            self.load_pretrained(cfg["checkpoint"], cfg.get("prefix"))
            self._is_init = True
        else:
            super().init_weights()

    def load_pretrained(self, checkpoint: str, prefix: str | None = "backbone.") -> None:
        """Load ``checkpoint`` (keys under ``prefix``) strictly, with a one-line error.

        A headless backbone drops the checkpoint's classifier; anything else that does not
        match raises :class:`~cmim_dense.utils.checkpoint.CheckpointError`.
        """
        state = read_state_dict(checkpoint, prefix)
        target = f"BinaryResNet-{self.depth} (channels {self.channels})"
        ignore = CLASSIFIER_PREFIXES if self.num_classes == 0 else ()
        load_state_dict_strict(self, state, checkpoint, target, ignore=ignore)

    # -- taps ------------------------------------------------------------------------------
    def binary_convs(self) -> list[BinaryConv2d]:
        """Every binary conv, input to output."""
        return [m for m in self.stages.modules() if isinstance(m, BinaryConv2d)]

    def tap_layers(self, mode: str = "stage") -> list[BinaryConv2d]:
        """Layers to tap for CMIM, shallow to deep.

        ``'stage'``: the last binary conv of each stage (K = 4); ``'all'``: every binary conv;
        ``'last'``: the last binary conv of the network (K = 1).
        """
        convs = self.binary_convs()
        if mode == "all":
            return convs
        if mode == "last":
            return convs[-1:]
        if mode == "stage":
            return [
                [m for m in stage.modules() if isinstance(m, BinaryConv2d)][-1]
                for stage in self.stages
            ]
        raise InputError(f"tap mode must be 'stage', 'all' or 'last', got {mode!r}")

    # -- forward (timm's contract) -----------------------------------------------------------
    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """(N, 3, H, W) -> the stage outputs at ``indices`` (timm: an int n means the last n),
        and, unless ``intermediates_only``, the final feature map (N, C, h, w) too."""
        if output_fmt != "NCHW":
            raise InputError(f"only output_fmt='NCHW' is supported, got {output_fmt!r}")
        take = _stage_indices(indices, len(self.stages))
        x = self.stem(x)
        intermediates = []
        last = max(take) if stop_early else len(self.stages) - 1
        for i, stage in enumerate(self.stages[: last + 1]):
            x = stage(x)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the last of ``indices`` (and the classifier); returns them."""
        take = _stage_indices(indices, len(self.stages))
        self.stages = self.stages[: max(take) + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) -> the last stage's output (N, C, h, w)."""
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
        for stage in self.stages:
            x = stage(x)
        return x

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward instead of keeping its activations (timm)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Parameter groups for layer-wise learning-rate decay (timm): the stem, then blocks."""
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)")

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Last stage output (N, C, h, w) -> logits (N, num_classes), or the pooled (N, C)."""
        x = self.global_pool(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Logits (N, num_classes) with a classifier; else the ``out_indices`` stage outputs."""
        if self.num_classes > 0:
            return self.forward_head(self.forward_features(x))
        return tuple(self.forward_intermediates(x, self.out_indices, intermediates_only=True))

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for ``num_classes`` (0: none) with ``global_pool`` (None: keep).

        Without a classifier ``forward`` returns the ``out_indices`` stage outputs here (the
        mmseg backbone), and the pooled features in the timm model.
        """
        if global_pool is not None:
            self.global_pool_type = global_pool
        global_pool = self.global_pool_type
        self.num_classes = num_classes
        if num_classes > 0 and self.head_hidden:
            self.global_pool = create_classifier(self.num_features, 0, global_pool)[0]
            self.fc = Mlp(self.num_features, self.head_hidden, num_classes, act_layer=nn.ReLU)
        else:
            self.global_pool, self.fc = create_classifier(
                self.num_features, num_classes, global_pool
            )


def _stage_indices(indices: int | Sequence[int] | None, num_stages: int) -> list[int]:
    """timm's convention: None = all stages, an int n = the last n, else explicit indices."""
    if indices is None:
        return list(range(num_stages))
    if isinstance(indices, int):
        return list(range(num_stages - indices, num_stages))
    take = [i % num_stages if i < 0 else i for i in indices]
    if not all(0 <= i < num_stages for i in take):
        raise InputError(f"stage indices must be in 0..{num_stages - 1}, got {list(indices)}")
    return take
