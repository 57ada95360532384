"""BinaryConv2d: a conv whose input activations and weights are binarized."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from cmim_dense.binary.registry import build_binarizer

TapFn = Callable[["BinaryConv2d", Tensor, Tensor], None]


class BinaryConv2d(nn.Conv2d):
    """``conv(binarize_activation(a_F), binarize_weight(W))``.

    The latent real activation a_F (N, C_in, H, W) and its binary version a_B (same shape)
    are handed to ``self.tap`` when one is attached (see :class:`ActivationTaps`), so a loss
    can read both from the same forward pass. With no tap attached nothing is kept.

    Args:
        binarizer: registered name or config dict of the binarization method.
        Other arguments are those of :class:`torch.nn.Conv2d` (bias defaults to False).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        binarizer: str | dict = "ste",
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        )
        self.binarizer = build_binarizer(binarizer, in_channels, out_channels, self.kernel_size)
        self.tap: TapFn | None = None

    def forward(self, a_real: Tensor) -> Tensor:
        a_bin = self.binarizer.binarize_activation(a_real)
        if self.tap is not None:
            self.tap(self, a_real, a_bin)
        w_bin = self.binarizer.binarize_weight(self.weight)
        return F.conv2d(
            a_bin, w_bin, self.bias, self.stride, self.padding, self.dilation, self.groups
        )
