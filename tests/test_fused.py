"""The fused autograd functions against the plain formulas they replace: values bit for bit,
gradients to the last bits (the exact derivatives, summed in another order at most)."""

import pytest
import torch
import torch.nn.functional as F

from cmim_dense.binary import build_binarizer, list_binarizers, sign_ste
from cmim_dense.binary.adabin import Maxout
from cmim_dense.binary.functions import (
    approx_sign_grad,
    channel_mean_abs,
    ede_grad,
    hard_sign,
    ste_grad,
    training_aware_grad,
)
from cmim_dense.binary.fused import (
    adabin_activation,
    adabin_weight,
    adabin_weight_set,
    irnet_weight,
    mean_abs_sign,
    standardize_per_channel,
)
from cmim_dense.models.backbones.bin_resnet import RPReLU


def _input(shape=(3, 4, 5, 5)) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(shape) * 1.5
    x.view(-1)[:6] = torch.tensor([0.0, 1.0, -1.0, 0.5, -0.5, 2.0])  # kinks and sign(0)
    return x


def _perturbed(name: str):
    torch.manual_seed(1)
    binarizer = build_binarizer(name, 4, 6, (3, 3)).double()
    with torch.no_grad():
        for p in binarizer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return binarizer


def _grads(fn, x, params):
    x = x.clone().requires_grad_(True)
    for p in params:
        p.grad = None
    out = fn(x)
    torch.manual_seed(2)
    (out * torch.randn_like(out)).sum().backward()
    return out.detach(), [x.grad, *[p.grad for p in params]]


@pytest.mark.parametrize("name", list_binarizers())
def test_fused_activation_matches_the_plain_formula(name):
    binarizer = _perturbed(name)
    params = list(binarizer.parameters())
    x = _input().double()
    fused, fused_grads = _grads(binarizer.binarize_activation, x, params)
    plain, plain_grads = _grads(lambda v: binarizer.activation(v).value, x, params)
    assert torch.equal(fused, plain)
    for got, expected in zip(fused_grads, plain_grads):
        if expected is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_fused_shifted_sign_is_exact_at_the_threshold():
    react = build_binarizer("react", 2, 2, (1, 1))
    with torch.no_grad():
        react.threshold.copy_(torch.tensor([0.3, -0.2]).view(1, 2, 1, 1))
    x = torch.tensor([[0.3, 0.3000001], [-0.2, -0.1999999]]).view(1, 2, 1, 2)
    assert torch.equal(react.binarize_activation(x).flatten(), torch.tensor([-1.0, 1, -1, 1]))


def test_mean_abs_sign_matches_autograd_of_the_formula_bit_for_bit():
    w = _input((6, 4, 3, 3))
    w.view(-1)[6:12] = 0.0  # sgn(0) = 0 in the scale's gradient, sign(0) = -1 in the value
    out, (g,) = _grads(mean_abs_sign, w, [])
    ref, (g_ref,) = _grads(lambda v: channel_mean_abs(v) * sign_ste(v), w, [])
    assert torch.equal(out, ref)
    assert torch.equal(g, g_ref)


def test_mean_abs_sign_backward_is_not_differentiable_again():
    """Its backward writes into its own buffers (CHANGELOG, Second-order gradients): a second
    derivative raises instead of coming out wrong."""
    w = _input((6, 4, 3, 3)).requires_grad_()
    with pytest.raises(RuntimeError, match="out="):
        torch.autograd.grad(mean_abs_sign(w).sum(), w, create_graph=True)


def test_fused_maxout_matches_the_relu_formula():
    maxout = Maxout(4).double()
    with torch.no_grad():
        maxout.pos_scale.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        maxout.neg_scale.copy_(torch.tensor([0.25, -0.5, 3.0, 1.0]))
    params = list(maxout.parameters())
    x = _input().double()

    def plain(v):
        pos, neg = maxout.pos_scale.view(1, -1, 1, 1), maxout.neg_scale.view(1, -1, 1, 1)
        return pos * F.relu(v) - neg * F.relu(-v)

    out, grads = _grads(maxout, x, params)
    ref, ref_grads = _grads(plain, x, params)
    assert torch.equal(out, ref)
    for got, expected in zip(grads, ref_grads):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_float_kernels_give_the_values_of_the_bool_formulas(dtype):
    """hard_sign and ste_grad avoid bool tensors (slow CPU kernels); their values are those of
    where(x > 0, 1, -1) and grad * 1[|x| <= 1] at every edge: signed zeros, +-1 and the floats
    next to them, the smallest subnormal, infinities."""
    one, two = torch.ones((), dtype=dtype), torch.full((), 2.0, dtype=dtype)
    edges = [
        torch.nextafter(one, two).item() if dtype != torch.bfloat16 else 1.0078125,
        torch.finfo(dtype).smallest_normal,
        1.0,
        0.0,
        -0.0,
        2.0,
        float("inf"),
        1e-45 if dtype == torch.float32 else 0.5,
    ]
    x = torch.tensor([s * v for v in edges for s in (1, -1)], dtype=dtype)
    x = torch.cat([x, torch.randn(200, dtype=torch.float64).to(dtype) * 2])
    assert torch.equal(hard_sign(x), torch.where(x > 0, 1.0, -1.0).to(dtype))
    grad = torch.randn(x.shape, dtype=torch.float64).to(dtype)
    assert torch.equal(ste_grad(grad, x), grad * (x.abs() <= 1))


