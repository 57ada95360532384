"""XNOR-Net (Rastegari et al. 2016): binary weights with a per-output-channel scale."""

from torch import Tensor

from cmim_dense.binary.base import Binarizer
from cmim_dense.binary.functions import channel_mean_abs, sign_ste
from cmim_dense.binary.registry import BINARIZERS


@BINARIZERS.register_module(name="xnor")
class XNORBinarizer(Binarizer):
    """W_B = alpha * sign(W), alpha = mean(|W|) per output channel; a_B = sign(a).

    The activation scale map K of the original paper is omitted, as in Bi-Real and
    IR-Net practice (the BN after each conv absorbs it). Gradients flow through alpha
    and through sign with the clipped STE.
    """

    def binarize_weight(self, w: Tensor) -> Tensor:
        return channel_mean_abs(w) * sign_ste(w)
