"""Binarizers: forward sets and scales, surrogate gradients, registry, progress hook.

Expected values are hand-computed from the formulas in ``seeds/related_methods.md``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from _binary_helpers import ToyBinaryNet, grad_of, train_toy
from mmengine.runner import IterBasedTrainLoop
from torch import nn

from cmim_dense.binary import (
    BinaryConv2d,
    approx_sign,
    build_binarizer,
    ede_sign,
    hard_sign,
    list_binarizers,
    sign_ste,
)
from cmim_dense.binary.functions import channel_mean_abs
from cmim_dense.binary.irnet import ede_schedule
from cmim_dense.engine import BinarizerProgressHook

METHODS = ["ste", "xnor", "bireal", "irnet", "react"]
SCALED_MEAN_ABS = ["xnor", "bireal", "react"]


def make(name: str | dict, in_channels: int = 2, out_channels: int = 2):
    return build_binarizer(name, in_channels, out_channels, (1, 2))


# Two output channels of four weights each, shape (2, 2, 1, 2).
W = torch.tensor([[0.2, -0.4, 0.6, -0.8], [1.0, 2.0, -3.0, 0.0]]).view(2, 2, 1, 2)
# mean|W| per channel: 2.0 / 4 = 0.5 and 6.0 / 4 = 1.5; sign(0) = -1.
W_SCALED = torch.tensor([[0.5, -0.5, 0.5, -0.5], [1.5, 1.5, -1.5, -1.5]]).view(2, 2, 1, 2)


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("name", METHODS)
def test_activation_forward_is_plus_minus_one(name):
    x = torch.tensor([-2.0, -0.5, -1e-6, 0.0, 1e-6, 0.5, 2.0]).view(1, 1, 1, 7).repeat(1, 2, 1, 1)
    out = make(name).binarize_activation(x)
    expected = torch.tensor([-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0]).view(1, 1, 1, 7)  # sign(0)=-1
    assert torch.equal(out, expected.expand_as(x))


@pytest.mark.parametrize("name", SCALED_MEAN_ABS)
def test_weight_forward_mean_abs_scale(name):
    assert torch.equal(make(name).binarize_weight(W), W_SCALED)


def test_ste_weight_forward_has_no_scale():
    expected = torch.tensor([[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0]]).view(2, 2, 1, 2)
    assert torch.equal(make("ste").binarize_weight(W), expected)


def test_irnet_weight_forward_libra_pb():
    # Channel 0: 1..8, mean 4.5, unbiased std sqrt(42 / 7); mean|W_std| = 2 / sqrt(6) = 0.816,
    #   log2 = -0.29 -> round 0 -> scale 1. All weights are positive, yet half become -1.
    # Channel 1: seven 0s and one 8, mean 1, std sqrt(56 / 7); mean|W_std| = 0.619,
    #   log2 = -0.69 -> round -1 -> scale 0.5.
    w = torch.tensor([[1.0, 2, 3, 4, 5, 6, 7, 8], [0.0, 0, 0, 0, 0, 0, 0, 8]]).view(2, 2, 2, 2)
    expected = torch.tensor(
        [[-1.0, -1, -1, -1, 1, 1, 1, 1], [-0.5, -0.5, -0.5, -0.5, -0.5, -0.5, -0.5, 0.5]]
    ).view(2, 2, 2, 2)
    assert torch.equal(make("irnet").binarize_weight(w), expected)


def test_irnet_weight_sign_at_the_mean_and_of_a_constant_channel():
    # sign(0) = -1, as OpenVINO binarizes. Channel 0: 1, 2, 3, 2, mean 2, unbiased std
    #   sqrt(2 / 3): W_std = (-1.22, 0, 1.22, 0), mean|W_std| = 0.61, log2 = -0.71 -> scale 0.5;
    #   the two weights equal to the mean get -0.5.
    # Channel 1: constant, std clamped, W_std = 0 and mean|W_std| = 0 -> scale 0: -0 throughout
    #   (-1 * 0), and no gradient.
    w = torch.tensor([[1.0, 2.0, 3.0, 2.0], [0.5, 0.5, 0.5, 0.5]]).view(2, 1, 2, 2)
    w.requires_grad_(True)
    out = make("irnet").binarize_weight(w)
    expected = torch.tensor([[-0.5, -0.5, 0.5, -0.5], [-0.0, -0.0, -0.0, -0.0]]).view(2, 1, 2, 2)
    assert torch.equal(out, expected) and torch.equal(out.signbit(), expected.signbit())
    out.backward(torch.tensor([1.0, -2.0, 0.5, 3.0, 1.0, 2.0, 3.0, 4.0]).view(2, 1, 2, 2))
    assert torch.isfinite(w.grad).all() and w.grad[0].abs().sum() > 0
    assert torch.equal(w.grad[1], torch.zeros(1, 2, 2))


def test_irnet_weight_standardisation_per_channel():
    # Zero mean and unit std per channel: a per-channel affine map (a_c > 0, any b_c) of W
    # must not change W_B, and the binary weights are balanced around each channel's mean.
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    a = torch.tensor([0.5, 2.0, 7.0, 0.01], dtype=torch.float64).view(4, 1, 1, 1)
    b = torch.tensor([5.0, -3.0, 100.0, 0.2], dtype=torch.float64).view(4, 1, 1, 1)
    irnet = make("irnet").double()
    w_bin = irnet.binarize_weight(w)
    assert torch.equal(irnet.binarize_weight(a * w + b), w_bin)
    centred = w - w.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.equal(w_bin.sign(), hard_sign(centred))
    # Gaussian weights: mean|W_std| ~ 0.8 -> scale 2^0 = 1 for every channel.
    assert torch.equal(w_bin.abs(), torch.ones_like(w))


def test_react_activation_threshold_forward():
    react = make("react")
    with torch.no_grad():
        react.threshold.copy_(torch.tensor([0.5, -0.5]).view(1, 2, 1, 1))
    # u = x - alpha; u = 0 (x at the threshold) binarizes to -1.
    x = torch.tensor([[0.25, 0.5, 2.0], [-1.0, -0.5, 0.5]]).view(1, 2, 1, 3)
    expected = torch.tensor([[-1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]]).view(1, 2, 1, 3)
    assert torch.equal(react.binarize_activation(x), expected)


# ---------------------------------------------------------------- backward

X_STE = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
G_STE = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
X_APPROX = torch.tensor([-1.2, -1.0, -0.75, -0.25, 0.0, 0.25, 0.75, 1.0, 1.2])
G_APPROX = torch.tensor([0.0, 0.0, 0.5, 1.5, 2.0, 1.5, 0.5, 0.0, 0.0])


def test_sign_ste_backward_clipped_identity():
    assert torch.equal(grad_of(sign_ste, X_STE), G_STE)


def test_approx_sign_backward_piecewise():
    assert torch.allclose(grad_of(approx_sign, X_APPROX), G_APPROX, atol=1e-6)


@pytest.mark.parametrize("name", ["ste", "xnor"])
def test_ste_activation_backward(name):
    x = X_STE.view(1, 1, 1, 7).repeat(1, 2, 1, 1)
    g = grad_of(make(name).binarize_activation, x)
    assert torch.equal(g, G_STE.view(1, 1, 1, 7).expand_as(x))


def test_ste_weight_backward():
    w = X_STE.view(7, 1, 1, 1)
    assert torch.equal(grad_of(make("ste").binarize_weight, w), G_STE.view(7, 1, 1, 1))


@pytest.mark.parametrize("name", ["bireal", "react"])
def test_approx_sign_activation_backward(name):
    x = X_APPROX.view(1, 1, 1, 9).repeat(1, 2, 1, 1)
    g = grad_of(make(name).binarize_activation, x)
    assert torch.allclose(g, G_APPROX.view(1, 1, 1, 9).expand_as(x), atol=1e-6)


@pytest.mark.parametrize(
    ("progress", "t", "k"),
    [(0.0, 0.1, 10.0), (0.5, 1.0, 1.0), (0.25, 0.1 * 10**0.5, 10**0.5), (1.0, 10.0, 1.0)],
)
def test_ede_schedule_and_backward(progress, t, k):
    assert ede_schedule(progress) == pytest.approx((t, k))
    irnet = make("irnet")
    irnet.set_progress(progress)
    assert irnet.t.item() == pytest.approx(t, rel=1e-6)
    assert irnet.k.item() == pytest.approx(k, rel=1e-6)
    xs = [-1.2, -0.5, 0.0, 0.1, 0.5, 1.0]
    x = torch.tensor(xs).view(1, 1, 1, 6).repeat(1, 2, 1, 1)
    expected = torch.tensor([k * t * (1 - math.tanh(t * v) ** 2) for v in xs]).view(1, 1, 1, 6)
    g = grad_of(irnet.binarize_activation, x)
    assert torch.allclose(g, expected.expand_as(x), rtol=1e-5, atol=1e-6)


def test_ede_hand_values():
    # progress 0: t = 0.1, k = 10 -> g(0) = 1; progress 1: t = 10, k = 1 -> g(0) = 10,
    # g(0.1) = 10 (1 - tanh(1)^2) = 4.19974.
    irnet = make("irnet")
    x = torch.tensor([0.0, 0.1]).view(1, 1, 1, 2).repeat(1, 2, 1, 1)
    assert torch.allclose(grad_of(irnet.binarize_activation, x)[0, 0, 0, 0], torch.tensor(1.0))
    irnet.set_progress(1.0)
    g = grad_of(irnet.binarize_activation, x)[0, 0, 0]
    assert torch.allclose(g, torch.tensor([10.0, 4.19974]), atol=1e-4)


def test_ede_sign_matches_finite_difference_of_tanh_surrogate():
    # EDE's backward is exactly d/dx of k tanh(t x): compare with central differences.
    x = torch.linspace(-2, 2, 41, dtype=torch.float64)
    for t_val, k_val in [(0.1, 10.0), (1.0, 1.0), (3.0, 1.0), (10.0, 1.0)]:
        t = torch.tensor(t_val, dtype=torch.float64)
        k = torch.tensor(k_val, dtype=torch.float64)
        g = grad_of(lambda v, t=t, k=k: ede_sign(v, t, k), x)
        h = 1e-6
        fd = (k * torch.tanh(t * (x + h)) - k * torch.tanh(t * (x - h))) / (2 * h)
        assert torch.allclose(g, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", SCALED_MEAN_ABS)
def test_mean_abs_weight_backward_hand_values(name):
    # One channel w = (0.5, -2), alpha = 1.25. d/dw_i sum_j G_j alpha sign(w_j)
    #   = G_i alpha 1[|w_i| <= 1] + sign(w_i) / n * sum_j G_j sign(w_j).
    w = torch.tensor([0.5, -2.0]).view(1, 1, 1, 2)
    binarizer = make(name, 1, 1)
    g = grad_of(binarizer.binarize_weight, w, torch.tensor([1.0, 1.0]).view(1, 1, 1, 2))
    assert torch.allclose(g.flatten(), torch.tensor([1.25, 0.0]))
    g = grad_of(binarizer.binarize_weight, w, torch.tensor([1.0, 0.0]).view(1, 1, 1, 2))
    assert torch.allclose(g.flatten(), torch.tensor([1.75, -0.5]))


@pytest.mark.parametrize("name", SCALED_MEAN_ABS)
def test_mean_abs_weight_backward_matches_explicit_formula(name):
    torch.manual_seed(1)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64) * 1.5
    upstream = torch.randn_like(w)
    g = grad_of(make(name).double().binarize_weight, w, upstream)

    def explicit(v):
        clipped = v.clamp(-1, 1)
        ste = torch.sign(v).detach() + clipped - clipped.detach()
        return v.abs().mean(dim=(1, 2, 3), keepdim=True) * ste

    assert torch.allclose(g, grad_of(explicit, w, upstream), rtol=1e-10, atol=1e-12)


def test_scale_part_gradcheck():
    # The smooth part of XNOR/Bi-Real/ReAct weights, mean|W| * fixed sign(W), vs finite differences.
    torch.manual_seed(2)
    w = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    fixed_sign = hard_sign(w)
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: channel_mean_abs(v) * fixed_sign, (w,))


def test_irnet_weight_backward_matches_tanh_surrogate():
    # Through Libra-PB: grad of ede_sign(W_std(W)) * scale equals autograd of the smooth
    # surrogate k tanh(t W_std(W)) * scale with the scale held fixed.
    torch.manual_seed(3)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    upstream = torch.randn_like(w)
    irnet = make("irnet").double()
    irnet.set_progress(0.6)
    dims = (1, 2, 3)

    def standardise(v):
        centred = v - v.mean(dim=dims, keepdim=True)
        return centred / centred.std(dim=dims, keepdim=True)

    with torch.no_grad():
        s = standardise(w)
        scale = 2.0 ** torch.round(torch.log2(s.abs().mean(dim=dims, keepdim=True)))

    def surrogate(v):
        return irnet.k * torch.tanh(irnet.t * standardise(v)) * scale

    g = grad_of(irnet.binarize_weight, w, upstream)
    assert torch.allclose(g, grad_of(surrogate, w, upstream), rtol=1e-9, atol=1e-12)
    assert torch.autograd.gradcheck(surrogate, (w.clone().requires_grad_(True),))


def test_react_threshold_gradient():
    # d a_B / d alpha_c = -ApproxSign'(x - alpha_c), summed over the channel's positions.
    # ch 0: x - alpha = (-0.25, 0, 1.5) -> (1.5, 2, 0) -> -3.5
    # ch 1: x - alpha = (-0.5, 0.5, 1.0) -> (1, 1, 0)  -> -2
    react = make("react")
    with torch.no_grad():
        react.threshold.copy_(torch.tensor([0.5, -0.5]).view(1, 2, 1, 1))
    x = torch.tensor([[0.25, 0.5, 2.0], [-1.0, 0.0, 0.5]]).view(1, 2, 1, 3)
    react.binarize_activation(x).sum().backward()
    assert torch.allclose(react.threshold.grad.flatten(), torch.tensor([-3.5, -2.0]))


# ---------------------------------------------------------------- registry


def test_registry_lists_the_five():
    assert set(METHODS) <= set(list_binarizers())
    assert list_binarizers() == sorted(list_binarizers())


@pytest.mark.parametrize("name", METHODS)
def test_build_by_name(name):
    binarizer = build_binarizer(name, 3, 5, (3, 3))
    assert (binarizer.in_channels, binarizer.out_channels, binarizer.kernel_size) == (3, 5, (3, 3))
    assert type(binarizer) is type(build_binarizer({"type": name}, 3, 5, (3, 3)))


def test_build_by_dict_with_kwargs():
    irnet = build_binarizer(dict(type="irnet", t_min=0.5, t_max=2.0), 2, 2, (3, 3))
    assert irnet.t.item() == pytest.approx(0.5)
    assert irnet.k.item() == pytest.approx(2.0)
    irnet.set_progress(1.0)
    assert irnet.t.item() == pytest.approx(2.0)
    assert irnet.k.item() == pytest.approx(1.0)


def test_unknown_binarizer_lists_registered():
    with pytest.raises(ValueError, match="unknown binarizer 'nope'") as info:
        build_binarizer("nope", 2, 2, (3, 3))
    assert all(name in str(info.value) for name in METHODS)


# ---------------------------------------------------------------- progress hook


def test_progress_hook_drives_irnet_per_epoch(tmp_path):
    seen: list[tuple[float, float]] = []
    model = ToyBinaryNet(
        "irnet", 1, 1, lambda conv: seen.append((conv.binarizer.t.item(), conv.binarizer.k.item()))
    )
    hooks = [dict(type="BinarizerProgressHook")]
    train_toy(model, tmp_path / "progress_hook_epochs", hooks, 0.01, 2)
    # Epoch 0: progress 0 -> (0.1, 10); epoch 1: progress 1/2 -> t = 0.1 * 10^1 = 1, k = 1.
    expected = [(0.1, 10.0), (0.1, 10.0), (1.0, 1.0), (1.0, 1.0)]
    assert seen == [pytest.approx(e, rel=1e-6) for e in expected]


def test_progress_hook_iteration_based():
    conv = BinaryConv2d(2, 1, 1, binarizer="irnet")
    loop = IterBasedTrainLoop.__new__(IterBasedTrainLoop)  # only its type is read
    runner = SimpleNamespace(model=nn.Sequential(conv), train_loop=loop, iter=0, max_iters=100)
    hook = BinarizerProgressHook(interval=10)
    hook.before_train_epoch(runner)  # ignored by iteration-based loops
    runner.iter = 50
    hook.before_train_iter(runner, batch_idx=50)
    assert conv.binarizer.t.item() == pytest.approx(1.0)  # progress 0.5
    runner.iter = 75
    hook.before_train_iter(runner, batch_idx=75)  # not on the interval: unchanged
    assert conv.binarizer.t.item() == pytest.approx(1.0)
    runner.iter = 100
    hook.before_train_iter(runner, batch_idx=100)
    assert (conv.binarizer.t.item(), conv.binarizer.k.item()) == pytest.approx((10.0, 1.0))
