"""BinaryConv2d: a conv whose input activations and weights are binarized."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import Tensor, nn

from cmim_dense.binary.registry import build_binarizer

TapFn = Callable[["BinaryConv2d", Tensor, Tensor], None]


@register_notrace_module  # FX sees one call: the binarizer's state stays out of the graph
class BinaryConv2d(nn.Conv2d):
    """``conv(binarize_activation(x), binarize_weight(W))``.

    The binarizer's latent real activation a_F = u (N, C_in, H, W), the tensor whose sign is
    taken, and a_B = sign(u) (same shape, exactly {-1, +1}) are handed to ``self.tap`` when one
    is attached (see :class:`ActivationTaps`), so a loss can read both from the same forward
    pass; a_B = sign(a_F) holds for every binarizer. With no tap attached nothing is kept.

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
        self._weight_cache: tuple[tuple, Tensor] | None = None

    def _weight_state(self) -> tuple:
        # Storage and in-place version counter of every tensor the binary weight depends
        # on: an optimizer step, load_state_dict or .to() changes one of them. Tensor._version
        # is torch's own counter (autograd's saved-tensor check reads it); torch has no public
        # API that says a tensor was modified in place, and hooks would miss in-place edits
        # under no_grad (RBNN's rotation update, EMA). The behaviour is pinned by
        # test_binary_weight_cached_without_autograd_and_refreshed_on_change
        # (tests/test_binary_conv.py).
        tensors = [self.weight, *self.binarizer.parameters(), *self.binarizer.buffers()]
        return tuple((t.data_ptr(), t._version) for t in tensors)

    def binary_weight(self) -> Tensor:
        """The binarized weight (C_out, C_in, kh, kw).

        Without autograd (evaluation, a frozen backbone) it is computed once and reused
        until the weight or the binarizer's state changes, which saves re-binarizing fixed
        weights every forward (about a third of a frozen ResNet-18 forward on CPU). A
        scripted model binarizes every forward (TorchScript has no version counters).
        """
        if torch.jit.is_scripting():
            return self.binarizer.binarize_weight(self.weight)
        else:
            return self._cached_binary_weight()

    @torch.jit.unused
    def _cached_binary_weight(self) -> Tensor:
        # A compiler or exporter traces the binarization itself (the cache reads pointers).
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            self._weight_cache = None
            return self.binarizer.binarize_weight(self.weight)
        state = self._weight_state()
        if self._weight_cache is None or self._weight_cache[0] != state:
            self._weight_cache = (state, self.binarizer.binarize_weight(self.weight))
        return self._weight_cache[1]

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) real input -> (N, C_out, H', W') conv of the binarized input."""
        if torch.jit.is_scripting() or self.tap is None:
            value = self.binarizer.binarize_activation(x)
        else:
            value = self._tapped_activation(x)
        w_bin = self.binary_weight()
        return F.conv2d(
            value, w_bin, self.bias, self.stride, self.padding, self.dilation, self.groups
        )

    @torch.jit.unused
    def _tapped_activation(self, x: Tensor) -> Tensor:
        """The unfused activation, whose latent u and sign(u) the tap records."""
        act = self.binarizer.activation(x)
        self.tap(self, act.latent, act.sign)
        return act.value
