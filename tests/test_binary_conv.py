"""BinaryConv2d against a hand-built conv, and ActivationTaps' recording contract."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cmim_dense.binary import ActivationTaps, BinaryConv2d, hard_sign


def _mean_abs_sign(w: torch.Tensor) -> torch.Tensor:
    return w.abs().mean(dim=(1, 2, 3), keepdim=True) * hard_sign(w)


def _libra_pb(w: torch.Tensor) -> torch.Tensor:
    centred = w - w.mean(dim=(1, 2, 3), keepdim=True)
    w_std = centred / centred.std(dim=(1, 2, 3), keepdim=True)
    return hard_sign(w_std) * 2.0 ** torch.round(torch.log2(w_std.abs().mean((1, 2, 3), True)))


HAND_WEIGHTS = {
    "ste": hard_sign,
    "xnor": _mean_abs_sign,
    "bireal": _mean_abs_sign,
    "react": _mean_abs_sign,  # threshold starts at 0
    "irnet": _libra_pb,
}


@pytest.mark.parametrize("name", sorted(HAND_WEIGHTS))
def test_binary_conv_equals_conv_of_signs(name):
    torch.manual_seed(0)
    conv = BinaryConv2d(3, 4, 3, stride=2, padding=1, binarizer=name).double()
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    x[0, 0, 0, :3] = 0.0  # sign(0) = -1
    expected = F.conv2d(hard_sign(x), HAND_WEIGHTS[name](conv.weight.detach()), stride=2, padding=1)
    out = conv(x)
    assert out.shape == (2, 4, 4, 4)
    assert torch.allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_binary_conv_bias_and_defaults():
    conv = BinaryConv2d(2, 3, 1)
    assert conv.bias is None and conv.binarizer.__class__.__name__ == "STEBinarizer"
    conv = BinaryConv2d(2, 3, 1, bias=True)
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([1.0, 2.0, 3.0]))
    x = torch.randn(1, 2, 2, 2)
    expected = F.conv2d(hard_sign(x), hard_sign(conv.weight.detach()), conv.bias.detach())
    assert torch.equal(conv(x), expected)


@pytest.mark.parametrize("name", sorted(HAND_WEIGHTS))
def test_binary_conv_gradients_reach_weight_and_input(name):
    torch.manual_seed(1)
    conv = BinaryConv2d(3, 4, 3, padding=1, binarizer=name)
    x = (0.5 * torch.randn(2, 3, 5, 5)).requires_grad_(True)
    conv(x).pow(2).sum().backward()
    for grad in (x.grad, conv.weight.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


class _ThreeConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = BinaryConv2d(2, 3, 3, padding=1)
        self.conv2 = BinaryConv2d(3, 4, 3, stride=2, padding=1)
        self.conv3 = BinaryConv2d(4, 5, 3, padding=1)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs = [x]
        x = self.conv1(x)
        self.inputs.append(x)
        x = self.conv2(x)
        self.inputs.append(x)
        return self.conv3(x)


def test_taps_record_tapped_layers_in_order_pooled():
    torch.manual_seed(2)
    net = _ThreeConvs()
    x = torch.randn(2, 2, 8, 8)
    with ActivationTaps([net.conv3, net.conv1], reduce="avgpool", size=2) as taps:
        net(x)
        records = taps.pop()
    assert len(records) == 2
    # Order is the order of the layers given; conv3 sees (2, 4, 4, 4), conv1 (2, 2, 8, 8).
    for (a_f, a_b), inp in zip(records, [net.inputs[2], net.inputs[0]]):
        c = inp.shape[1]
        assert a_f.shape == a_b.shape == (2, c * 2 * 2)
        assert torch.allclose(a_f, F.adaptive_avg_pool2d(inp, 2).flatten(1))
        assert torch.allclose(a_b, F.adaptive_avg_pool2d(hard_sign(inp), 2).flatten(1))
        assert (a_b.abs() <= 1).all()


def test_taps_skip_pooling_when_already_pool_size():
    net = _ThreeConvs()
    x = torch.randn(1, 2, 4, 4)
    with ActivationTaps([net.conv1], reduce="avgpool", size=4) as taps:
        net(x)
        ((a_f, a_b),) = taps.pop()
    assert torch.equal(a_f, x.flatten(1)) and torch.equal(a_b, hard_sign(x).flatten(1))


def test_taps_without_pooling_binary_is_sign_of_real():
    torch.manual_seed(3)
    net = _ThreeConvs()
    x = torch.randn(2, 2, 6, 6)
    x[0, 0, 0, 0] = 0.0
    with ActivationTaps([net.conv1, net.conv2, net.conv3], reduce=None) as taps:
        net(x)
        records = taps.pop()
    for (a_f, a_b), inp in zip(records, net.inputs):
        assert a_f.shape == (inp.shape[0], inp[0].numel())
        assert torch.equal(a_f, inp.flatten(1))
        assert torch.equal(a_b, hard_sign(a_f))


@pytest.mark.parametrize("reduce", [None, "avgpool", "sample"])
def test_tap_records_keep_autograd_graph(reduce):
    net = _ThreeConvs()
    x = torch.randn(2, 2, 6, 6).mul(0.5).requires_grad_(True)
    with ActivationTaps([net.conv2], reduce=reduce, size=2) as taps:
        net(x)
        ((a_f, a_b),) = taps.pop()
    assert a_f.requires_grad and a_b.requires_grad
    (a_f * a_b).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert net.conv1.weight.grad is not None and net.conv3.weight.grad is None


def test_nothing_recorded_without_tap():
    net = _ThreeConvs()
    assert all(conv.tap is None for conv in (net.conv1, net.conv2, net.conv3))
    x = torch.randn(1, 2, 4, 4)
    ref = weakref.ref(x)
    with torch.no_grad():
        net.conv1(x)
    del x
    gc.collect()
    assert ref() is None  # the layer kept no reference to its input


def test_detach_clears_taps_and_records():
    net = _ThreeConvs()
    taps = ActivationTaps([net.conv1, net.conv2], reduce=None).attach()
    assert net.conv1.tap is taps and net.conv2.tap is taps and net.conv3.tap is None
    x = torch.randn(1, 2, 4, 4)
    ref = weakref.ref(x)
    with torch.no_grad():
        net(x)
    net.inputs = []
    del x
    gc.collect()
    assert ref() is not None  # held by the records (a view of the input)
    taps.detach()
    gc.collect()
    assert ref() is None
    assert net.conv1.tap is None and net.conv2.tap is None
    with torch.no_grad():
        net(torch.randn(1, 2, 4, 4))
    with pytest.raises(RuntimeError, match="did not run"):
        taps.pop()


def test_pop_raises_if_a_tapped_layer_did_not_run():
    net = _ThreeConvs()
    with ActivationTaps([net.conv1, net.conv3]) as taps:
        net.conv1(torch.randn(1, 2, 4, 4))
        with pytest.raises(RuntimeError, match=r"tapped layers \[1\] did not run"):
            taps.pop()


def test_pop_clears_records():
    net = _ThreeConvs()
    with ActivationTaps([net.conv1]) as taps:
        net(torch.randn(1, 2, 4, 4))
        assert len(taps.pop()) == 1
        with pytest.raises(RuntimeError):
            taps.pop()


def test_context_manager_detaches_on_exception():
    net = _ThreeConvs()
    with pytest.raises(ValueError, match="boom"), ActivationTaps([net.conv1, net.conv3]):
        assert net.conv1.tap is not None
        net(torch.randn(1, 2, 4, 4))
        raise ValueError("boom")
    assert net.conv1.tap is None and net.conv3.tap is None


def test_taps_need_layers():
    with pytest.raises(ValueError, match="at least one"):
        ActivationTaps([])


def test_binary_weight_cached_without_autograd_and_refreshed_on_change():
    conv = BinaryConv2d(3, 4, 3, padding=1, binarizer="irnet")
    calls = []
    original = conv.binarizer.binarize_weight

    def counting(w):
        calls.append(1)
        return original(w)

    conv.binarizer.binarize_weight = counting
    x = torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        first = conv(x)
        second = conv(x)
        assert len(calls) == 1 and torch.equal(first, second)
        conv.weight.mul_(-1)  # an in-place update (what an optimizer step does)
        flipped = conv(x)
        assert len(calls) == 2 and torch.allclose(flipped, -first, atol=1e-6)
        conv.load_state_dict(
            {
                "weight": torch.randn_like(conv.weight),
                **{f"binarizer.{k}": v for k, v in conv.binarizer.state_dict().items()},
            }
        )
        conv(x)
        assert len(calls) == 3
        conv.binarizer.set_progress(0.5)  # binarizer state changes invalidate the cache too
        conv(x)
        assert len(calls) == 4
    out = conv(x)  # with autograd: recomputed every time, and gradients flow
    conv(x)
    assert len(calls) == 6
    out.sum().backward()
    assert conv.weight.grad is not None
