"""ReActNet (Liu et al. 2020): RSign with learnable channel thresholds, on Bi-Real's maths.

RPReLU, the other half of the method, sits after each residual add in the backbone's
``react`` block (:class:`cmim_dense.models.backbones.bin_resnet.RPReLU`).
"""

from typing import Optional

import torch
from torch import Tensor, nn

from cmim_dense.binary.bireal import BiRealBinarizer
from cmim_dense.binary.fused import shifted_sign
from cmim_dense.binary.registry import BINARIZERS


@BINARIZERS.register_module(name="react")
class ReActBinarizer(BiRealBinarizer):
    """RSign: a_B = sign(u), u = a - alpha_c, with a learnable alpha (1, C_in, 1, 1).

    Everything else is Bi-Real's: ApproxSign backward at u, and W_B = mean(|W|)_c sign(W)
    per output channel (as in the public ReActNet code). Shapes: activations (N, C_in, H, W),
    weights (C_out, C_in, kh, kw), each kept.
    Reference: Liu, Shen, Savvides, Cheng, *ReActNet*, ECCV 2020.
    """

    surrogate = ""  # u = a - alpha is not u = a

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.threshold = nn.Parameter(torch.zeros(1, self.in_channels, 1, 1))

    def activation_threshold(self) -> tuple[Optional[Tensor], Optional[Tensor]]:  # noqa: UP045
        return self.threshold, None

    def binarize_activation(self, x: Tensor) -> Tensor:
        return shifted_sign(x, self.threshold, True)
