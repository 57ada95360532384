"""Each binary conv as bit-packable signs and the float algebra around them (no engine here).

Every binarizer of the project computes ``conv(a_B, W_B)`` with (see
:class:`~cmim_dense.binary.Binarizer`)

    a_B = gamma * s_a + delta,   s_a = sign(u) in {-1, +1},  u = (x - center) / spread
    W_B[c] = alpha_c * s_w[c] + beta_c,   s_w in {-1, +1}      (two values per output channel)

with gamma, delta, spread scalars. An xnor-popcount engine computes the integer
Y = conv_{pad -1}(s_a, s_w) over the input padded with -1, while PyTorch pads a_B with 0. With
P the indicator of the padded border, C_s = conv(P, s_w), C_1 = conv(P, 1) and K = C_in kh kw:

    conv_{pad 0}(a_B, W_B) = alpha (gamma (Y + C_s) + delta (S - C_s))
                             + beta (gamma (Y_1 + C_1) + delta (K - C_1)),

where S = sum(s_w) per output channel and Y_1 is the binary conv with an all-ones kernel. C_s
depends only on which kernel taps fall outside the image, so it is stored as the per-tap sums
T[c, i, j] = sum_k s_w[c, k, i, j] (C_out x kh x kw values) and expanded by the engine.
sign(u) > 0 needs no division: for spread > 0 it is x - center > 0, for spread < 0 it is
center - x > 0 (exactly the negation in IEEE arithmetic).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cmim_dense.binary import BinaryConv2d
from cmim_dense.utils.errors import InputError


class NotExportableError(InputError):
    """A layer or method that cannot be expressed exactly as a bit-packed conv plus float ops."""


@dataclass
class FoldedBinaryConv:
    """One :class:`~cmim_dense.binary.BinaryConv2d` in engine terms (see the module docstring).

    Attributes:
        bits: (C_out, C_in, kh, kw) bool, True where s_w = +1.
        weight_scale: alpha, (C_out,) float32.
        weight_offset: beta, (C_out,) float32 (all 0 except for AdaBin).
        center: (C_in,) float32 threshold of the activations.
        flip: the spread is negative, so +1 means x < center.
        act_scale: gamma, the activation levels' scale (1 except for AdaBin).
        act_offset: delta, the activation levels' offset (0 except for AdaBin).
        weight: W_B (C_out, C_in, kh, kw) float32, for the float reference graph.
        stride, padding, dilation: (h, w) pairs of the conv.
    """

    bits: np.ndarray
    weight_scale: np.ndarray
    weight_offset: np.ndarray
    center: np.ndarray
    flip: bool
    act_scale: float
    act_offset: float
    weight: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @property
    def signs(self) -> np.ndarray:
        """s_w as float32 in {-1, +1}, (C_out, C_in, kh, kw)."""
        return np.where(self.bits, 1.0, -1.0).astype(np.float32)

    def tap_sums(self) -> np.ndarray:
        """T (C_out, 1, kh, kw): s_w summed over input channels, the border-correction kernel."""
        return self.signs.sum(axis=1, keepdims=True)


def _scalar(value: Tensor | float | None, what: str, method: str, default: float) -> float:
    if value is None:  # the binarizer's way of saying "identity"
        return default
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise NotExportableError(
                f"{method}: per-channel activation {what} cannot be folded into one binary conv"
            )
        return float(value.item())
    return float(value)


def _method(conv: BinaryConv2d) -> str:
    return type(conv.binarizer).__name__


@torch.no_grad()
def fold_binary_conv(conv: BinaryConv2d) -> FoldedBinaryConv:
    """Fold ``conv`` (in its current state) into bits and float constants.

    Raises:
        NotExportableError: grouped convs, a bias, per-channel activation levels or spreads, a
            zero spread, or weights with more than two values per output channel.
    """
    method = _method(conv)
    if conv.groups != 1 or conv.bias is not None:
        raise NotExportableError(f"{method}: only bias-free, ungrouped binary convs export")
    weight = conv.binary_weight().detach().float().cpu()
    flat = weight.flatten(1)
    hi, lo = flat.max(dim=1).values, flat.min(dim=1).values
    if not bool(((flat == hi[:, None]) | (flat == lo[:, None])).all()):
        raise NotExportableError(
            f"{method}: its binary weights take more than two values per output channel"
        )
    bits = (flat == hi[:, None]).view_as(weight)
    # alpha * (+1) + beta = hi and alpha * (-1) + beta = lo; a channel of one value is all +1.
    scale, offset = (hi - lo) / 2, (hi + lo) / 2
    single = hi == lo
    scale, offset = torch.where(single, hi, scale), torch.where(single, 0.0, offset)

    center, spread = conv.binarizer.activation_threshold()
    spread = _scalar(spread, "spread", method, 1.0)
    if spread == 0 or not np.isfinite(spread):
        raise NotExportableError(f"{method}: activation spread {spread} has no sign")
    gamma, delta = conv.binarizer.activation_levels()
    gamma, delta = _scalar(gamma, "level", method, 1.0), _scalar(delta, "level", method, 0.0)
    center = torch.as_tensor(0.0 if center is None else center, dtype=torch.float32)
    center = center.detach().cpu()
    center = center.reshape(-1).expand(conv.in_channels) if center.numel() == 1 else center
    return FoldedBinaryConv(
        bits=bits.numpy(),
        weight_scale=scale.numpy().astype(np.float32),
        weight_offset=offset.numpy().astype(np.float32),
        center=center.reshape(conv.in_channels).numpy().astype(np.float32),
        flip=spread < 0,
        act_scale=gamma,
        act_offset=delta,
        weight=weight.numpy(),
        stride=tuple(conv.stride),
        padding=tuple(conv.padding),
        dilation=tuple(conv.dilation),
    )
