"""Binarizers (one registry, one small class each), BinaryConv2d and activation taps."""

from cmim_dense.binary import (  # noqa: F401  (registration)
    adabin,
    bireal,
    irnet,
    lns,
    rbnn,
    react,
    sdbnn,
    ste,
    threshold_shift,
    xnor,
)
from cmim_dense.binary.base import Binarizer
from cmim_dense.binary.conv import BinaryConv2d
from cmim_dense.binary.functions import approx_sign, ede_sign, hard_sign, sign_ste
from cmim_dense.binary.registry import BINARIZERS, build_binarizer, list_binarizers
from cmim_dense.binary.taps import ActivationTaps

__all__ = [
    "BINARIZERS",
    "ActivationTaps",
    "Binarizer",
    "BinaryConv2d",
    "approx_sign",
    "build_binarizer",
    "ede_sign",
    "hard_sign",
    "list_binarizers",
    "sign_ste",
]
