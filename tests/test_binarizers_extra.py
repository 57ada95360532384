"""RBNN, SD-BNN, AdaBin, threshold shift and LNS: defining formulas, gradients, hooks.

Expected values are hand-computed from the formulas in the binarizers' docstrings.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from _binary_helpers import ToyBinaryNet, grad_of, train_toy
from mmengine.runner import IterBasedTrainLoop
from torch import nn

from cmim_dense.binary import BinaryConv2d, build_binarizer, hard_sign, list_binarizers
from cmim_dense.binary.adabin import Maxout
from cmim_dense.binary.irnet import ede_schedule
from cmim_dense.binary.lns import (
    LNSBinarizer,
    _LNSLogits,
    feature_terms,
    lns_noisy_label_loss,
    unbiased_logistic_loss,
)
from cmim_dense.binary.rbnn import factorize
from cmim_dense.engine import RBNNRotationHook

NEW_METHODS = ["rbnn", "sdbnn", "adabin", "threshold_shift", "lns"]
SQRT2 = math.sqrt(2.0)


def make(name: str | dict, in_channels: int = 2, out_channels: int = 2, kernel=(1, 2)):
    return build_binarizer(name, in_channels, out_channels, kernel)


def clipped_ste(v: torch.Tensor) -> torch.Tensor:
    """sign(v) forward, d/dv = 1[|v| <= 1]: the reference for sign_ste."""
    clipped = v.clamp(-1, 1)
    return hard_sign(v).detach() + clipped - clipped.detach()


def rbnn_surrogate(x: torch.Tensor, t: float, k: float) -> torch.Tensor:
    """A smooth F with F'(x) = k max(0, sqrt(2) t - t^2 |x|): RBNN's backward as a function."""
    inside = k * torch.sign(x) * (SQRT2 * t * x.abs() - t * t * x * x / 2)
    return torch.where(x.abs() <= SQRT2 / t, inside, k * torch.sign(x))


# ---------------------------------------------------------------- registry and BinaryConv2d


def test_all_methods_registered():
    assert set(NEW_METHODS) <= set(list_binarizers())


def _levels(binarizer, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The method's allowed values: activations (2,), weights (C_out, 2)."""
    kind = type(binarizer).__name__
    ones = torch.tensor([-1.0, 1.0])
    mean_abs = w.abs().mean(dim=(1, 2, 3)).view(-1, 1)
    if kind == "RBNNBinarizer":
        return ones, binarizer.scale.detach().view(-1, 1) * ones
    if kind == "SDBNNBinarizer":
        return ones, ones.expand(w.shape[0], 2)
    if kind == "AdaBinBinarizer":
        alpha, beta = binarizer.alpha_a.detach(), binarizer.beta_a.detach()
        beta_w, alpha_w = binarizer.weight_set(w)
        return beta + alpha * ones, beta_w.view(-1, 1) + alpha_w.view(-1, 1) * ones
    if kind == "ThresholdShiftBinarizer":  # the base method's weights
        base = type(binarizer.base).__name__
        return ones, (ones.expand(w.shape[0], 2) if base == "STEBinarizer" else mean_abs * ones)
    if kind == "LNSBinarizer":
        return ones, mean_abs * ones
    raise AssertionError(f"no level rule for {kind}")


def _in_levels(values: torch.Tensor, levels: torch.Tensor) -> bool:
    """values (C, ...) each equal (to 1e-6) one of the two levels (C, 2) of its row."""
    flat = values.reshape(levels.shape[0], -1, 1)
    return bool(((flat - levels.unsqueeze(1)).abs().min(-1).values < 1e-6).all())


@pytest.mark.parametrize(
    "cfg",
    [
        *NEW_METHODS,
        dict(type="threshold_shift", base="bireal", theta=0.2, learnable=True),
        dict(type="threshold_shift", base="ste", theta=-0.1),
    ],
)
def test_binary_conv_forward_backward_and_binary_sets(cfg):
    torch.manual_seed(0)
    conv = BinaryConv2d(3, 4, 3, padding=1, binarizer=cfg)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    out = conv(x)
    assert out.shape == (2, 4, 5, 5)
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.isfinite(conv.weight.grad).all() and conv.weight.grad.abs().sum() > 0
    binarizer = conv.binarizer
    with torch.no_grad():
        a_bin = binarizer.binarize_activation(x)
        w_bin = binarizer.binarize_weight(conv.weight)
    act_levels, weight_levels = _levels(binarizer, conv.weight.detach())
    assert _in_levels(a_bin.flatten().unsqueeze(0), act_levels.unsqueeze(0))
    assert _in_levels(w_bin, weight_levels)
    # Every output channel uses both of its levels only (no third value sneaks in).
    assert all(len(torch.unique(row)) <= 2 for row in w_bin.flatten(1))


# ---------------------------------------------------------------- RBNN


