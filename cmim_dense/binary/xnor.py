"""XNOR-Net (Rastegari et al. 2016): binary weights with a per-output-channel scale."""

from torch import Tensor

from cmim_dense.binary.base import Binarizer
from cmim_dense.binary.fused import mean_abs_sign
from cmim_dense.binary.registry import BINARIZERS


@BINARIZERS.register_module(name="xnor")
class XNORBinarizer(Binarizer):
    """W_B = alpha sign(W), alpha = mean(|W|) per output channel; a_B = sign(a).

    Shapes: W (C_out, C_in, kh, kw) -> W_B same shape, alpha (C_out, 1, 1, 1); activations
    (N, C_in, H, W) -> {-1, +1}. The activation scale map K of the original paper is
    omitted, as in Bi-Real and IR-Net practice (the BN after each conv absorbs it). Gradients
    flow through alpha and through sign with the clipped STE 1[|x| <= 1].
    Reference: Rastegari, Ordonez, Redmon, Farhadi, *XNOR-Net*, ECCV 2016.
    """

    surrogate = "ste"

    def binarize_weight(self, w: Tensor) -> Tensor:
        return mean_abs_sign(w)
