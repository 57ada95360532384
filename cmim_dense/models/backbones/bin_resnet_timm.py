"""The binary ResNets as timm models: ``timm.create_model('bin_resnet18', binarizer='irnet')``.

timm's contract differs from the mmseg backbone's in two places, so the timm entry builds
:class:`TimmBinaryResNet`, a subclass of the mmseg :class:`BinaryResNet` with the same weights:

- feature levels: timm's ResNets expose 5, the stem included (index 0, after the stem's ReLU,
  stride 2 for the ImageNet stem), so ``features_only=True`` and ``forward_intermediates``
  index 0..4 here, where the mmseg backbone's ``out_indices`` index its stages 0..3;
- without a classifier (``num_classes=0``) ``forward`` returns the pooled features (N, C)
  (with ``global_pool=''`` the unpooled map), where the mmseg backbone returns its stages.
"""

from collections.abc import Sequence

from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    register_model,
)
from torch import Tensor, nn

from cmim_dense.models.backbones.bin_resnet import STEM_STRIDES, BinaryResNet
from cmim_dense.utils.checkpoint import CheckpointError
from cmim_dense.utils.errors import InputError


class TimmBinaryResNet(BinaryResNet):
    """:class:`BinaryResNet` on timm's model contract (5 feature levels, pooled features).

    Takes the arguments of :class:`BinaryResNet` except the mmseg ones (``out_indices``,
    ``pretrained``, ``init_cfg``). ``feature_info`` lists the stem (num_chs = base_channels,
    reduction 2 or 1) and the 4 stages (reduction 4, 8, 16, 32 for the ImageNet stem).
    Input (N, in_chans, H, W); ``forward`` returns (N, num_classes) logits, (N, C) pooled
    features when ``num_classes=0``, or (N, C, H/32, W/32) with ``global_pool=''`` too.
    """

    def __init__(self, *, stem: str = "imagenet", base_channels: int = 64, **kwargs):
        super().__init__(stem=stem, base_channels=base_channels, **kwargs)
        self.head_hidden_size = self.num_features  # forward_head(pre_logits=True) width
        stem_reduction = STEM_STRIDES[stem] // 2 if stem == "imagenet" else STEM_STRIDES[stem]
        stem_info = dict(num_chs=base_channels, reduction=stem_reduction, module="stem.2")
        self.feature_info = [stem_info, *self.feature_info]

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_chans, H, W) -> logits, or the pooled features without a classifier."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """(N, 3, H, W) -> the feature levels at ``indices`` (0: the stem, 1..4: the stages;
        an int n: the last n) and, unless ``intermediates_only``, the final map (N, C, h, w)."""
        if output_fmt != "NCHW":
            raise InputError(f"only output_fmt='NCHW' is supported, got {output_fmt!r}")
        take, max_index = _take(indices, len(self.stages) + 1)
        intermediates = []
        x = self.stem[:3](x)  # conv, BN, ReLU: the stem feature level
        if 0 in take:
            intermediates.append(x)
        x = self.stem[3:](x)  # the ImageNet stem's max-pool (empty for the CIFAR stem)
        stages = self.stages[:max_index] if stop_early else self.stages
        for i, stage in enumerate(stages):
            x = stage(x)
            if i + 1 in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the last of ``indices`` (and the classifier); returns them."""
        take, max_index = _take(indices, len(self.stages) + 1)
        self.stages = self.stages[:max_index]
        if prune_head:
            self.reset_classifier(0, "")
        return take


def _take(indices: int | Sequence[int] | None, num_levels: int) -> tuple[list[int], int]:
    """timm's index convention: None = all levels, an int n = the last n, else the indices
    (negative from the end). Returns (sorted levels, the largest), with one-line errors."""
    if indices is None:
        indices = num_levels
    if isinstance(indices, int):
        if not 0 < indices <= num_levels:
            raise InputError(f"the last-n feature count must be in 1..{num_levels}, got {indices}")
        take = list(range(num_levels - indices, num_levels))
    else:
        if not all(-num_levels <= i < num_levels for i in indices):
            raise InputError(f"feature indices must be in 0..{num_levels - 1}, got {list(indices)}")
        take = sorted(i % num_levels for i in indices)
    return take, max(take)


def _cfg(**kwargs) -> dict:
    return dict(
        url="",
        file=None,  # a project checkpoint: pretrained_cfg_overlay=dict(file=PATH)
        hf_hub_id=None,  # no binary weights are hosted yet
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.875,
        interpolation="bilinear",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        first_conv="stem.0",
        classifier="fc",
        license="apache-2.0",
        **kwargs,
    )


default_cfgs = generate_default_cfgs(
    {"bin_resnet18.untrained": _cfg(), "bin_resnet34.untrained": _cfg()}
)


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """timm's pretrained filter: a project checkpoint keeps the network under ``backbone.``
    (beside CMIM critics and banks); take those keys without the prefix."""
    prefix = "backbone."
    if any(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return state_dict


def _create_timm(variant: str, depth: int, pretrained: bool, **kwargs) -> TimmBinaryResNet:
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if pretrained and not overlay.get("file"):
        raise CheckpointError(
            "no pretrained binary weights are hosted; pass a project checkpoint with "
            "pretrained_cfg_overlay=dict(file=PATH, num_classes=N)"
        )
    # timm reads the file with torch.load(weights_only=True); cmim_dense's import allow-lists
    # the few safe globals of an mmengine checkpoint (cmim_dense/compat.py).
    return build_model_with_cfg(
        TimmBinaryResNet,
        variant,
        pretrained,
        depth=depth,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter"),
        **kwargs,
    )


@register_model
def bin_resnet18(pretrained: bool = False, **kwargs) -> TimmBinaryResNet:
    """Binary ResNet-18; ``timm.create_model('bin_resnet18', binarizer='irnet')``."""
    return _create_timm("bin_resnet18", 18, pretrained, **kwargs)


@register_model
def bin_resnet34(pretrained: bool = False, **kwargs) -> TimmBinaryResNet:
    """Binary ResNet-34; ``timm.create_model('bin_resnet34', binarizer='irnet')``."""
    return _create_timm("bin_resnet34", 34, pretrained, **kwargs)


__all__ = ["TimmBinaryResNet", "bin_resnet18", "bin_resnet34"]
