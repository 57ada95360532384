"""Binarizers (one registry, one small class each), BinaryConv2d and activation taps.

Every module of this package is imported here (:func:`discover_binarizers`), so a new
method is one file, ``binary/foo.py`` with one ``@BINARIZERS.register_module`` class; see
``docs/binarizers.md``.
"""

from cmim_dense.binary.base import Binarizer
from cmim_dense.binary.conv import BinaryConv2d
from cmim_dense.binary.functions import approx_sign, ede_sign, hard_sign, sign_ste
from cmim_dense.binary.registry import (
    BINARIZERS,
    build_binarizer,
    discover_binarizers,
    list_binarizers,
)
from cmim_dense.binary.taps import ActivationTaps

discover_binarizers(__name__)

__all__ = [
    "BINARIZERS",
    "ActivationTaps",
    "Binarizer",
    "BinaryConv2d",
    "approx_sign",
    "build_binarizer",
    "discover_binarizers",
    "ede_sign",
    "hard_sign",
    "list_binarizers",
    "sign_ste",
]