@pytest.mark.parametrize(
    ("n", "n1", "n2"), [(9, 3, 3), (12, 3, 4), (7, 1, 7), (72, 8, 9), (4608, 64, 72)]
)
def test_rbnn_factorize_closest(n, n1, n2):
    assert factorize(n) == (n1, n2)


@pytest.mark.parametrize(
    ("progress", "t", "k"), [(0.0, 0.01, 100.0), (2 / 3, 1.0, 1.0), (1.0, 10.0, 1.0)]
)
def test_rbnn_schedule(progress, t, k):
    assert ede_schedule(progress, t_min=1e-2) == pytest.approx((t, k))
    rbnn = make("rbnn")
    rbnn.set_progress(progress)
    assert (rbnn.t.item(), rbnn.k.item()) == pytest.approx((t, k), rel=1e-5)


@pytest.mark.parametrize(
    ("progress", "xs", "grads"),
    [
        # t = 10, k = 1: F'(x) = max(0, 14.1421 - 100 |x|).
        (1.0, [0.0, 0.05, -0.1, 0.2, -3.0], [10 * SQRT2, 10 * SQRT2 - 5, 10 * SQRT2 - 10, 0, 0]),
        # t = 0.01, k = 100: F'(x) = max(0, 1.41421 - 0.01 |x|).
        (0.0, [0.0, 1.0, -50.0, 200.0], [SQRT2, SQRT2 - 0.01, SQRT2 - 0.5, 0.0]),
    ],
)
def test_rbnn_sign_backward_hand_values(progress, xs, grads):
    rbnn = make("rbnn", 1, 1)
    rbnn.set_progress(progress)
    x = torch.tensor(xs).view(1, 1, 1, -1)
    assert torch.equal(rbnn.binarize_activation(x), hard_sign(x))
    g = grad_of(rbnn.binarize_activation, x)
    assert torch.allclose(g.flatten(), torch.tensor(grads), atol=1e-4)


def test_rbnn_rotated_weight_formula():
    torch.manual_seed(1)
    rbnn = make("rbnn", 2, 3, (2, 3)).double()  # n = 12 -> 3 x 4
    w = torch.randn(3, 2, 2, 3, dtype=torch.float64)
    flat = w.flatten(1)
    std = (flat - flat.mean(1, keepdim=True)) / (flat - flat.mean(1, keepdim=True)).std(
        1, keepdim=True
    )
    expected = []
    for i in range(3):
        x = std[i].view(3, 4)
        alpha = abs(math.sin(rbnn.theta[i].item()))
        expected.append(x + alpha * (rbnn.R1.t() @ x @ rbnn.R2 - x))
    assert torch.allclose(rbnn.rotated_weight(w), torch.stack(expected).view_as(w), atol=1e-12)


def test_rbnn_weight_forward_and_gradient_match_surrogate():
    # W_B = scale * sign(W~); backward = autograd of scale * F(W~(W, theta)) with F' the
    # training-aware rule, through the standardisation and the rotation.
    torch.manual_seed(2)
    rbnn = make("rbnn", 2, 3, (3, 3)).double()
    rbnn.set_progress(0.8)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    upstream = torch.randn_like(w)
    out = rbnn.binarize_weight(w)
    scale = w.abs().mean(dim=(1, 2, 3), keepdim=True)  # set at the first forward
    assert torch.allclose(rbnn.scale.detach(), scale)
    assert torch.allclose(out, scale * hard_sign(rbnn.rotated_weight(w)))
    t, k = rbnn.t.item(), rbnn.k.item()

    def surrogate(v):
        return rbnn.scale * rbnn_surrogate(rbnn.rotated_weight(v), t, k)

    assert torch.allclose(
        grad_of(rbnn.binarize_weight, w, upstream), grad_of(surrogate, w, upstream)
    )
    rbnn.theta.grad = None
    (rbnn.binarize_weight(w) * upstream).sum().backward()
    theta_grad = rbnn.theta.grad.clone()
    rbnn.theta.grad = None
    (surrogate(w) * upstream).sum().backward()
    assert torch.allclose(theta_grad, rbnn.theta.grad)
    assert torch.autograd.gradcheck(surrogate, (w.clone().requires_grad_(True),))


def _l1_objective(rbnn, w):
    """sum_i tr(B_i^T R1^T W_i R2) with B = sign(.): the L1 norm of the rotated weights."""
    return (rbnn.R1.t() @ rbnn._standardize(w) @ rbnn.R2).abs().sum().item()


