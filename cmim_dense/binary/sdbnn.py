"""SD-BNN (Xue et al. 2022): learnable self-distribution shifts before sign, no scales."""

from typing import Optional

import torch
from torch import Tensor, nn

from cmim_dense.binary.base import Binarizer
from cmim_dense.binary.functions import approx_sign, sign_ste
from cmim_dense.binary.fused import shifted_sign
from cmim_dense.binary.registry import BINARIZERS


@BINARIZERS.register_module(name="sdbnn")
class SDBNNBinarizer(Binarizer):
    """a_B = sign(u), u = a + act_shift; W_B = sign(W + weight_shift); outputs exactly {-1, +1}.

    Activation Self Distribution: ``act_shift`` (1, C_in, 1, 1), one shift per input channel.
    Weight Self Distribution: ``weight_shift`` (C_out, 1, 1, 1), one shift per output channel.
    Both start at 0 (plain BNN) and are learned by gradient. A positive shift moves more
    entries to +1. Backward: ApproxSign (Bi-Real, max(0, 2 - 2|x|)) for activations, the
    usual choice of the ReActNet-style baselines SD-BNN builds on; the clipped STE
    1[|x| <= 1] for weights. No scaling factors, as in the paper.
    Shapes: activations (N, C_in, H, W), weights (C_out, C_in, kh, kw), each kept.
    Reference: Xue, Lu, Chang, Wei, Wei, *Self-Distribution Binary Neural Networks*,
    arXiv:2103.02394, 2021.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.act_shift = nn.Parameter(torch.zeros(1, self.in_channels, 1, 1))
        self.weight_shift = nn.Parameter(torch.zeros(self.out_channels, 1, 1, 1))

    def activation_threshold(self) -> tuple[Optional[Tensor], Optional[Tensor]]:  # noqa: UP045
        return -self.act_shift, None  # u = a - (-shift) = a + shift, exactly

    def activation_sign(self, u: Tensor) -> Tensor:
        return approx_sign(u)

    def binarize_activation(self, x: Tensor) -> Tensor:
        return shifted_sign(x, -self.act_shift, True)

    def binarize_weight(self, w: Tensor) -> Tensor:
        return sign_ste(w + self.weight_shift)
