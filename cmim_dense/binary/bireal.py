"""Bi-Real Net (Liu et al. 2018): ApproxSign activations, magnitude-aware weights.

The real-valued shortcut around every binary conv is the backbone's ``basic`` block.
"""

from torch import Tensor

from cmim_dense.binary.base import Binarizer
from cmim_dense.binary.functions import approx_sign, channel_mean_abs, sign_ste
from cmim_dense.binary.registry import BINARIZERS


@BINARIZERS.register_module(name="bireal")
class BiRealBinarizer(Binarizer):
    """a_B = sign(a) with d/da = max(0, 2 - 2|a|); W_B = mean(|W|) * sign(W) per out-channel.

    The weight gradient is magnitude-aware: it flows through the scale mean(|W|) and
    through sign with the clipped STE, scaled by mean(|W|).
    """

    def activation_sign(self, u: Tensor) -> Tensor:
        return approx_sign(u)

    def binarize_weight(self, w: Tensor) -> Tensor:
        return channel_mean_abs(w) * sign_ste(w)
