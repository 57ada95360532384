"""LNS (Han et al. ICML 2020): learned weight binarization supervised by noisy sign labels.

A small binarization network maps every weight, seen with statistics of the whole weight
tensor, to a logit p; the binary weight is sign(p). The network is supervised by sign(W),
treated as a noisy label of the unknown best binary weight, with the unbiased
(noise-corrected) loss of Natarajan et al. (NeurIPS 2013). Add
:func:`lns_noisy_label_loss` (times a weight) to the task loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmim_dense.binary.base import Binarizer
from cmim_dense.binary.functions import approx_sign, channel_mean_abs, hard_sign, sign_ste
from cmim_dense.binary.registry import BINARIZERS
from cmim_dense.utils.errors import InputError

NUM_FEATURES = 5


def _check_flip_rates(rho_pos: float, rho_neg: float) -> None:
    if not (0 <= rho_pos < 1 and 0 <= rho_neg < 1 and rho_pos + rho_neg < 1):
        raise InputError(f"need 0 <= rho and rho_pos + rho_neg < 1, got {rho_pos}, {rho_neg}")


def unbiased_logistic_loss(
    logits: Tensor, noisy_labels: Tensor, rho_pos: float, rho_neg: float
) -> Tensor:
    """Per-element noise-corrected logistic loss (Natarajan et al. 2013, Lemma 1).

    l~(t, y) = [(1 - rho_{-y}) l(t, y) - rho_y l(t, -y)] / (1 - rho_pos - rho_neg),
    l(t, y) = log(1 + exp(-y t)), with rho_pos = P(label -1 | clean +1) and
    rho_neg = P(label +1 | clean -1). Its expectation over the label noise equals the clean
    loss l(t, y_clean). logits, noisy_labels (in {-1, +1}): same shape; returns that shape.
    """
    _check_flip_rates(rho_pos, rho_neg)
    positive = noisy_labels > 0
    rho_same = torch.where(positive, rho_pos, rho_neg)  # rho_y
    rho_other = torch.where(positive, rho_neg, rho_pos)  # rho_{-y}
    loss_y = F.softplus(-noisy_labels * logits)
    loss_flipped = F.softplus(noisy_labels * logits)
    return ((1 - rho_other) * loss_y - rho_same * loss_flipped) / (1 - rho_pos - rho_neg)


def weight_features(w: Tensor) -> Tensor:
    """Per-weight features of the whole tensor: (C_out, C_in, kh, kw) -> (numel, 5).

    The weight, the mean and std of its output channel, the mean of its input channel and the
    mean of its kernel position, all divided by the std of the whole tensor (scale-free).
    """
    scale = w.std().clamp_min(1e-12)
    per_out = w.flatten(1)
    channel_mean = per_out.mean(1).view(-1, 1, 1, 1)
    channel_std = per_out.std(1, unbiased=False).view(-1, 1, 1, 1)
    features = [
        w,
        channel_mean.expand_as(w),
        channel_std.expand_as(w),
        w.mean(dim=(0, 2, 3), keepdim=True).expand_as(w),
        w.mean(dim=(0, 1), keepdim=True).expand_as(w),
    ]
    return torch.stack(features, dim=-1).div(scale).view(-1, len(features))


@BINARIZERS.register_module(name="lns")
class LNSBinarizer(Binarizer):
    """W_B = mean(|W|)_c * sign(p), p = W / std(W) + MLP(features of the whole W).

    The MLP (5 -> ``hidden`` -> 1, ReLU) starts with a zero last layer, so training starts at
    sign(W) (LNS fine-tunes a trained BNN); the gradient reaches p and W through the clipped
    STE. The per-output-channel scale mean(|W|) is the XNOR / Bi-Real one of the baselines LNS
    fine-tunes (``scale=False`` gives plain {-1, +1}). Activations: sign with ApproxSign.

    Shapes: W (C_out, C_in, kh, kw) -> W_B same shape; activations (N, C_in, H, W) kept.
    Reference: Han, Wang, Xu, Xu, Wu, Xu, *Training Binary Neural Networks through Learning
    with Noisy Supervision*, ICML 2020.

    Args:
        hidden: hidden width of the binarization network (memory: numel(W) * hidden floats).
        rho_pos, rho_neg: assumed flip rates of the noisy labels sign(W); the paper treats
            them as hyper-parameters, 0.1 each is our default.
        scale: multiply by mean(|W|) per output channel.
    """

    def __init__(
        self,
        *args,
        hidden: int = 8,
        rho_pos: float = 0.1,
        rho_neg: float = 0.1,
        scale: bool = True,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        _check_flip_rates(rho_pos, rho_neg)
        self.rho_pos, self.rho_neg, self.scale = rho_pos, rho_neg, scale
        self.mapping = nn.Sequential(
            nn.Linear(NUM_FEATURES, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1)
        )
        nn.init.zeros_(self.mapping[-1].weight)
        nn.init.zeros_(self.mapping[-1].bias)
        self._last_weight: Tensor | None = None

    def logits(self, w: Tensor) -> Tensor:
        """The learned binarization logit p, same shape as ``w``."""
        base = w / w.std().clamp_min(1e-12)
        return base + self.mapping(weight_features(w)).view_as(w)

    def activation_sign(self, u: Tensor) -> Tensor:
        return approx_sign(u)

    def binarize_weight(self, w: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            self._remember(w)
        binary = sign_ste(self.logits(w))
        return channel_mean_abs(w) * binary if self.scale else binary

    @torch.jit.unused
    def _remember(self, w: Tensor) -> None:
        self._last_weight = w.detach()

    def noisy_label_loss(self) -> Tensor:
        """Mean unbiased loss of the logits of the last forward's weight against sign(W).

        Only the binarization network learns from it (the weight enters detached).
        """
        if self._last_weight is None:
            raise RuntimeError("noisy_label_loss() needs a forward of the layer first")
        w = self._last_weight
        loss = unbiased_logistic_loss(self.logits(w), hard_sign(w), self.rho_pos, self.rho_neg)
        return loss.mean()


def lns_noisy_label_loss(model: nn.Module) -> Tensor:
    """Sum of :meth:`LNSBinarizer.noisy_label_loss` over all LNS layers of ``model`` (0 if none)."""
    losses = [m.noisy_label_loss() for m in model.modules() if isinstance(m, LNSBinarizer)]
    if not losses:
        return torch.zeros(())
    return torch.stack(losses).sum()
