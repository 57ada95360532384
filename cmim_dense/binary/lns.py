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
    # With y = +-1 and softplus(m) = softplus(-m) + m for the margin m = y t, and
    # rho_y + rho_{-y} = rho_pos + rho_neg, the loss is
    # softplus(-m) - rho_y m / (1 - rho_pos - rho_neg), and rho_y m = c m + d t with
    # c = (rho_pos + rho_neg) / 2, d = (rho_pos - rho_neg) / 2 (y^2 = 1): no per-label select.
    denominator = 2 * (1 - rho_pos - rho_neg)
    margin = noisy_labels * logits
    loss = torch.add(F.softplus(-margin), margin, alpha=-(rho_pos + rho_neg) / denominator)
    return loss.sub(logits, alpha=(rho_pos - rho_neg) / denominator)


def feature_terms(w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The binarization network's five per-weight features, factored by what each varies
    with, all divided by the std of the whole tensor (scale-free).

    For w (C_out, C_in, kh, kw): ``w / std`` (same shape; feature 0), ``per_out`` (C_out, 2),
    the mean and std of each output channel (features 1, 2), ``per_in`` (C_in,), the mean of
    each input channel (feature 3), and ``per_pos`` (kh, kw), the mean at each kernel position
    (feature 4). Weight (o, i, y, x) has features (w, per_out[o], per_in[i], per_pos[y, x]).
    """
    scale = w.std().clamp_min(1e-12)
    per_channel = w.flatten(1)
    per_out = torch.stack([per_channel.mean(1), per_channel.std(1, unbiased=False)], dim=1)
    return w / scale, per_out / scale, w.mean(dim=(0, 2, 3)) / scale, w.mean(dim=(0, 1)) / scale


def _hidden(
    x0: Tensor, per_out: Tensor, per_in: Tensor, per_pos: Tensor, w1: Tensor, b1: Tensor
) -> Tensor:
    """The hidden units relu(w1 f + b1) of every weight: (C_out, C_in, kh * kw, hidden).

    w1 (hidden, 5) is applied to the factored features without stacking them: the input
    channel's and kernel position's terms and the bias form a (C_in, kh * kw, hidden) table,
    the output channel's a (C_out, hidden) one; only w / std varies per weight.
    """
    o, i, k = x0.shape[0], x0.shape[1], per_pos.numel()
    table = torch.addcmul(b1, per_pos.reshape(1, k, 1), w1[:, 4])
    table = torch.addcmul(table, per_in.reshape(i, 1, 1), w1[:, 3])
    z = torch.addcmul(table.unsqueeze(0), x0.reshape(o, i, k, 1), w1[:, 0])
    z += (per_out @ w1[:, 1:3].t()).view(o, 1, 1, -1)
    return z.relu_()


def _logits(x0: Tensor, hidden: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """p = w / std + w2 h + b2 (the last layer, hidden -> 1): x0's shape."""
    return x0 + torch.addmv(b2, hidden.view(-1, hidden.shape[-1]), w2[0]).view_as(x0)


class _LNSLogits(torch.autograd.Function):
    """The logits p twice: for the binary weight (gradient to the features and the network)
    and for the noisy-label loss (gradient to the network only: there the weight is a label).

    One forward of the network serves both, and the backward is written out: autograd through
    stacked features and ``nn.Linear`` kept (numel, 5) and (numel, hidden) tensors and ran the
    network twice per step (LNS cost 3x a float ResNet-18 step). New (numel, hidden) tensors
    cost most (fresh pages), so the backward reads one saved mask and writes none that big.

    With M = 1[h > 0] (numel, hidden) and g an upstream gradient of p, hidden unit j gets
    g w2_j M_j, so every gradient is a sum of g M_j against one feature:
    dL/dW1[j, c] = w2_j S[j, c] with S[j, c] = sum_n g_n M_nj f_nc, dL/db1 = w2 S_b, and since
    h_j = M_j (W1[j] f + b1_j), dL/dw2_j = sum_c W1[j, c] S[j, c] + b1_j S_b[j].
    """

    @staticmethod
    def forward(ctx, x0, per_out, per_in, per_pos, w1, b1, w2, b2):
        hidden = _hidden(x0, per_out, per_in, per_pos, w1, b1)
        logits = _logits(x0, hidden, w2, b2)
        mask = hidden.sign_()  # h >= 0: 1[h > 0], in h's memory (h is not needed again)
        ctx.save_for_backward(x0, per_out, per_in, per_pos, w1, b1, w2, mask)
        ctx.set_materialize_grads(False)
        return logits, logits.clone()

    @staticmethod
    def backward(ctx, grad_logits, grad_loss_logits):
        x0, per_out, per_in, per_pos, w1, b1, w2, mask = ctx.saved_tensors
        o, i, k, width = mask.shape
        flat = mask.view(-1, width)
        out: list[Tensor | None] = [None] * 8
        present = [g.reshape(o, i, k) for g in (grad_logits, grad_loss_logits) if g is not None]
        if not present:
            return tuple(out)
        # g of the network (both logits train it) and of the features (only the first)
        grad_net = present[0] if len(present) == 1 else present[0] + present[1]
        grad_features = None
        if grad_logits is not None and any(ctx.needs_input_grad[:4]):
            grad_features = grad_logits.reshape(o, i, k)
        # Sums of g M per output channel, (C_out, 1 or 2, hidden): one pass over M.
        grads = [grad_net] if grad_features is None else [grad_net, grad_features]
        per_channel = torch.stack(grads, 1).view(o, len(grads), i * k)
        per_channel = torch.bmm(per_channel, mask.view(o, i * k, width))
        if any(ctx.needs_input_grad[4:]):
            against = [grad_net * x0.view(o, i, k), grad_net * per_in.view(1, i, 1)]
            against.append(grad_net * per_pos.view(1, 1, k))
            sums = flat.t() @ torch.stack(against, dim=-1).view(-1, 3)  # features 0, 3, 4
            sum_out = per_channel[:, 0]
            sum_bias = sum_out.sum(0)
            by_out = sum_out.t() @ per_out  # features 1, 2
            s = torch.stack([sums[:, 0], by_out[:, 0], by_out[:, 1], sums[:, 1], sums[:, 2]], 1)
            out[4] = w2[0].unsqueeze(1) * s
            out[5] = w2[0] * sum_bias
            out[6] = ((w1 * s).sum(1) + b1 * sum_bias).unsqueeze(0)
            out[7] = grad_net.sum().reshape(1)
        if grad_features is not None:
            coef = w2[0].unsqueeze(1) * w1  # dp/df through each hidden unit: (hidden, 5)
            through = (flat @ coef[:, [0, 3, 4]]).view(o, i, k, 3)
            g = grad_features
            out[0] = (g + g * through[..., 0]).view_as(x0)
            out[1] = per_channel[:, -1] @ coef[:, 1:3]
            out[2] = (g * through[..., 1]).sum((0, 2))
            out[3] = (g * through[..., 2]).sum((0, 1)).view_as(per_pos)
        return tuple(out)


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
        self._last: tuple[Tensor, Tensor] | None = None

    def logits(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """The learned binarization logit p (``w``'s shape), twice: the first for the binary
        weight, the second, equal, for the noisy-label loss (no gradient to ``w``)."""
        x0, per_out, per_in, per_pos = feature_terms(w)
        first, last = self.mapping[0], self.mapping[2]
        params = (first.weight, first.bias, last.weight, last.bias)
        if torch.jit.is_scripting():  # inference: the same forward, without autograd
            hidden = _hidden(x0, per_out, per_in, per_pos, first.weight, first.bias)
            logits = _logits(x0, hidden, last.weight, last.bias)
            return logits, logits
        return _LNSLogits.apply(x0, per_out, per_in, per_pos, *params)

    def activation_sign(self, u: Tensor) -> Tensor:
        return approx_sign(u)

    def binarize_weight(self, w: Tensor) -> Tensor:
        logits, loss_logits = self.logits(w)
        if not torch.jit.is_scripting():
            self._remember(w, loss_logits)
        binary = sign_ste(logits)
        return channel_mean_abs(w) * binary if self.scale else binary

    @torch.jit.unused
    def _remember(self, w: Tensor, loss_logits: Tensor) -> None:
        self._last = (loss_logits, w.detach())

    def noisy_label_loss(self) -> Tensor:
        """Mean unbiased loss of the last forward's logits against sign(W).

        Only the binarization network learns from it (the weight is the label). The logits
        are those of the last forward, graph included: add this loss to that forward's loss
        and call backward once (as the classifier does); after a forward without autograd it
        has no gradient.
        """
        if self._last is None:
            raise RuntimeError("noisy_label_loss() needs a forward of the layer first")
        logits, w = self._last
        return unbiased_logistic_loss(logits, hard_sign(w), self.rho_pos, self.rho_neg).mean()


def lns_noisy_label_loss(model: nn.Module) -> Tensor:
    """Sum of :meth:`LNSBinarizer.noisy_label_loss` over all LNS layers of ``model`` (0 if none)."""
    losses = [m.noisy_label_loss() for m in model.modules() if isinstance(m, LNSBinarizer)]
    if not losses:
        return torch.zeros(())
    return torch.stack(losses).sum()
