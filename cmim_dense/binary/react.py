"""ReActNet (Liu et al. 2020): RSign with learnable channel thresholds.

RPReLU, the other half of the method, sits after each residual add in the backbone's
``react`` block (:class:`cmim_dense.models.backbones.bin_resnet.RPReLU`).
"""

from typing import Optional

import torch
from torch import Tensor, nn

from cmim_dense.binary.base import Binarizer
from cmim_dense.binary.functions import approx_sign, channel_mean_abs, sign_ste
from cmim_dense.binary.registry import BINARIZERS


@BINARIZERS.register_module(name="react")
class ReActBinarizer(Binarizer):
    """a_B = sign(u), u = a - alpha_c, with learnable alpha (1, C_in, 1, 1) and ApproxSign backward;
    W_B = mean(|W|) * sign(W) per output channel, as in the public ReActNet code.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.threshold = nn.Parameter(torch.zeros(1, self.in_channels, 1, 1))

    def activation_threshold(self) -> tuple[Optional[Tensor], Optional[Tensor]]:  # noqa: UP045
        return self.threshold, None

    def activation_sign(self, u: Tensor) -> Tensor:
        return approx_sign(u)

    def binarize_weight(self, w: Tensor) -> Tensor:
        return channel_mean_abs(w) * sign_ste(w)
