"""Fused forward/backward of the binarizers' elementwise maths, one autograd Function each.

Autograd through the plain formulas runs one kernel per operator forward and backward, and
keeps every intermediate; each Function here computes its output with fewer passes over the
tensor and saves only what its backward reads. The values are those of the plain formulas
bit for bit (the standardisation's std and AdaBin's alpha, taken as norms, aside, and the
subnormal case of :func:`_standardized`), and the gradients are their exact derivatives
(``tests/test_fused.py`` checks both against the unfused path). The backwards of AdaBin's
activation, weight and Maxout, of IR-Net's weight and of ``mean_abs_sign`` write into their
own buffers (``out=``), so they are not differentiable again: ``create_graph=True`` through
them raises. Like :mod:`cmim_dense.binary.functions`, each has a plain TorchScript
branch (inference only) and is one call for FX.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor

from cmim_dense.binary.functions import (
    approx_sign_grad,
    channel_mean_abs,
    ede_grad_unscaled,
    ede_sign,
    hard_sign,
    ste_grad,
)


class _ShiftedSign(torch.autograd.Function):
    """sign(x - c), c a 0-d or (1, C, 1, 1) tensor, with the clipped STE or ApproxSign at u."""

    @staticmethod
    def forward(x: Tensor, center: Tensor, approx: bool) -> Tensor:
        # x's dtype, as before the subtraction promoted it (a float32 center, a float16 x)
        return hard_sign(x - center).to(x.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, center, approx = inputs
        ctx.approx = approx
        ctx.save_for_backward(x, center)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, center = ctx.saved_tensors
        u = x - center
        grad_x = approx_sign_grad(grad, u) if ctx.approx else ste_grad(grad, u)
        grad_center = -grad_x.sum_to_size(center.shape) if ctx.needs_input_grad[1] else None
        return grad_x, grad_center, None


@register_notrace_function
def shifted_sign(x: Tensor, center: Tensor, approx: bool) -> Tensor:
    """sign(x - center) in {-1, +1}: (N, C, H, W) with a 0-d or (1, C, 1, 1) center.

    Backward at u = x - center: ApproxSign max(0, 2 - 2|u|) if ``approx``, else the clipped
    STE 1[|u| <= 1]; the center gets minus the sum of x's gradient over what it broadcasts.
    """
    if torch.jit.is_scripting():
        return hard_sign(x - center)
    return _ShiftedSign.apply(x, center, approx)


class _AdaBinActivation(torch.autograd.Function):
    """alpha sign(u) + beta, u = (x - beta) / alpha, with the clipped STE at u.

    Forward and backward write two new tensors each (one per operator wrote five and seven):
    a new tensor costs its page faults on every activation. The backward's sums:
    sum g sign(u) = 2 sum(g 1[u > 0]) - sum g, and sum g 1[|u| > 1] = sum g - sum dL/dx.
    """

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        u = torch.sub(x, beta).div_(alpha)
        ctx.save_for_backward(u)  # the one tensor the backward reads
        # beta + alpha * (+-1) is exactly alpha + beta or beta - alpha (in mixed precision,
        # alpha and beta are first rounded to x's dtype)
        signs = hard_sign(u)
        return torch.addcmul(beta, signs, alpha, out=signs)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (u,) = ctx.saved_tensors
        grad_x = ste_grad(grad, u)
        # sums in at least float32: rounded to bfloat16 or float16 (autocast), the differences
        # below would cancel
        acc = torch.promote_types(grad.dtype, torch.float32)
        sum_g = grad.sum(dtype=acc)
        above = torch.ops.aten.threshold_backward(grad, u, 0)  # g 1[u > 0]
        sum_g_sign = above.sum(dtype=acc) * 2 - sum_g
        sum_g_u_inside = torch.mul(grad_x, u, out=above).sum(dtype=acc)
        return grad_x, sum_g_sign - sum_g_u_inside, sum_g - grad_x.sum(dtype=acc)


@register_notrace_function
def adabin_activation(x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """AdaBin's a_B = alpha sign((x - beta) / alpha) + beta; alpha, beta 0-d; x's shape out.

    Backward: da_B/dx = 1[|u| <= 1], da_B/dbeta = 1[|u| > 1],
    da_B/dalpha = sign(u) - u 1[|u| <= 1] (summed over x for the scalars).
    """
    if torch.jit.is_scripting():
        return torch.addcmul(beta, hard_sign((x - beta) / alpha), alpha)
    return _AdaBinActivation.apply(x, alpha, beta)


class _Maxout(torch.autograd.Function):
    """p_c relu(x) - n_c relu(-x) for (N, C, H, W) x and (C,) slopes p, n; saves x.

    Forward and backward write three new tensors each (one per operator wrote four and nine):
    a new tensor costs its page faults on every activation.
    """

    @staticmethod
    def forward(ctx, x: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        ctx.save_for_backward(x, pos, neg)
        return _maxout_value(x, pos, neg)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, pos, neg = ctx.saved_tensors
        slope_pos, slope_neg = pos.view(1, -1, 1, 1), neg.view(1, -1, 1, 1)
        # ATen's relu backward passes grad where its input is > 0: the two halves, exactly
        # (relu'(0) = 0: no slope at exactly 0), in float kernels only (see hard_sign).
        # Each half's slope gradient multiplies by relu(x) or relu(-x), never by x: an
        # infinite x of the other half would give 0 * inf.
        grad_x = torch.ops.aten.threshold_backward(grad, x, 0).mul_(slope_pos)
        half = F.relu(x)
        grad_pos = half.mul_(grad).sum((0, 2, 3))  # autograd's g relu(x)
        half = torch.neg(x, out=half).relu_()  # relu(-x), in relu(x)'s memory
        grad_below = torch.ops.aten.threshold_backward(grad, half, 0)
        grad_x.addcmul_(grad_below, slope_neg)
        grad_neg = grad_below.mul_(half).sum((0, 2, 3)).neg_()  # sum of g min(x, 0)
        return grad_x, grad_pos, grad_neg


def _maxout_value(x: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """p_c relu(x) + n_c min(x, 0): one half is exactly 0, so each value is x p_c or x n_c
    exactly (infinities too), as ``x * where(x > 0, p, n)`` gives it, in float kernels only."""
    slope_pos, slope_neg = pos.view(1, -1, 1, 1), neg.view(1, -1, 1, 1)
    return torch.mul(F.relu(x), slope_pos).addcmul_(x.clamp(max=0), slope_neg)


@register_notrace_function
def maxout(x: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """AdaBin's Maxout pos_c relu(x) - neg_c relu(-x): (N, C, H, W) x, (C,) pos and neg."""
    if torch.jit.is_scripting():
        return _maxout_value(x, pos, neg)
    return _Maxout.apply(x, pos, neg)


