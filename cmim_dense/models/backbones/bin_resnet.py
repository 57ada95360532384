"""Binary ResNet-18/34 (1-bit weights and activations), ImageNet style.

Follows Bi-Real / IR-Net practice: a real-valued stem and real-valued downsample
shortcuts, binary 3x3 convs, and a real-valued shortcut around *every* binary conv.
The ``react`` block adds ReActNet's RPReLU after each residual add, the ``adabin`` block
AdaBin's Maxout (see :data:`BLOCK_ACTIVATIONS`). Registered in
mmseg's MODELS (for dense configs) and in timm (``timm.create_model('bin_resnet18')``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.model import BaseModule
from mmengine.runner.checkpoint import _load_checkpoint
from mmseg.registry import MODELS
from timm.models import register_model
from torch import Tensor, nn

from cmim_dense.binary import BinaryConv2d
from cmim_dense.binary.adabin import Maxout

ARCH_SETTINGS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
# (strides, dilations) per output stride, as mmseg's DeepLab configs set them.
OUTPUT_STRIDES = {
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
}


class CheckpointMismatchError(RuntimeError):
    """A pretrained checkpoint does not fit the backbone's architecture."""


class RPReLU(nn.Module):
    """ReActNet's RPReLU: PReLU(x - gamma_c) + zeta_c, (N, C, H, W) -> same."""

    def __init__(self, channels: int):
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.prelu = nn.PReLU(channels, init=0.25)
        self.shift_out = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.prelu(x - self.shift_in) + self.shift_out


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