def test_rbnn_hook_keeps_rotations_orthogonal_and_increases_objective():
    torch.manual_seed(3)
    model = nn.Sequential(
        BinaryConv2d(8, 6, 3, binarizer="rbnn"), BinaryConv2d(6, 5, 1, binarizer="rbnn")
    )
    hook = RBNNRotationHook(num_steps=2)
    conv = model[0]
    history = [_l1_objective(conv.binarizer, conv.weight.detach())]
    for _ in range(4):
        assert hook.update(model) == 2
        history.append(_l1_objective(conv.binarizer, conv.weight.detach()))
        for layer in model:
            for r in (layer.binarizer.R1, layer.binarizer.R2):
                assert torch.allclose(r @ r.t(), torch.eye(len(r)), atol=1e-5)
    # Each alternating step maximises over B, then R1, then R2: never decreasing.
    assert all(b >= a - 1e-3 for a, b in itertools.pairwise(history))
    assert history[-1] > history[0]
    assert (conv.binarizer.n1, conv.binarizer.n2) == (8, 9)


def test_rbnn_procrustes_step_is_optimal():
    # After an update, with B fixed, no random orthogonal R1 beats the solved one.
    torch.manual_seed(4)
    conv = BinaryConv2d(4, 3, 3, binarizer="rbnn")
    rbnn = conv.binarizer.double()
    w = conv.weight.detach().double()
    rbnn.update_rotation(w, num_steps=1)
    x = rbnn._standardize(w)
    b = hard_sign(rbnn.R1.t() @ x @ rbnn.R2)

    def objective(r1):
        return (b * (r1.t() @ x @ rbnn.R2)).sum().item()

    best = objective(rbnn.R1)
    for _ in range(20):
        q, _ = torch.linalg.qr(torch.randn(rbnn.n1, rbnn.n1, dtype=torch.float64))
        assert objective(q) <= best + 1e-9


def test_rbnn_flip_ratio_hand_count():
    # n = 4 -> 2 x 2. R1 swaps the rows, R2 = I, alpha = |sin(theta)|.
    # Channel 0: [[1, 2], [-1, -2]] -> swapped [[-1, -2], [1, 2]]: all 4 signs flip.
    # Channel 1: [[1, -1], [2, -2]] -> swapped [[2, -2], [1, -1]]: no flip. Ratio 4 / 8.
    rbnn = make("rbnn", 1, 2, (2, 2))
    w = torch.tensor([[1.0, 2, -1, -2], [1.0, -1, 2, -2]]).view(2, 1, 2, 2)  # zero channel means
    with torch.no_grad():
        rbnn.R1.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        rbnn.R2.copy_(torch.eye(2))
        rbnn.theta.fill_(math.pi / 2)  # alpha = 1: fully rotated
    assert rbnn.flip_ratio(w) == pytest.approx(0.5)
    with torch.no_grad():
        rbnn.theta.fill_(0.0)  # alpha = 0: W~ = standardised W, same signs as W
    assert rbnn.flip_ratio(w) == 0.0
    with torch.no_grad():
        rbnn.theta.copy_(torch.tensor([math.pi / 2, 0.0]).view(2, 1, 1, 1))
    rbnn.binarize_weight(w)
    assert rbnn.flip_ratio() == pytest.approx(0.5)  # reads the last forward's weight


def test_rbnn_flip_ratio_in_unit_interval_for_random_weights():
    torch.manual_seed(5)
    conv = BinaryConv2d(16, 8, 3, binarizer=dict(type="rbnn", seed=0))
    ratio = conv.binarizer.flip_ratio(conv.weight.detach())
    assert 0.0 <= ratio <= 1.0
    # A random rotation of a random weight flips about half of the signs.
    with torch.no_grad():
        conv.binarizer.theta.fill_(math.pi / 2)
    assert 0.3 < conv.binarizer.flip_ratio(conv.weight.detach()) < 0.7
    with pytest.raises(RuntimeError, match="run a forward first"):
        build_binarizer("rbnn", 2, 2, (3, 3)).flip_ratio()


def test_rbnn_rejects_grouped_weights():
    rbnn = make("rbnn", 4, 4, (3, 3))
    with pytest.raises(ValueError, match="groups=1"):
        rbnn.binarize_weight(torch.randn(4, 2, 3, 3))


def test_rbnn_hook_schedule_epochs_and_iterations():
    conv = BinaryConv2d(4, 2, 3, binarizer="rbnn")
    runner = SimpleNamespace(model=nn.Sequential(conv), train_loop=object(), epoch=0, iter=0)
    hook = RBNNRotationHook(epoch_interval=2, iter_interval=5)

    def r1():
        return conv.binarizer.R1.clone()

    before = r1()
    hook.before_train_epoch(runner)  # epoch 0: update
    after_first = r1()
    assert not torch.equal(before, after_first)
    hook.before_train_iter(runner, batch_idx=0)  # epoch-based loop: iterations ignored
    runner.epoch = 1
    with torch.no_grad():
        conv.weight.normal_()
    hook.before_train_epoch(runner)  # epoch 1: not on the interval
    assert torch.equal(r1(), after_first)
    runner.train_loop = IterBasedTrainLoop.__new__(IterBasedTrainLoop)  # only its type is read
    runner.iter = 3
    hook.before_train_iter(runner, batch_idx=3)
    assert torch.equal(r1(), after_first)
    runner.iter = 5
    hook.before_train_iter(runner, batch_idx=5)
    assert not torch.equal(r1(), after_first)
    with pytest.raises(ValueError, match=">= 1"):
        RBNNRotationHook(num_steps=0)