def test_maxout_keeps_infinities_and_finite_slope_gradients():
    """An infinite activation gives an infinite output, and no NaN in the gradient of the
    slope of the other half (0 * inf must not be formed)."""
    maxout = Maxout(2)
    x = torch.tensor([float("-inf"), 2.0, float("inf"), -1.0]).view(1, 2, 1, 2)
    pos, neg = maxout.pos_scale.view(1, -1, 1, 1), maxout.neg_scale.view(1, -1, 1, 1)
    x.requires_grad_(True)
    out = maxout(x)
    assert torch.equal(out, x.detach() * torch.where(x.detach() > 0, pos, neg))
    out.sum().backward()
    assert maxout.pos_scale.grad[0] == 2.0 and maxout.neg_scale.grad[1] == -1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_in_place_surrogate_gradients_match_their_formulas(dtype):
    """ApproxSign and RBNN's training-aware gradient are computed in place: the values of the
    plain products bit for bit. EDE's k t (1 - tanh(t x)^2) comes from a sigmoid: within 4
    units in the last place of the exact value, plus what rounding t |x| costs, wherever that
    is a normal number (the tanh form's 1 - y^2 is off by 70 units at t = 0.1 and gives 0 far
    from 0), never above it in
    the subnormal tail, and no NaN for a huge gradient (no inf * 0)."""
    torch.manual_seed(3)
    x = torch.cat([torch.randn(500, dtype=torch.float64) * 3, torch.tensor([0.0, 1.0, 40.0])])
    x = torch.cat([x, -x, torch.linspace(-30, 30, 20001, dtype=torch.float64)]).to(dtype)
    grad = torch.randn(x.shape, dtype=torch.float64).to(dtype)
    t, k = torch.tensor(3.0, dtype=dtype), torch.tensor(1.5, dtype=dtype)
    assert torch.equal(approx_sign_grad(grad, x), grad * (2 - 2 * x.abs()).clamp(min=0))
    plain = grad * (k * (2**0.5 * t - t * t * x.abs()).clamp(min=0))
    assert torch.equal(training_aware_grad(grad, x, t, k), plain)

    info = torch.finfo(dtype)
    for t_value in (0.1, 1.0, 3.0, 10.0):
        t = torch.tensor(t_value, dtype=dtype)
        ede = ede_grad(torch.ones_like(x), x, t, k).double()
        exact = 1.5 * t_value / torch.cosh(t_value * x.double()) ** 2
        normal = exact >= info.tiny / info.eps
        # exp's argument -2 t |x| is rounded first: a relative error of eps 2 t |x| at most
        bound = info.eps * (4 + 2 * t_value * x.double().abs()) * exact
        assert ((ede - exact).abs() <= bound)[normal].all()
        assert (ede[~normal] <= 2 * exact[~normal] + info.tiny).all()
    huge = torch.full_like(x, info.max)
    assert not ede_grad(huge, x, t, k).isnan().any()


def test_standardize_matches_the_formula_and_gradcheck():
    """The written-out standardisation against autograd through mean, std and the division:
    values and gradients to 1e-12 in float64, a constant channel (std clamped) included; and
    finite differences."""
    torch.manual_seed(4)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    w[1] = 0.25  # std 0: clamped to 1e-12, no gradient through it

    def plain(v):
        centred = v - v.mean(dim=(1, 2, 3), keepdim=True)
        return centred / centred.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)

    out, grads = _grads(standardize_per_channel, w, [])
    ref, ref_grads = _grads(plain, w, [])
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0], ref_grads[0], rtol=1e-12, atol=1e-12)
    varied = w[[0, 2, 3]].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(standardize_per_channel, (varied,))


