"""The interface every binarizer implements."""

from __future__ import annotations

from typing import NamedTuple, Optional

from torch import Tensor, nn

from cmim_dense.binary.functions import sign_ste


class BinaryActivation(NamedTuple):
    """One layer's activation binarization, all (N, C_in, H, W).

    latent: u, the real tensor whose sign is taken (the CMIM paper's a_F).
    sign: sign(u) in exactly {-1, +1}, with the method's surrogate gradient (the paper's a_B).
    value: what the conv reads, ``scale * sign + offset`` (``sign`` itself for most methods).
    """

    latent: Tensor
    sign: Tensor
    value: Tensor


class Binarizer(nn.Module):
    """Binarizes one conv layer's input activations and weights.

    A binarizer is built once per :class:`~cmim_dense.binary.BinaryConv2d`, so methods
    with learnable per-layer or per-channel parameters (ReAct thresholds, RBNN rotations,
    AdaBin sets) own them here.

    Activations follow one form for every method::

        u   = (x - center) / spread         the latent real tensor   (activation_threshold)
        a_B = scale * sign(u) + offset      the binary activation    (activation_levels)

    with sign(u) = +1 if u > 0 else -1, and the method's surrogate gradient
    (:meth:`activation_sign`). ``center`` is a 0-d tensor or (1, C_in, 1, 1); ``spread``,
    ``scale`` and ``offset`` are 0-d tensors; None stands for the identity (0 or 1), so a
    method without them pays no arithmetic, and the model scripts (TorchScript types them
    ``Optional[Tensor]``). The same form is what an inference engine folds into a
    bit-packed convolution (:mod:`cmim_dense.deploy`), and ``u`` is the a_F that the CMIM taps
    read, so a_B = sign(a_F) exactly (the paper's Eq. 11).

    Subclasses override :meth:`activation_threshold`, :meth:`activation_levels`,
    :meth:`activation_sign` and :meth:`binarize_weight` as their method needs, and
    :meth:`set_progress` if their backward depends on training progress.

    Args:
        in_channels: C_in of the layer (activation channels).
        out_channels: C_out of the layer (weight output channels).
        kernel_size: (kh, kw) of the layer.
    """

    # The activation surrogate when it is one of the fused shifted signs ('ste' or 'approx')
    # and u = x: lets a method that only shifts the threshold (threshold_shift) fuse it.
    surrogate: str = ""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int]):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = tuple(kernel_size)

    def activation_threshold(self) -> tuple[Optional[Tensor], Optional[Tensor]]:  # noqa: UP045
        """(center, spread) of u = (x - center) / spread; None stands for 0 and 1 (u = x)."""
        return None, None

    def activation_levels(self) -> tuple[Optional[Tensor], Optional[Tensor]]:  # noqa: UP045
        """(scale, offset) of a_B = scale * sign(u) + offset; None stands for 1 and 0."""
        return None, None

    def activation_sign(self, u: Tensor) -> Tensor:
        """sign(u) in {-1, +1} with the method's surrogate gradient (default: clipped STE)."""
        return sign_ste(u)

    def activation(self, x: Tensor) -> BinaryActivation:
        """(N, C_in, H, W) real input -> its latent u, sign(u) and the binary value."""
        center, spread = self.activation_threshold()
        u = x
        if center is not None:
            u = u - center
        if spread is not None:
            u = u / spread
        sign = self.activation_sign(u)
        scale, offset = self.activation_levels()
        value = sign
        if scale is not None:
            value = value * scale
        if offset is not None:
            value = value + offset
        return BinaryActivation(u, sign, value)

    def binarize_activation(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) real -> (N, C_in, H, W) in the method's binary set.

        The same value and gradients as ``activation(x).value``; a method overrides it with
        one fused autograd function where that saves passes over the activations.
        """
        return self.activation(x).value

    def binarize_weight(self, w: Tensor) -> Tensor:
        """(C_out, C_in, kh, kw) real -> same shape, binary times an optional scale."""
        return sign_ste(w)

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1] (epoch / max_epochs); driven by a hook."""

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"