class _MeanAbsSign(torch.autograd.Function):
    """mean(|W|)_c sign(W) per output channel, clipped STE through the sign.

    Forward and backward write two weight-sized tensors each (autograd of the formula wrote
    three and seven): at 32 px the weights outweigh the activations, and each new tensor costs
    its page faults every step.
    """

    @staticmethod
    def forward(w: Tensor) -> Tensor:
        return hard_sign(w).mul_(channel_mean_abs(w))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        # The output is what the conv keeps for its own backward: saving it costs nothing.
        ctx.save_for_backward(inputs[0], output)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        w, out = ctx.saved_tensors
        dims = list(range(1, w.dim()))
        alpha = out.flatten(1)[:, :1].abs().view(-1, *([1] * len(dims)))  # |±alpha| = alpha
        # ste_grad passes grad or writes 0, so scaling after it gives autograd's values
        through_sign = ste_grad(grad, w).mul_(alpha)
        signs = hard_sign(w)
        grad_alpha = signs.mul_(grad).sum(dims, keepdim=True)
        by_alpha = torch.sgn(w, out=signs).mul_(grad_alpha / w[0].numel())
        return through_sign.add_(by_alpha)


@register_notrace_function
def mean_abs_sign(w: Tensor) -> Tensor:
    """XNOR / Bi-Real weights: (C_out, C_in, kh, kw) -> mean(|W|)_c sign(W), same shape.

    Backward: g mean(|W|)_c 1[|W| <= 1] + sgn(W) sum_c(g sign(W)) / n, n = C_in kh kw.
    """
    if torch.jit.is_scripting():
        return channel_mean_abs(w) * hard_sign(w)
    return _MeanAbsSign.apply(w)


