"""Unbalanced activations (Kim et al. CVPR 2021): a shifted sign threshold on a base method."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from cmim_dense.binary.base import Binarizer
from cmim_dense.binary.fused import shifted_sign
from cmim_dense.binary.registry import BINARIZERS, build_binarizer
from cmim_dense.utils.errors import InputError


@BINARIZERS.register_module(name="threshold_shift")
class ThresholdShiftBinarizer(Binarizer):
    """a_B = base_sign(u), u = a - theta (minus the base's own centre); base weights.

    The base binarizer (``'xnor'``, ``'bireal'``, ``'ste'``, ... or a config dict) supplies the
    weight rule, its activation levels and the activation backward rule, evaluated at u. Since
    sign(0) = -1, a = theta maps to -1 and only values above theta to +1.

    Shapes: activations (N, C_in, H, W), weights (C_out, C_in, kh, kw), each kept.
    Reference: Kim, Park, Lee, Kim, *Improving Accuracy of Binary Neural Networks using
    Unbalanced Activation Distribution*, CVPR 2021.

    Args:
        base: the base method, a registered name or config dict.
        theta: the threshold. The paper studies fixed shifts of the threshold and reports no
            single default, so 0.0 (no shift) is the default and the value belongs in the
            config; a positive theta makes -1 the majority, a negative one +1.
        learnable: learn one theta per input channel, (1, C_in, 1, 1), initialised to
            ``theta``. The paper finds the BN bias before the sign can absorb a learnable
            threshold, so the default is a fixed one.
    """

    def __init__(
        self,
        *args,
        base: str | dict = "xnor",
        theta: float = 0.0,
        learnable: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        base_name = base if isinstance(base, str) else dict(base).get("type")
        if base_name == "threshold_shift":
            raise InputError("threshold_shift cannot use itself as its base binarizer")
        self.base = build_binarizer(base, self.in_channels, self.out_channels, self.kernel_size)
        value = torch.full((1, self.in_channels, 1, 1), float(theta))
        if learnable:
            self.theta = nn.Parameter(value)
        else:
            self.register_buffer("theta", value)
        # u = a - theta and the base's plain sign: one fused shifted sign.
        plain = self.base.activation_threshold() + self.base.activation_levels()
        self.fused = self.base.surrogate if all(v is None for v in plain) else ""

    def set_progress(self, progress: float) -> None:
        self.base.set_progress(progress)

    def activation_threshold(self) -> tuple[Optional[Tensor], Optional[Tensor]]:  # noqa: UP045
        center, spread = self.base.activation_threshold()
        if center is None:
            return self.theta, spread
        return self.theta + center, spread

    def activation_levels(self) -> tuple[Optional[Tensor], Optional[Tensor]]:  # noqa: UP045
        return self.base.activation_levels()

    def binarize_activation(self, x: Tensor) -> Tensor:
        if self.fused != "":
            return shifted_sign(x, self.theta, self.fused == "approx")
        return self.activation(x).value

    def activation_sign(self, u: Tensor) -> Tensor:
        return self.base.activation_sign(u)

    def binarize_weight(self, w: Tensor) -> Tensor:
        return self.base.binarize_weight(w)