def test_rbnn_hook_in_runner(tmp_path):
    seen: list[torch.Tensor] = []
    model = ToyBinaryNet("rbnn", 2, 3, lambda conv: seen.append(conv.binarizer.R1.clone()))
    initial = model.conv.binarizer.R1.clone()
    hooks = [dict(type="RBNNRotationHook"), dict(type="BinarizerProgressHook")]
    train_toy(model, tmp_path / "rbnn_hook", hooks, 0.1, 3)
    assert len(seen) == 4
    assert not torch.equal(seen[0], initial)  # updated before the first iteration
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[2], seen[3])  # once per epoch
    assert not torch.equal(seen[1], seen[2])
    assert model.conv.binarizer.t.item() == pytest.approx(
        ede_schedule(0.5, t_min=1e-2)[0], rel=1e-5
    )


# ---------------------------------------------------------------- AdaBin


def test_adabin_weight_binary_set_hand_values():
    # Channel 0: (1, 2, 3, 4): beta 2.5, alpha = sqrt((2.25 + 0.25 + 0.25 + 2.25) / 4).
    # Channel 1: (-1, -1, 1, 3): beta 0.5, alpha = sqrt((2.25 + 2.25 + 0.25 + 6.25) / 4).
    w = torch.tensor([[1.0, 2, 3, 4], [-1.0, -1, 1, 3]]).view(2, 2, 1, 2)
    a0, a1 = math.sqrt(1.25), math.sqrt(2.75)
    expected = torch.tensor(
        [[2.5 - a0, 2.5 - a0, 2.5 + a0, 2.5 + a0], [0.5 - a1, 0.5 - a1, 0.5 + a1, 0.5 + a1]]
    ).view(2, 2, 1, 2)
    out = make("adabin").binarize_weight(w)
    assert torch.allclose(out, expected, atol=1e-6)
    assert [len(torch.unique(row)) for row in out.flatten(1)] == [2, 2]


def test_adabin_activation_binary_set_hand_values():
    adabin = make("adabin")
    assert (adabin.alpha_a.item(), adabin.beta_a.item()) == (1.0, 0.0)  # paper init
    x = torch.tensor([-3.0, 0.0, 0.5, 2.0]).view(1, 1, 1, 4).repeat(1, 2, 1, 1)
    assert torch.equal(adabin.binarize_activation(x)[0, 0, 0], torch.tensor([-1.0, -1, 1, 1]))
    with torch.no_grad():
        adabin.alpha_a.fill_(1.5)
        adabin.beta_a.fill_(0.25)
    # u = (x - 0.25) / 1.5: x = 0.25 -> u = 0 -> -1; set {0.25 - 1.5, 0.25 + 1.5}.
    x = torch.tensor([-3.0, 0.24, 0.25, 0.5, 5.0]).view(1, 1, 1, 5)
    expected = torch.tensor([-1.25, -1.25, -1.25, 1.75, 1.75])
    assert torch.equal(adabin.binarize_activation(x).flatten(), expected)


def test_adabin_activation_gradients_hand_values():
    # alpha 2, beta 0.5: x = (-2, 0, 0.5, 1.5, 3) -> u = (-1.25, -0.25, 0, 0.5, 1.25),
    # in-range mask (0, 1, 1, 1, 0), sign(u) = (-1, -1, -1, 1, 1) (sign(0) = -1).
    # dx = mask; dbeta = sum(1 - mask) = 2;
    # dalpha = sum(sign(u) - u mask) = -1 - 0.75 - 1 + 0.5 + 1 = -1.25.
    adabin = make("adabin", 1, 1)
    with torch.no_grad():
        adabin.alpha_a.fill_(2.0)
        adabin.beta_a.fill_(0.5)
    x = torch.tensor([-2.0, 0.0, 0.5, 1.5, 3.0]).view(1, 1, 1, 5).requires_grad_(True)
    adabin.binarize_activation(x).sum().backward()
    assert torch.equal(x.grad.flatten(), torch.tensor([0.0, 1, 1, 1, 0]))
    assert adabin.beta_a.grad.item() == pytest.approx(2.0)
    assert adabin.alpha_a.grad.item() == pytest.approx(-1.25)