def _standardized(w: Tensor, inplace: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(W - mean) / std per output channel of (O, ...) W: the (O, n) result, the clamped std
    (O, 1) it was divided by, and the unclamped one. std is unbiased (as torch.std), taken as
    ||W - mean|| / sqrt(n - 1): torch's std reduction (Welford) ran 13x slower than a norm on
    a ResNet-18 weight on CPU (torch 2.14, AMD Zen 4). ``inplace`` divides W - mean in place,
    which autograd cannot differentiate (the norm's backward reads it): only without autograd.
    Where W equals its channel's mean the result is -0.
    """
    flat = w.flatten(1)
    # (mean - W) / -std: (W - mean) / std exactly (IEEE negation and division are symmetric),
    # but -0 where W equals the mean, where W - mean gives +0: copysign(c, W_std) is then
    # c hard_sign(W_std), -c at 0 included (see _IRNetWeight). One case stays +0: a quotient
    # that underflows (|W - mean| under 2^-150 std in float32, so a subnormal difference),
    # where copysign keeps the sign of W - mean and hard_sign gives -1.
    centred = flat.mean(1, keepdim=True) - flat
    raw_std = torch.linalg.vector_norm(centred, dim=1, keepdim=True) / math.sqrt(flat.shape[1] - 1)
    std = raw_std.clamp_min(1e-12)
    neg_std = -std
    return (centred.div_(neg_std) if inplace else centred / neg_std), std, raw_std


class _Standardize(torch.autograd.Function):
    """(W - mean) / std per output channel, with the backward written out.

    Autograd through mean, std and the division kept four (O, n) tensors and ran seven
    passes; :func:`_through_standardization` runs four.
    """

    @staticmethod
    def forward(ctx, w: Tensor) -> Tensor:
        y, std, raw_std = _standardized(w, inplace=True)
        ctx.save_for_backward(y, std, raw_std)
        return y.view_as(w)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        y, std, raw_std = ctx.saved_tensors
        return _through_standardization(grad.reshape(y.shape), 1.0, y, std, raw_std).view_as(grad)


def _through_standardization(
    g: Tensor,
    scale: Tensor | float,
    y: Tensor,
    std: Tensor,
    raw_std: Tensor,
    out: Tensor | None = None,
) -> Tensor:
    """dL/dW of y = (W - mean) / s per row of (O, n) ``y`` (as :func:`_standardized` gives y,
    s and the unclamped s, (O, 1) each) for the upstream G = g ``scale``, ``scale`` a number
    or a 0-d or (O, 1) tensor: (G - mean(G) - y sum(G y) / (n - 1)) / s, the y term absent
    where s was clamped (the clamp passes no gradient to s). ``scale`` / s scales the final
    two passes, in at least float32 (a large scale over a small s overflows float16); the
    result goes to ``out`` if given (g's memory, where the caller owns g).
    """
    n = y.shape[1]
    acc = torch.promote_types(y.dtype, torch.float32)
    coef = scale / std.to(acc)
    dot = torch.linalg.vecdot(g, y, dim=1).unsqueeze(1)  # sum(g y) per channel
    through_std = torch.where(raw_std >= 1e-12, dot / (n - 1), 0.0)  # clamp_min's own mask
    grad_w = torch.addcmul(g.mean(1, keepdim=True, dtype=acc) * -coef, g, coef, out=out)
    return grad_w.addcmul_(y, through_std * coef, value=-1)


@register_notrace_function
def standardize_per_channel(w: Tensor) -> Tensor:
    """(W - mean) / std per output channel (unbiased std, as torch.std): (O, ...) -> same
    shape, the std clamped to at least 1e-12."""
    if torch.jit.is_scripting():
        return _standardized(w, inplace=False)[0].view_as(w)
    return _Standardize.apply(w)


class _IRNetWeight(torch.autograd.Function):
    """IR-Net's binary weight c sign(y) per output channel, y = (W - mean) / std the
    standardised weight and c = 2^round(log2(mean |y|)) held fixed, with EDE's derivative
    e(y) = k t (1 - tanh(t y)^2) through the sign and the standardisation's backward.

    The gradient through the sign, g e(y) c, goes through the standardisation's backward
    (:func:`_through_standardization`). The scaled sign is one copysign, and e's constant
    4 k t with c and 1 / s scales the final two passes: forward and backward run 7 and 9
    passes over the weight, where standardisation, EDE sign and scaling as three autograd
    nodes ran 8 and 12 (at 32 px, ResNet-18's weights outweigh its activations).
    """

    @staticmethod
    def forward(ctx, w: Tensor, t: Tensor, k: Tensor) -> Tensor:
        y, std, raw_std = _standardized(w, inplace=True)
        scale = _power_of_two_mean_abs(y)
        ctx.save_for_backward(y, std, raw_std, scale, t, k)
        return torch.copysign(scale, y).view_as(w)  # y's zeros are -0: -c there

    @staticmethod
    def backward(ctx, grad: Tensor):
        y, std, raw_std, scale, t, k = ctx.saved_tensors
        core = ede_grad_unscaled(grad.reshape(y.shape), y, t)  # g e(y) / (4 k t)
        acc = torch.promote_types(y.dtype, torch.float32)  # 4 k t c overflows float16
        constant = (4 * k * t).to(acc) * scale.to(acc)
        grad_w = _through_standardization(core, constant, y, std, raw_std, out=core)
        return grad_w.view_as(grad), None, None


def _power_of_two_mean_abs(y: Tensor) -> Tensor:
    """2^round(log2(mean |y|)) per output channel of an (O, ...) ``y``: (O, 1, ...). mean |y|
    is :func:`channel_mean_abs`, not a 1-norm: ``vector_norm(y, 1)`` ran 1.2-3x slower over
    ResNet-18's weights (two sittings, torch 2.14, AMD Zen 4)."""
    return torch.pow(2.0, torch.round(torch.log2(channel_mean_abs(y))))


@register_notrace_function
def irnet_weight(w: Tensor, t: Tensor, k: Tensor) -> Tensor:
    """IR-Net's Libra-PB weight of a (C_out, ...) ``w``, same shape:
    sign(W_std) 2^round(log2(mean |W_std|)) per output channel, EDE's (t, k) gradient through
    the sign and the standardisation (the power-of-two scale passes none)."""
    if torch.jit.is_scripting() or torch.compiler.is_compiling():  # script skips the 2nd
        return _irnet_weight_value(w, t, k)
    return _IRNetWeight.apply(w, t, k)


def _irnet_weight_value(w: Tensor, t: Tensor, k: Tensor) -> Tensor:
    """sign(W_std) c through :func:`standardize_per_channel` and :func:`ede_sign`, in w's
    shape: inductor compiled this 1.4x faster than :class:`_IRNetWeight` (IR-Net's 32 px step,
    torch 2.14, AMD Zen 4), and 2x faster than the same on (C_out, n) rows."""
    w_std = standardize_per_channel(w)
    return ede_sign(w_std, t, k).mul_(_power_of_two_mean_abs(w_std).detach())


def _rprelu_value(x: Tensor, shift_in: Tensor, slope: Tensor, shift_out: Tensor) -> Tensor:
    """PReLU(x - shift_in) + shift_out, as ``F.prelu`` computes it."""
    return F.prelu(x - shift_in, slope) + shift_out


class _RPReLU(torch.autograd.Function):
    """ReActNet's RPReLU, PReLU(x - gamma_c) + zeta_c, with the backward written out: autograd
    negated a whole activation-sized gradient before reducing it to gamma's (C,) and ran
    ATen's slow PReLU backward; this saves u = x - gamma only."""

    @staticmethod
    def forward(ctx, x: Tensor, shift_in: Tensor, slope: Tensor, shift_out: Tensor) -> Tensor:
        u = x - shift_in
        weight = slope.view(1, -1, 1, 1)
        ctx.save_for_backward(u, weight)
        out = torch.ops.aten._prelu_kernel(u, weight)
        if out.dtype == torch.promote_types(out.dtype, shift_out.dtype):
            return out.add_(shift_out)
        return out + shift_out

    @staticmethod
    def backward(ctx, grad: Tensor):
        u, weight = ctx.saved_tensors
        # ATen's _prelu_kernel_backward gives the same values but ran 4.7x slower than these
        # four float passes on CPU (torch 2.14, AMD Zen 4): the gradient where u > 0, the rest
        # (exactly g where u <= 0), the slope's share a g added to the first, g u summed.
        grad_u = torch.ops.aten.threshold_backward(grad, u, 0)
        grad_below = torch.sub(grad, grad_u)
        grad_u.addcmul_(grad_below, weight)
        sum_c = (0, 2, 3)
        grad_slope = grad_below.mul_(u).sum(sum_c)
        grad_shift_in = grad_u.sum(sum_c, keepdim=True).neg_()  # sum of -g: exact
        return grad_u, grad_shift_in, grad_slope, grad.sum(sum_c, keepdim=True)


@register_notrace_function
def rprelu(x: Tensor, shift_in: Tensor, slope: Tensor, shift_out: Tensor) -> Tensor:
    """RPReLU: PReLU(x - shift_in) + shift_out for (N, C, H, W) x, (1, C, 1, 1) shifts and
    (C,) PReLU slopes; x's shape out."""
    if torch.jit.is_scripting():
        return _rprelu_value(x, shift_in, slope, shift_out)
    return _RPReLU.apply(x, shift_in, slope, shift_out)


def _adabin_set(w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """AdaBin's set per output channel of a (C_out, ...) weight: beta - W (w's shape),
    beta = mean(W), alpha = ||W - beta||_2 / sqrt(n) clamped to at least 1e-8 (a constant
    channel divides by no 0 and passes alpha no gradient) and the unclamped alpha, each
    (C_out, 1, ..., 1). The norm is one pass that writes no (W - beta)^2."""
    dims = list(range(1, w.dim()))
    beta = w.mean(dims, keepdim=True)
    negated = beta - w  # see _standardized: -(W - beta), with +0 where W equals beta
    raw_alpha = torch.linalg.vector_norm(negated, dim=dims, keepdim=True) / math.sqrt(w[0].numel())
    return negated, beta, raw_alpha.clamp_min(1e-8), raw_alpha


def adabin_weight_set(w: Tensor) -> tuple[Tensor, Tensor]:
    """AdaBin's per-output-channel set of a (C_out, ...) weight: beta = mean(W) and
    alpha = ||W - beta||_2 / sqrt(n), at least 1e-8; each (C_out, 1, ..., 1)."""
    _, beta, alpha, _ = _adabin_set(w)
    return beta, alpha


class _AdaBinWeight(torch.autograd.Function):
    """AdaBin's binary weight alpha sign(u) + beta, u = (W - beta) / alpha per output channel,
    with EDE's derivative e(u) through the sign and the backward written out.

    With n weights per channel, upstream g, ge = g e(u) and s = sign(u), since
    d alpha / dW = u / n and d beta / dW = 1 / n:
    dL/dW = ge + (sum g - sum ge) / n + u (sum g s - sum ge u) / n, the last term absent
    where alpha was clamped. Forward and backward run 6 and 12 passes over the weight and
    keep u: autograd through the set, the division and the sign kept about ten weight-sized
    tensors. sum g s is 2 sum(g 1[u > 0]) - sum g, and e's constant 4 k t scales the final
    pass.
    """

    @staticmethod
    def forward(ctx, w: Tensor, t: Tensor, k: Tensor) -> Tensor:
        negated, beta, alpha, raw_alpha = _adabin_set(w)
        u = negated.div_(-alpha)  # (W - beta) / alpha, -0 where W equals beta
        ctx.save_for_backward(u, raw_alpha, t, k)
        # alpha sign(u) + beta: copysign gives -alpha at u = -0, as hard_sign does at 0
        return torch.copysign(alpha, u).add_(beta)

    @staticmethod
    def backward(ctx, grad: Tensor):
        u, raw_alpha, t, k = ctx.saved_tensors
        dims, n = list(range(1, u.dim())), u[0].numel()
        acc = torch.promote_types(u.dtype, torch.float32)  # the sums' dtype, as in the activation
        core = ede_grad_unscaled(grad, u, t)  # g e(u) / (4 k t)
        scale = 4 * k * t
        sum_g = grad.sum(dims, keepdim=True, dtype=acc)
        by_beta = (sum_g - core.sum(dims, keepdim=True, dtype=acc) * scale) / n
        above = torch.ops.aten.threshold_backward(grad, u, 0)  # g 1[u > 0]
        sum_gs = above.sum(dims, keepdim=True, dtype=acc) * 2 - sum_g
        sum_geu = torch.mul(core, u, out=above).sum(dims, keepdim=True, dtype=acc) * scale
        by_alpha = torch.where(raw_alpha >= 1e-8, (sum_gs - sum_geu) / n, 0.0)
        return torch.addcmul(by_beta, core, scale, out=core).addcmul_(u, by_alpha), None, None


@register_notrace_function
def adabin_weight(w: Tensor, t: Tensor, k: Tensor) -> Tensor:
    """AdaBin's binary weight of a (C_out, C_in, kh, kw) ``w``, same shape: values in
    {beta - alpha, beta + alpha} per output channel, EDE's (t, k) gradient through the sign
    and the exact gradients of alpha and beta.

    Compiled, it is the plain formula: inductor fuses its autograd backward into a few loops,
    and through the written-out backward the compiled 32 px step of AdaBin's ResNet-18 was
    1.5x slower (2.42x against 1.64x the float step).
    """
    if torch.jit.is_scripting() or torch.compiler.is_compiling():  # script skips the 2nd
        return _adabin_weight_value(w, t, k)
    return _AdaBinWeight.apply(w, t, k)


def _adabin_weight_value(w: Tensor, t: Tensor, k: Tensor) -> Tensor:
    """alpha sign((W - beta) / alpha) + beta, EDE through the sign, autograd through the rest."""
    beta, alpha = adabin_weight_set(w)
    return alpha * ede_sign((w - beta) / alpha, t, k) + beta
