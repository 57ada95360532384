"""IR-Net (Qin et al. 2020): Libra Parameter Binarization and the Error Decay Estimator."""

import math

import torch
from torch import Tensor

from cmim_dense.binary.base import Binarizer
from cmim_dense.binary.functions import ede_sign
from cmim_dense.binary.fused import irnet_weight
from cmim_dense.binary.registry import BINARIZERS


def ede_schedule(progress: float, t_min: float = 0.1, t_max: float = 10.0) -> tuple[float, float]:
    """EDE's (t, k) at ``progress = epoch / epochs``.

    t = Tmin * 10^(progress * log10(Tmax / Tmin)), k = max(1 / t, 1). RBNN's training-aware sign
    uses the same schedule with Tmin = 1e-2.
    """
    t = t_min * 10 ** (progress * math.log10(t_max / t_min))
    return t, max(1.0 / t, 1.0)


class EDEScheduledBinarizer(Binarizer):
    """A binarizer whose sign backward is EDE's, with the epoch-dependent (t, k) of IR-Net.

    t and k are buffers, set by :meth:`set_progress` (driven by
    :class:`~cmim_dense.engine.BinarizerProgressHook`), so a resumed run continues with the
    same schedule.

    Args:
        t_min, t_max: the schedule's range of t (IR-Net: 0.1 and 10).
    """

    def __init__(self, *args, t_min: float = 0.1, t_max: float = 10.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.t_min, self.t_max = t_min, t_max
        t, k = ede_schedule(0.0, t_min, t_max)
        self.register_buffer("t", torch.tensor(t))
        self.register_buffer("k", torch.tensor(k))

    def set_progress(self, progress: float) -> None:
        t, k = ede_schedule(progress, self.t_min, self.t_max)
        self.t.fill_(t)
        self.k.fill_(k)


@BINARIZERS.register_module(name="irnet")
class IRNetBinarizer(EDEScheduledBinarizer):
    """Libra-PB weights and EDE gradients for weights and activations.

    Forward:
        W_std = (W - mean) / std per output channel,
        W_B = sign(W_std) * 2^round(log2(mean(|W_std|))),  a_B = sign(a).
    Backward (both): g = k t (1 - tanh(t x)^2) with (t, k) from :func:`ede_schedule`,
    updated every epoch by :class:`~cmim_dense.engine.BinarizerProgressHook`.
    Shapes: W (C_out, C_in, kh, kw) and activations (N, C_in, H, W), each kept.
    Reference: Qin, Gong, Liu, Shen, Wei, Yu, Song, *Forward and Backward Information
    Retention for Accurate Binary Neural Networks*, CVPR 2020.
    """

    def activation_sign(self, u: Tensor) -> Tensor:
        return ede_sign(u, self.t, self.k)

    def binarize_weight(self, w: Tensor) -> Tensor:
        return irnet_weight(w, self.t, self.k)
