"""AdaBin (Tu et al. ECCV 2022): adaptive binary sets {beta - alpha, beta + alpha} per layer.

:class:`Maxout`, the method's nonlinearity, goes after each residual add of the backbone block
(where Bi-Real has none and ReActNet has RPReLU), as in the public AdaBin ResNet-18.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from cmim_dense.binary.fused import adabin_activation, adabin_weight, adabin_weight_set, maxout
from cmim_dense.binary.irnet import EDEScheduledBinarizer
from cmim_dense.binary.registry import BINARIZERS


@BINARIZERS.register_module(name="adabin")
class AdaBinBinarizer(EDEScheduledBinarizer):
    """Binary sets centred at beta with half-width alpha, for weights and activations.

    Weights, per output channel (n = C_in * kh * kw):
        beta_w = mean(W),  alpha_w = ||W - beta_w||_2 / sqrt(n)   (the paper's equalisation),
        W_B = alpha_w * sign((W - beta_w) / alpha_w) + beta_w,
        in {beta_w - alpha_w, beta_w + alpha_w}.
        The sign uses IR-Net's EDE gradient with the (t, k) schedule (Tmin 0.1, Tmax 10) of the
        public AdaBin code; alpha_w and beta_w pass their gradients too.
    Activations, one learnable scalar pair per layer (paper init alpha_a = 1, beta_a = 0):
        a_B = alpha_a * sign(u) + beta_a,  u = (a - beta_a) / alpha_a,
        in {beta_a - alpha_a, beta_a + alpha_a}. The sign has the clipped STE 1[|u| <= 1], so
        da_B/da = 1[|u| <= 1], da_B/dbeta_a = 1[|u| > 1], da_B/dalpha_a = sign(u) - u 1[|u| <= 1]
        (the public code uses ApproxSign on u instead of the clipped STE).

    Shapes: W (C_out, C_in, kh, kw) and activations (N, C_in, H, W), each kept.
    Reference: Tu, Chen, Ren, Wang, *AdaBin: Improving Binary Neural Networks with Adaptive
    Binary Sets*, ECCV 2022.

    Args:
        t_min, t_max: EDE schedule range for the weight sign.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha_a = nn.Parameter(torch.tensor(1.0))
        self.beta_a = nn.Parameter(torch.tensor(0.0))

    @staticmethod
    def weight_set(w: Tensor) -> tuple[Tensor, Tensor]:
        """(beta_w, alpha_w), each (C_out, 1, 1, 1), of a (C_out, C_in, kh, kw) weight."""
        return adabin_weight_set(w)

    def activation_threshold(self) -> tuple[Optional[Tensor], Optional[Tensor]]:  # noqa: UP045
        return self.beta_a, self.alpha_a

    def activation_levels(self) -> tuple[Optional[Tensor], Optional[Tensor]]:  # noqa: UP045
        return self.alpha_a, self.beta_a

    def binarize_activation(self, x: Tensor) -> Tensor:
        return adabin_activation(x, self.alpha_a, self.beta_a)

    def binarize_weight(self, w: Tensor) -> Tensor:
        return adabin_weight(w, self.t, self.k)


class Maxout(nn.Module):
    """AdaBin's nonlinearity: gamma_pos * ReLU(x) - gamma_neg * ReLU(-x), per channel.

    Args:
        channels: C of the (N, C, H, W) input (4-d; the output has the same shape).
        pos_init, neg_init: initial slopes of the positive and negative parts (paper: 1, 0.25).
    """

    def __init__(self, channels: int, pos_init: float = 1.0, neg_init: float = 0.25):
        super().__init__()
        self.pos_scale = nn.Parameter(torch.full((channels,), pos_init))
        self.neg_scale = nn.Parameter(torch.full((channels,), neg_init))

    def forward(self, x: Tensor) -> Tensor:
        return maxout(x, self.pos_scale, self.neg_scale)