def test_rprelu_matches_the_module_formula():
    """RPReLU's Function against autograd through PReLU(x - gamma) + zeta: values bit for bit
    (float32 and float64), gradients of x and all three parameters to 1e-12 in float64."""
    block = RPReLU(4)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = _input((3, 4, 5, 5))

    def plain(v):
        return F.prelu(v - block.shift_in, block.prelu.weight) + block.shift_out

    assert torch.equal(block(x), plain(x))
    block.double()
    out, grads = _grads(block, x.double(), list(block.parameters()))
    ref, ref_grads = _grads(plain, x.double(), list(block.parameters()))
    assert torch.equal(out, ref)
    for got, expected in zip(grads, ref_grads):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_adabin_weight_matches_the_formula_with_a_clamped_channel():
    """AdaBin's weight Function against autograd through the set, the division and EDE's
    smooth surrogate k tanh(t u) (the formula AdaBin runs compiled): values bit for bit,
    gradients to 1e-9 in float64, a constant channel (alpha clamped: no gradient through
    alpha) included, checked against its closed form too."""
    torch.manual_seed(7)
    t, k = torch.tensor(1.7, dtype=torch.float64), torch.tensor(1.2, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    w[2] = -0.5

    def plain(v):
        beta, alpha = adabin_weight_set(v)
        u = (v - beta) / alpha
        smooth = k * torch.tanh(t * u)
        return alpha * (hard_sign(u) + smooth - smooth.detach()) + beta

    for v in (w.float(), w):
        beta, alpha = adabin_weight_set(v)
        expected = alpha * hard_sign((v - beta) / alpha) + beta
        assert torch.equal(adabin_weight(v, t.to(v.dtype), k.to(v.dtype)), expected)
    _, grads = _grads(lambda v: adabin_weight(v, t, k), w, [])
    _, ref_grads = _grads(plain, w, [])
    torch.testing.assert_close(grads[0], ref_grads[0], rtol=1e-9, atol=1e-9)
    # The constant channel: u = 0, e(0) = k t, and only beta's and the sign's terms are left
    # (a root of an unclamped variance gave NaN here: 0 * inf in its gradient).
    torch.manual_seed(2)
    g = torch.randn_like(w)[2]  # the upstream gradient _grads drew
    expected = k * t * g + (g.sum() - k * t * g.sum()) / g.numel()
    torch.testing.assert_close(grads[0][2], expected, rtol=1e-12, atol=1e-12)


def test_adabin_weight_backward_takes_a_channels_last_weight():
    """A channels_last weight (``model.to(memory_format=torch.channels_last)``) gives the
    gradient of the contiguous one."""
    torch.manual_seed(8)
    t, k = torch.tensor(1.3), torch.tensor(1.1)
    w, upstream = torch.randn(5, 4, 3, 3), torch.randn(5, 4, 3, 3)
    grads = []
    for layout in (torch.contiguous_format, torch.channels_last):
        v = w.clone(memory_format=layout).requires_grad_(True)
        (adabin_weight(v, t, k) * upstream).sum().backward()
        grads.append(v.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_adabin_activation_scalar_gradients_are_summed_in_float32(dtype):
    """alpha's and beta's gradients are differences of sums over the whole activation: in
    bfloat16 or float16 (autocast) each sum is taken in float32, so they stay near the
    float64 gradients of the same rounded inputs (rounded sums cancelled to -0.0006 against
    0.15 here)."""
    torch.manual_seed(0)
    x = (torch.randn(4, 64, 32, 32) * 0.5).to(dtype)
    upstream = (torch.randn(x.shape) * 1e-3 + 1e-3).to(dtype)
    grads = {}
    for name, (v, g) in {"half": (x, upstream), "ref": (x.double(), upstream.double())}.items():
        alpha = torch.tensor(1.0, dtype=torch.float32 if name == "half" else torch.float64)
        beta = torch.zeros_like(alpha)
        alpha.requires_grad_(True), beta.requires_grad_(True)
        adabin_activation(v, alpha, beta).backward(g)
        grads[name] = torch.stack([alpha.grad.double(), beta.grad.double()])
    torch.testing.assert_close(grads["half"], grads["ref"], rtol=1e-2, atol=0)


def test_irnet_weight_gradient_stays_finite_in_float16():
    """4 k t c / std overflows float16 for a small std: it is formed in float32, and the
    float16 gradient is the float64 one of the same weights, rounded."""
    torch.manual_seed(0)
    w = (torch.randn(4, 16, 3, 3) * 3e-4).half()
    upstream = (torch.randn(w.shape) * 0.1).half()
    grads = []
    for dtype in (torch.float16, torch.float64):
        t, k = torch.tensor(10.0, dtype=dtype), torch.tensor(1.0, dtype=dtype)
        v = w.to(dtype).clone().requires_grad_(True)
        irnet_weight(v, t, k).backward(upstream.to(dtype))
        grads.append(v.grad.double())
    assert torch.isfinite(grads[0]).all()
    torch.testing.assert_close(grads[0], grads[1], rtol=2e-2, atol=2e-2 * grads[1].abs().max())
