"""Bi-Real Net (Liu et al. 2018): ApproxSign activations, magnitude-aware weights.

The real-valued shortcut around every binary conv is the backbone's ``basic`` block.
"""

from torch import Tensor

from cmim_dense.binary.base import Binarizer
from cmim_dense.binary.functions import approx_sign
from cmim_dense.binary.fused import mean_abs_sign
from cmim_dense.binary.registry import BINARIZERS


@BINARIZERS.register_module(name="bireal")
class BiRealBinarizer(Binarizer):
    """a_B = sign(a) with d/da = max(0, 2 - 2|a|); W_B = mean(|W|)_c sign(W) per out-channel.

    Shapes: activations (N, C_in, H, W), weights (C_out, C_in, kh, kw), each kept. The weight
    gradient is magnitude-aware: it flows through the scale mean(|W|) and through sign with
    the clipped STE, scaled by mean(|W|).
    Reference: Liu, Wu, Luo, Yang, Liu, Cheng, *Bi-Real Net*, ECCV 2018.
    """

    surrogate = "approx"

    def activation_sign(self, u: Tensor) -> Tensor:
        return approx_sign(u)

    def binarize_weight(self, w: Tensor) -> Tensor:
        return mean_abs_sign(w)
