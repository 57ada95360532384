"""BNN (Hubara et al. 2016): plain sign with the clipped straight-through estimator."""

from cmim_dense.binary.base import Binarizer
from cmim_dense.binary.registry import BINARIZERS


@BINARIZERS.register_module(name="ste")
class STEBinarizer(Binarizer):
    """a_B = sign(a), W_B = sign(W); backward: ``1[|x| <= 1]`` for both. No scales."""
