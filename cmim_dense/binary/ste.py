"""BNN (Hubara et al. 2016): plain sign with the clipped straight-through estimator."""

from cmim_dense.binary.base import Binarizer
from cmim_dense.binary.registry import BINARIZERS


@BINARIZERS.register_module(name="ste")
class STEBinarizer(Binarizer):
    """BNN: a_B = sign(a), W_B = sign(W); backward ``1[|x| <= 1]`` for both. No scales.

    Shapes: activations (N, C_in, H, W), weights (C_out, C_in, kh, kw), each mapped to
    {-1, +1} in its own shape. Reference: Hubara, Courbariaux, Soudry, El-Yaniv, Bengio,
    *Binarized Neural Networks*, NeurIPS 2016.
    """

    surrogate = "ste"