@MODELS.register_module()
class BinaryResNet(BaseModule):
    """Binary ResNet backbone.

    Args:
        depth: 18 or 34.
        binarizer: registered binarizer name or config (see ``list_binarizers()``).
        block: ``'basic'`` (Bi-Real/IR-Net), ``'react'`` (adds RPReLU) or ``'adabin'``
            (adds Maxout) after every residual add; see :data:`BLOCK_ACTIVATIONS`.
        base_channels: width of the first stage; stages have 1, 2, 4, 8 times it.
        stem: ``'imagenet'`` (7x7/2 conv + 3x3/2 max-pool, stride 4) or ``'cifar'``
            (3x3/1 conv, stride 1). The stem is real-valued.
        out_indices: stages whose outputs ``forward`` returns (mmseg convention).
        output_stride: 32, 16 or 8; sets ``strides``/``dilations`` as in DeepLab.
        strides, dilations: per-stage values, used when ``output_stride`` is None.
        contract_dilation: the first block of a dilated stage uses half the dilation,
            as in mmseg's ResNetV1c.
        frozen: eval-mode BN, ``requires_grad=False`` and a forward under ``no_grad``;
            ``train()`` does not undo it.
        num_classes: if > 0, adds global pooling and a real-valued FC and ``forward``
            returns logits (N, num_classes) (timm convention).
        pretrained: checkpoint path whose ``backbone.*`` keys are loaded by
            ``init_weights`` (shorthand for the ``init_cfg`` below, and settable with
            ``--cfg-options model.backbone.pretrained=PATH``).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH, prefix='backbone.')`` loads
            a checkpoint strictly: missing or unexpected keys raise
            :class:`CheckpointMismatchError`.

    Shapes: input (N, 3, H, W); stage i output (N, base_channels * 2^i, H / s_i, W / s_i)
    with s = (4, 8, 16, 32) at output stride 32 for the ImageNet stem.
    """

    def __init__(
        self,
        depth: int = 18,
        binarizer: str | dict = "irnet",
        block: str = "basic",
        base_channels: int = 64,
        stem: str = "imagenet",
        out_indices: Sequence[int] = (0, 1, 2, 3),
        output_stride: int | None = None,
        strides: Sequence[int] = (1, 2, 2, 2),
        dilations: Sequence[int] = (1, 1, 1, 1),
        contract_dilation: bool = True,
        frozen: bool = False,
        num_classes: int = 0,
        pretrained: str | None = None,
        init_cfg: dict | None = None,
    ):
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError("give either pretrained or init_cfg, not both")
            init_cfg = dict(type="Pretrained", checkpoint=pretrained, prefix="backbone.")
        super().__init__(init_cfg=init_cfg)
        if depth not in ARCH_SETTINGS:
            raise ValueError(f"depth must be one of {sorted(ARCH_SETTINGS)}, got {depth}")
        if block not in BLOCK_ACTIVATIONS:
            raise ValueError(f"block must be one of {sorted(BLOCK_ACTIVATIONS)}, got {block!r}")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        if output_stride is not None:
            if output_stride not in OUTPUT_STRIDES:
                raise ValueError(f"output_stride must be one of 8, 16, 32, got {output_stride}")
            strides, dilations = OUTPUT_STRIDES[output_stride]
        if len(strides) != 4 or len(dilations) != 4:
            raise ValueError("strides and dilations need one value per stage (4)")
        if not all(0 <= i < 4 for i in out_indices):
            raise ValueError(f"out_indices must be in 0..3, got {tuple(out_indices)}")
        self.depth = depth
        self.out_indices = tuple(out_indices)
        self.frozen = frozen
        self.num_classes = num_classes
        self.channels = tuple(base_channels * 2**i for i in range(4))

        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(3, base_channels, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(base_channels),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, base_channels, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(base_channels),
                nn.ReLU(inplace=True),
            )

        self.stages = nn.ModuleList()
        in_channels = base_channels
        for num_blocks, out_channels, stride, dilation in zip(
            ARCH_SETTINGS[depth], self.channels, strides, dilations
        ):
            first = dilation // 2 if contract_dilation and dilation > 1 else dilation
            blocks = [
                BinaryBasicBlock(
                    in_channels, out_channels, stride, (first, dilation), binarizer, block
                )
            ]
            blocks += [
                BinaryBasicBlock(
                    out_channels, out_channels, 1, (dilation, dilation), binarizer, block
                )
                for _ in range(num_blocks - 1)
            ]
            self.stages.append(nn.Sequential(*blocks))
            in_channels = out_channels

        self.num_features = self.channels[-1]
        if num_classes > 0:
            self.global_pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(self.num_features, num_classes)
        if frozen:
            self._freeze()

    # -- freezing --------------------------------------------------------------------------
    def _freeze(self) -> None:
        for param in self.parameters():
            param.requires_grad_(False)
        nn.Module.train(self, False)

    def train(self, mode: bool = True) -> BinaryResNet:
        super().train(mode and not self.frozen)
        return self

    # -- weights ---------------------------------------------------------------------------
    def init_weights(self) -> None:
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get("type") == "Pretrained":
            self.load_pretrained(cfg["checkpoint"], cfg.get("prefix"))
            self._is_init = True
        else:
            super().init_weights()
        if self.frozen:
            self._freeze()

    def load_pretrained(self, checkpoint: str, prefix: str | None = "backbone.") -> None:
        """Load ``checkpoint`` (keys under ``prefix``) strictly, with a readable error."""
        ckpt = _load_checkpoint(checkpoint, map_location="cpu")
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
        if prefix:
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if not state:
                raise CheckpointMismatchError(f"{checkpoint}: no weights under prefix {prefix!r}")
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or wrong_shape:
            raise CheckpointMismatchError(
                f"{checkpoint} does not fit BinaryResNet-{self.depth} "
                f"(channels {self.channels}): {_describe('missing', missing)}"
                f"{_describe('unexpected', unexpected)}{_describe('wrong shape', wrong_shape)}"
            )
        self.load_state_dict(state, strict=True)

    # -- taps ------------------------------------------------------------------------------
    def binary_convs(self) -> list[BinaryConv2d]:
        """Every binary conv, input to output."""
        return [m for m in self.stages.modules() if isinstance(m, BinaryConv2d)]

    def tap_layers(self, mode: str = "stage") -> list[BinaryConv2d]:
        """Layers to tap for CMIM, shallow to deep.

        ``'stage'``: the last binary conv of each stage (K = 4); ``'all'``: every binary conv.
        """
        if mode == "all":
            return self.binary_convs()
        if mode == "stage":
            return [
                [m for m in stage.modules() if isinstance(m, BinaryConv2d)][-1]
                for stage in self.stages
            ]
        raise ValueError(f"tap mode must be 'stage' or 'all', got {mode!r}")

    # -- forward ---------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> list[Tensor]:
        """(N, 3, H, W) -> the four stage outputs."""
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs

    def forward_head(self, x: Tensor) -> Tensor:
        """Last stage output (N, C, h, w) -> logits (N, num_classes)."""
        return self.fc(self.global_pool(x).flatten(1))

    def forward(self, x: Tensor) -> tuple[Tensor, ...] | Tensor:
        if self.frozen:
            with torch.no_grad():
                return self._forward(x)
        return self._forward(x)

    def _forward(self, x: Tensor) -> tuple[Tensor, ...] | Tensor:
        outs = self.forward_features(x)
        if self.num_classes > 0:
            return self.forward_head(outs[-1])
        return tuple(outs[i] for i in self.out_indices)

    # timm's classifier interface
    def get_classifier(self) -> nn.Module:
        return self.fc if self.num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        if num_classes > 0:
            self.global_pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(self.num_features, num_classes)


def _describe(what: str, keys: list[str]) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
    return f"{len(keys)} {what} key(s) [{shown}]; "


def _create_timm(depth: int, pretrained: bool, **kwargs) -> BinaryResNet:
    if pretrained:
        raise ValueError(
            "no pretrained binary weights are hosted; pass "
            "init_cfg=dict(type='Pretrained', checkpoint=PATH, prefix='backbone.')"
        )
    for timm_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(timm_only, None)
    kwargs.setdefault("num_classes", 1000)
    return BinaryResNet(depth=depth, **kwargs)


@register_model
def bin_resnet18(pretrained: bool = False, **kwargs) -> BinaryResNet:
    """Binary ResNet-18; ``timm.create_model('bin_resnet18', binarizer='irnet')``."""
    return _create_timm(18, pretrained, **kwargs)


@register_model
def bin_resnet34(pretrained: bool = False, **kwargs) -> BinaryResNet:
    """Binary ResNet-34; ``timm.create_model('bin_resnet34', binarizer='irnet')``."""
    return _create_timm(34, pretrained, **kwargs)