def test_adabin_weight_gradient_matches_ede_reference():
    # Reference: alpha_w * s(u) + beta_w, u = (W - beta_w) / alpha_w, where s has the value
    # sign(u) and the derivative of k tanh(t u) (IR-Net EDE); alpha_w, beta_w differentiable.
    torch.manual_seed(6)
    adabin = make("adabin", 2, 3, (3, 3)).double()
    adabin.set_progress(0.3)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    upstream = torch.randn_like(w)

    def reference(v):
        beta, alpha = adabin.weight_set(v)
        u = (v - beta) / alpha
        smooth = adabin.k * torch.tanh(adabin.t * u)
        return alpha * (hard_sign(u) + smooth - smooth.detach()) + beta

    g = grad_of(adabin.binarize_weight, w, upstream)
    assert torch.allclose(g, grad_of(reference, w, upstream), rtol=1e-9, atol=1e-12)
    # alpha_w, beta_w themselves against finite differences: they are smooth in W.
    assert torch.autograd.gradcheck(
        lambda v: torch.cat(adabin.weight_set(v)), (w.clone().requires_grad_(True),)
    )


def test_maxout_hand_values_and_gradcheck():
    maxout = Maxout(2)
    x = torch.tensor([[-2.0, 0.0, 3.0], [-1.0, 1.0, -4.0]]).view(1, 2, 1, 3)
    expected = torch.tensor([[-0.5, 0.0, 3.0], [-0.25, 1.0, -1.0]]).view(1, 2, 1, 3)
    assert torch.allclose(maxout(x), expected)
    with torch.no_grad():
        maxout.pos_scale.copy_(torch.tensor([2.0, 1.0]))
        maxout.neg_scale.copy_(torch.tensor([0.5, 1.0]))
    expected = torch.tensor([[-1.0, 0.0, 6.0], [-1.0, 1.0, -4.0]]).view(1, 2, 1, 3)
    assert torch.allclose(maxout(x), expected)
    maxout = maxout.double()
    xx = torch.tensor([[-2.0, 0.5, 3.0], [-1.0, 1.0, -4.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(maxout, (xx.view(1, 2, 1, 3).requires_grad_(True),))


# ---------------------------------------------------------------- threshold shift


@pytest.mark.parametrize("base", ["xnor", "bireal", "ste"])
def test_threshold_shift_flips_exactly_at_theta(base):
    theta = 0.3
    shift = make(dict(type="threshold_shift", base=base, theta=theta), 1, 1)
    just_below = torch.nextafter(torch.tensor(theta), torch.tensor(-math.inf)).item()
    just_above = torch.nextafter(torch.tensor(theta), torch.tensor(math.inf)).item()
    x = torch.tensor([theta, just_below, just_above, 0.0, 1.0, -1.0]).view(1, 1, 1, 6)
    expected = torch.tensor([-1.0, -1, 1, -1, 1, -1])  # a = theta gives u = 0 -> -1
    assert torch.equal(shift.binarize_activation(x).flatten(), expected)


def test_threshold_shift_keeps_base_weights():
    # XNOR and Bi-Real weights: sign(W) * mean(|W|) per channel, 0.5 and 1.5 here.
    w = torch.tensor([[0.2, -0.4, 0.6, -0.8], [1.0, 2.0, -3.0, 0.0]]).view(2, 2, 1, 2)
    expected = torch.tensor([[0.5, -0.5, 0.5, -0.5], [1.5, 1.5, -1.5, -1.5]]).view(2, 2, 1, 2)
    for base in ("xnor", "bireal"):
        shift = make(dict(type="threshold_shift", base=base, theta=0.7))
        assert torch.equal(shift.binarize_weight(w), expected)
    plain = make(dict(type="threshold_shift", base="ste", theta=0.7))
    assert torch.equal(plain.binarize_weight(w), hard_sign(w))


def test_threshold_shift_backward_uses_base_rule_at_shifted_point():
    # Bi-Real ApproxSign at x - 0.5 = (0, 0.25, -0.5, 1.1): 2 - 2|.| -> (2, 1.5, 1, 0).
    shift = make(dict(type="threshold_shift", base="bireal", theta=0.5), 1, 1)
    x = torch.tensor([0.5, 0.75, 0.0, 1.6]).view(1, 1, 1, 4)
    assert torch.allclose(
        grad_of(shift.binarize_activation, x).flatten(), torch.tensor([2, 1.5, 1, 0])
    )
    # Clipped STE at x - 0.5 = (0, 0.25, -0.5, 1.1) -> (1, 1, 1, 0).
    shift = make(dict(type="threshold_shift", base="ste", theta=0.5), 1, 1)
    assert torch.equal(
        grad_of(shift.binarize_activation, x).flatten(), torch.tensor([1.0, 1, 1, 0])
    )


def test_threshold_shift_learnable_per_channel():
    shift = make(dict(type="threshold_shift", base="bireal", theta=0.25, learnable=True))
    assert isinstance(shift.theta, nn.Parameter) and shift.theta.shape == (1, 2, 1, 1)
    assert torch.equal(shift.theta.detach().flatten(), torch.tensor([0.25, 0.25]))
    with torch.no_grad():
        shift.theta.copy_(torch.tensor([0.5, -0.5]).view(1, 2, 1, 1))
    # ch 0: x - 0.5 = (-0.25, 0, 1.5) -> ApproxSign' (1.5, 2, 0) -> dtheta = -3.5
    # ch 1: x + 0.5 = (-0.5, 0.5, 1.0) -> (1, 1, 0) -> dtheta = -2
    x = torch.tensor([[0.25, 0.5, 2.0], [-1.0, 0.0, 0.5]]).view(1, 2, 1, 3)
    out = shift.binarize_activation(x)
    # u = 0 at x = theta (0.5 in channel 0) -> -1
    assert torch.equal(out, torch.tensor([[-1.0, -1, 1], [-1.0, 1, 1]]).view(1, 2, 1, 3))
    out.sum().backward()
    assert torch.allclose(shift.theta.grad.flatten(), torch.tensor([-3.5, -2.0]))
    fixed = make(dict(type="threshold_shift", theta=0.25))
    assert not any(p is fixed.theta for p in fixed.parameters())
    assert "theta" in fixed.state_dict()


def test_threshold_shift_forwards_progress_and_rejects_itself():
    shift = make(dict(type="threshold_shift", base="irnet", theta=0.1))
    shift.set_progress(1.0)
    assert shift.base.t.item() == pytest.approx(10.0)
    with pytest.raises(ValueError, match="itself"):
        make(dict(type="threshold_shift", base="threshold_shift"))


# ---------------------------------------------------------------- SD-BNN


def test_sdbnn_activation_shift_moves_sign_balance():
    # x = (-0.5, -0.25, 0, 0.25, 0.5) in both channels: 2 of 5 are +1 with no shift (sign(0) = -1).
    # Shift +0.3 -> (-0.2, 0.05, 0.3, 0.55, 0.8): 4 are +1; shift -0.3: only 0.5 - 0.3 > 0.
    sd = make("sdbnn")
    x = torch.tensor([-0.5, -0.25, 0.0, 0.25, 0.5]).view(1, 1, 1, 5).repeat(1, 2, 1, 1)
    assert (sd.binarize_activation(x) > 0).sum(dim=(0, 2, 3)).tolist() == [2, 2]
    with torch.no_grad():
        sd.act_shift.copy_(torch.tensor([0.3, -0.3]).view(1, 2, 1, 1))
    out = sd.binarize_activation(x)
    assert (out > 0).sum(dim=(0, 2, 3)).tolist() == [4, 1]
    assert torch.equal(out.abs(), torch.ones_like(out))  # no scaling factor


def test_sdbnn_weight_shift_moves_sign_balance_per_output_channel():
    w = torch.tensor([[-0.2, -0.1, 0.1, 0.2], [-0.2, -0.1, 0.1, 0.2]]).view(2, 2, 1, 2)
    sd = make("sdbnn")
    assert sd.weight_shift.shape == (2, 1, 1, 1)
    with torch.no_grad():
        sd.weight_shift.copy_(torch.tensor([0.15, -0.15]).view(2, 1, 1, 1))
    expected = torch.tensor([[-1.0, 1, 1, 1], [-1.0, -1, -1, 1]]).view(2, 2, 1, 2)
    assert torch.equal(sd.binarize_weight(w), expected)


def test_sdbnn_gradients_hand_values():
    sd = make("sdbnn", 1, 1)
    with torch.no_grad():
        sd.act_shift.fill_(0.25)
        sd.weight_shift.fill_(-0.5)
    # Activations: x + 0.25 = (-0.75, 0.0, 0.5, 1.25) -> ApproxSign' (0.5, 2, 1, 0); dshift = 3.5.
    x = torch.tensor([-1.0, -0.25, 0.25, 1.0]).view(1, 1, 1, 4).requires_grad_(True)
    sd.binarize_activation(x).sum().backward()
    assert torch.allclose(x.grad.flatten(), torch.tensor([0.5, 2.0, 1.0, 0.0]))
    assert sd.act_shift.grad.item() == pytest.approx(3.5)
    # Weights: w - 0.5 = (-1.5, -0.5, 0.5, 1.5) -> clipped STE (0, 1, 1, 0); dshift = 2.
    w = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2).requires_grad_(True)
    sd.binarize_weight(w).sum().backward()
    assert torch.equal(w.grad.flatten(), torch.tensor([0.0, 1, 1, 0]))
    assert sd.weight_shift.grad.item() == pytest.approx(2.0)


# ---------------------------------------------------------------- LNS


def test_unbiased_loss_expectation_equals_clean_loss_exactly():
    # E over the noisy label: (1 - rho_y) l~(t, y) + rho_y l~(t, -y) = l(t, y).
    logits = torch.linspace(-4, 4, 17, dtype=torch.float64)
    for rho_pos, rho_neg in [(0.1, 0.1), (0.3, 0.05), (0.0, 0.4)]:
        for y, rho in ((1.0, rho_pos), (-1.0, rho_neg)):
            clean = torch.full_like(logits, y)
            expected_loss = (1 - rho) * unbiased_logistic_loss(
                logits, clean, rho_pos, rho_neg
            ) + rho * unbiased_logistic_loss(logits, -clean, rho_pos, rho_neg)
            clean_loss = torch.nn.functional.softplus(-clean * logits)
            assert torch.allclose(expected_loss, clean_loss, atol=1e-12)


def test_unbiased_loss_monte_carlo():
    # Noisy labels drawn with flip rates (0.2, 0.1), 200 draws x 5000 weights, seed 0; clean
    # labels mostly agree with the logits, as for a trained mapping. Tolerance: 4 standard
    # errors of the Monte Carlo mean. The uncorrected loss must miss the clean loss by far
    # more, so the test can tell the two apart.
    gen = torch.Generator().manual_seed(0)
    rho_pos, rho_neg = 0.2, 0.1
    logits = 2 * torch.randn(5000, generator=gen, dtype=torch.float64)
    clean = hard_sign(logits + torch.randn(5000, generator=gen, dtype=torch.float64))
    clean_loss = torch.nn.functional.softplus(-clean * logits).mean()
    rho = torch.where(clean > 0, rho_pos, rho_neg)
    flips = torch.rand(200, 5000, generator=gen, dtype=torch.float64) < rho
    noisy = torch.where(flips, -clean, clean)
    per_draw = unbiased_logistic_loss(logits.expand_as(noisy), noisy, rho_pos, rho_neg).mean(1)
    stderr = per_draw.std() / math.sqrt(len(per_draw))
    assert abs(per_draw.mean() - clean_loss) < 4 * stderr
    naive = torch.nn.functional.softplus(-noisy * logits).mean(1).mean()
    assert abs(naive - clean_loss) > 20 * stderr


def test_unbiased_loss_rejects_bad_flip_rates():
    with pytest.raises(ValueError, match="rho_pos \\+ rho_neg < 1"):
        unbiased_logistic_loss(torch.zeros(2), torch.ones(2), 0.6, 0.5)
    with pytest.raises(ValueError, match="rho"):
        make(dict(type="lns", rho_pos=-0.1))


def test_unbiased_loss_hand_value():
    # t = 1, y = +1, rho_pos = 0.2, rho_neg = 0.1: rho_y = 0.2, rho_{-y} = 0.1, so
    # l~ = (0.9 log(1 + e^-1) - 0.2 log(1 + e)) / 0.7; for y = -1 the rates swap.
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    logits = torch.tensor([1.0, 1.0], dtype=torch.float64)
    loss = unbiased_logistic_loss(logits, torch.tensor([1.0, -1.0], dtype=torch.float64), 0.2, 0.1)
    expected = [
        (0.9 * softplus(-1) - 0.2 * softplus(1)) / 0.7,
        (0.8 * softplus(1) - 0.1 * softplus(-1)) / 0.7,
    ]
    assert loss.tolist() == pytest.approx(expected, rel=1e-12)


def test_lns_feature_terms():
    w = torch.tensor([[1.0, 2, 3, 4], [-1.0, -1, 1, 3]]).view(2, 2, 1, 2)
    x0, per_out, per_in, per_pos = feature_terms(w)
    s = w.std()
    assert torch.allclose(x0, w / s)
    # Output channel 0 holds 1, 2, 3, 4 (mean 2.5, std sqrt(1.25)), channel 1 -1, -1, 1, 3
    # (mean 0.5, std sqrt(2.75)); input channel 0 holds 1, 2, -1, -1 (mean 0.25), channel 1
    # 3, 4, 1, 3 (mean 2.75); kernel column 0 holds 1, 3, -1, 1 (mean 1), column 1 2, 4, -1, 3
    # (mean 2).
    expected_out = torch.tensor([[2.5, math.sqrt(1.25)], [0.5, math.sqrt(2.75)]])
    assert torch.allclose(per_out, expected_out / s)
    assert torch.allclose(per_in, torch.tensor([0.25, 2.75]) / s)
    assert torch.allclose(per_pos, torch.tensor([[1.0, 2.0]]) / s)


def _reference_logits(lns: LNSBinarizer, w: torch.Tensor) -> torch.Tensor:
    """The plain definition: the MLP on the stacked (numel, 5) features, plus w / std."""
    x0, per_out, per_in, per_pos = feature_terms(w)
    o, i, kh, kw = w.shape
    features = torch.stack(
        [
            x0,
            per_out[:, 0].view(o, 1, 1, 1).expand_as(w),
            per_out[:, 1].view(o, 1, 1, 1).expand_as(w),
            per_in.view(1, i, 1, 1).expand_as(w),
            per_pos.view(1, 1, kh, kw).expand_as(w),
        ],
        dim=-1,
    )
    return x0 + lns.mapping(features.view(-1, 5)).view_as(w)


@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (5, 3, 1, 1), (4, 2, 1, 2)])
def test_lns_fused_logits_match_the_mlp_on_stacked_features(shape):
    """Values and every gradient of the factored network against autograd through the MLP on
    stacked features, with a trained-like (non-zero) last layer; the loss's logits train
    only the network."""
    torch.manual_seed(11)
    lns = LNSBinarizer(shape[1], shape[0], shape[2:]).double()
    for p in lns.mapping.parameters():
        nn.init.normal_(p)
    w = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    up, up_loss = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    params = list(lns.mapping.parameters())

    logits, loss_logits = lns.logits(w)
    reference = _reference_logits(lns, w)
    torch.testing.assert_close(logits, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss_logits, reference, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad((logits * up).sum() + (loss_logits * up_loss).sum(), [w, *params])
    wanted_w = torch.autograd.grad((reference * up).sum(), w, retain_graph=True)[0]
    reference_loss = _reference_logits(lns, w.detach())
    wanted_params = torch.autograd.grad((reference * up + reference_loss * up_loss).sum(), params)
    torch.testing.assert_close(got[0], wanted_w, rtol=1e-10, atol=1e-10)
    for g, wanted in zip(got[1:], wanted_params):
        torch.testing.assert_close(g, wanted, rtol=1e-10, atol=1e-10)
    # Either output alone (the other's gradient None) gives its own part.
    only_loss = torch.autograd.grad((lns.logits(w)[1] * up_loss).sum(), params)
    reference_loss = _reference_logits(lns, w.detach())
    wanted_loss = torch.autograd.grad((reference_loss * up_loss).sum(), params)
    for g, wanted in zip(only_loss, wanted_loss):
        torch.testing.assert_close(g, wanted, rtol=1e-10, atol=1e-10)


def test_lns_fused_logits_gradcheck():
    """Finite differences: the binary weight's logits in the weight and the network, the
    loss's logits in the network (the weight is their label, so they have no gradient to it)."""
    torch.manual_seed(12)
    first, last = nn.Linear(5, 3).double(), nn.Linear(3, 1).double()
    params = [p.detach().requires_grad_() for p in (*first.parameters(), *last.parameters())]
    w = torch.randn(4, 3, 2, 2, dtype=torch.float64, requires_grad=True)

    def logits(which: int, v: torch.Tensor, *net: torch.Tensor) -> torch.Tensor:
        return _LNSLogits.apply(*feature_terms(v), *net)[which]

    assert torch.autograd.gradcheck(lambda v, *net: logits(0, v, *net), (w, *params))
    assert torch.autograd.gradcheck(lambda *net: logits(1, w.detach(), *net), tuple(params))


def test_lns_starts_at_sign_and_backward_is_ste_on_logit():
    torch.manual_seed(7)
    w = torch.tensor([[0.2, -0.4, 0.6, -0.8], [1.0, 2.0, -3.0, 0.0]]).view(2, 2, 1, 2)
    expected = torch.tensor([[0.5, -0.5, 0.5, -0.5], [1.5, 1.5, -1.5, -1.5]]).view(2, 2, 1, 2)
    lns = make("lns")
    assert torch.equal(lns.binarize_weight(w), expected)
    # With the zero-initialised last layer the logit is W / std(W): the gradient is the
    # clipped STE through that map (scale=False isolates it).
    plain = make(dict(type="lns", scale=False)).double()
    wd = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    upstream = torch.randn_like(wd)
    assert torch.equal(plain.binarize_weight(wd), hard_sign(wd))
    g = grad_of(plain.binarize_weight, wd, upstream)
    assert torch.allclose(g, grad_of(lambda v: clipped_ste(v / v.std()), wd, upstream))


def test_lns_noisy_label_loss_trains_only_the_mapping():
    torch.manual_seed(8)
    conv = BinaryConv2d(3, 4, 3, binarizer=dict(type="lns", rho_pos=0.2, rho_neg=0.1))
    conv(torch.randn(1, 3, 5, 5))
    lns = conv.binarizer
    w = conv.weight.detach()
    loss = lns.noisy_label_loss()
    expected = unbiased_logistic_loss(w / w.std(), hard_sign(w), 0.2, 0.1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert conv.weight.grad is None
    assert lns.mapping[-1].weight.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="forward"):
        LNSBinarizer(2, 2, (3, 3)).noisy_label_loss()


def test_lns_noisy_label_loss_sums_over_layers():
    torch.manual_seed(9)
    model = nn.Sequential(
        BinaryConv2d(3, 4, 3, binarizer="lns"), BinaryConv2d(4, 2, 1, binarizer="lns")
    )
    model(torch.randn(1, 3, 4, 4))
    total = lns_noisy_label_loss(model)
    parts = [m.binarizer.noisy_label_loss() for m in model]
    assert total.item() == pytest.approx(sum(p.item() for p in parts), rel=1e-6)
    assert lns_noisy_label_loss(nn.Sequential(BinaryConv2d(2, 2, 1))).item() == 0.0
