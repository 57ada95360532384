"""The interface every binarizer implements."""

from __future__ import annotations

from torch import Tensor, nn

from cmim_dense.binary.functions import sign_ste


class Binarizer(nn.Module):
    """Binarizes one conv layer's input activations and weights.

    A binarizer is built once per :class:`~cmim_dense.binary.BinaryConv2d`, so methods
    with learnable per-layer or per-channel parameters (ReAct thresholds, RBNN rotations,
    AdaBin sets) own them here. Subclasses override the two ``binarize_*`` methods and,
    if their backward depends on training progress, :meth:`set_progress`.

    Args:
        in_channels: C_in of the layer (activation channels).
        out_channels: C_out of the layer (weight output channels).
        kernel_size: (kh, kw) of the layer.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int]):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = tuple(kernel_size)

    def binarize_activation(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) real -> (N, C_in, H, W) in the method's binary set."""
        return sign_ste(x)

    def binarize_weight(self, w: Tensor) -> Tensor:
        """(C_out, C_in, kh, kw) real -> same shape, binary times an optional scale."""
        return sign_ste(w)

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1] (epoch / max_epochs); driven by a hook."""

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"
