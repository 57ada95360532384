"""OpenVINO graphs of a binary ResNet: bit-packed ``BinaryConvolution`` layers and float ops.

Built with OpenVINO's own op API (``openvino.opset1`` / ``opset13``); no kernel is written here.
The input is (N, 3, H, W) float32, dynamic or static; the outputs are the backbone's stage
outputs (N, C_i, H / s_i, W / s_i), in the order of ``out_indices``, named ``stage<i>``.
``BinaryConvolution`` needs static shapes on the CPU plugin, so a dynamic model is reshaped to a
concrete input before compiling (:mod:`cmim_dense.deploy.runtime` does it).

Two flavours of the same network: ``binary=True`` runs every binary conv as an xnor-popcount
``BinaryConvolution`` with ``u1`` weights (the deployed model); ``binary=False`` runs it as the
PyTorch simulation does, a float ``Convolution`` of the +-1 activations with the float binary
weights (the fp32 reference of the benchmark).
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset1 as ops1
import openvino.opset13 as ops
from torch import nn

from cmim_dense.binary import BinaryConv2d
from cmim_dense.binary.adabin import Maxout
from cmim_dense.deploy.fold import FoldedBinaryConv, NotExportableError, fold_binary_conv
from cmim_dense.models.backbones.bin_resnet import BinaryConvUnit, BinaryResNet, RPReLU

# The CPU plugin refuses BinaryConvolution with a padding above 2 ("unsupported parameters"):
# such layers pad explicitly with -1 first, which is exact.
MAX_NATIVE_PAD = 2
CHANNEL_ALIGN = 8
Node = ov.Output


def _const(value: np.ndarray | float) -> Node:
    return ops.constant(np.asarray(value, dtype=np.float32)).output(0)


def _channel(values: np.ndarray) -> Node:
    """A (1, C, 1, 1) float32 constant that broadcasts over (N, C, H, W)."""
    return _const(np.asarray(values, dtype=np.float32).reshape(1, -1, 1, 1))


def packed_bits(bits: np.ndarray) -> ov.Tensor:
    """A ``u1`` tensor of the boolean array ``bits``, bit-packed little-endian per byte (the
    order OpenVINO's BinaryConvolution reads; big-endian packing gives wrong sums)."""
    tensor = ov.Tensor(ov.Type.u1, ov.Shape(list(bits.shape)))
    tensor.data[:] = np.packbits(bits.reshape(-1).astype(np.uint8), bitorder="little")
    return tensor


def _batch_norm(x: Node, bn: nn.BatchNorm2d) -> Node:
    """Eval-mode BN as x * a + b with a = w / sqrt(var + eps), b = bias - mean * a (float32)."""
    var = bn.running_var.detach().cpu().numpy().astype(np.float32)
    mean = bn.running_mean.detach().cpu().numpy().astype(np.float32)
    weight = bn.weight.detach().cpu().numpy() if bn.affine else np.ones_like(var)
    bias = bn.bias.detach().cpu().numpy() if bn.affine else np.zeros_like(var)
    scale = (weight / np.sqrt(var + np.float32(bn.eps))).astype(np.float32)
    shift = (bias - mean * scale).astype(np.float32)
    return ops.add(ops.multiply(x, _channel(scale)), _channel(shift)).output(0)


def _conv(x: Node, conv: nn.Conv2d) -> Node:
    if conv.groups != 1 or not isinstance(conv.padding, tuple):
        raise NotExportableError(f"float conv {conv} is not a plain padded convolution")
    out = ops.convolution(
        x,
        _const(conv.weight.detach().cpu().numpy()),
        list(conv.stride),
        list(conv.padding),
        list(conv.padding),
        list(conv.dilation),
    ).output(0)
    if conv.bias is not None:
        out = ops.add(out, _channel(conv.bias.detach().cpu().numpy())).output(0)
    return out


def _border_map(x: Node, folded: FoldedBinaryConv, kernel: np.ndarray) -> Node:
    """conv(P, kernel): P is 1 on the padded border of x's spatial grid, 0 inside.

    (1, K, H', W') for a (K, 1, kh, kw) kernel. For a static x it is built from constants, which
    the plugin folds into one constant at compile time; for a dynamic x from x's shape, so it
    follows any input size.
    """
    if x.get_partial_shape().is_static:
        grid = _int([1, 1, *x.get_shape()[2:]])
    else:
        shape = ops.shape_of(x).output(0)
        hw = ops.gather(shape, _int([2, 3]), _int(0)).output(0)
        grid = ops.concat([_int([1, 1]), hw], 0).output(0)
    zeros = ops.broadcast(_const(0.0), grid).output(0)
    ph, pw = folded.padding
    padded = ops.pad(zeros, _int([0, 0, ph, pw]), _int([0, 0, ph, pw]), "constant", _const(1.0))
    return ops.convolution(
        padded, _const(kernel), list(folded.stride), [0, 0], [0, 0], list(folded.dilation)
    ).output(0)


def _int(values) -> Node:
    return ops.constant(np.asarray(values, dtype=np.int64)).output(0)


def _binary_input(x: Node, folded: FoldedBinaryConv) -> Node:
    """The tensor whose sign the layer takes: x - center, or center - x for a negative spread."""
    if not folded.center.any():
        return ops.negative(x).output(0) if folded.flip else x
    center = _channel(folded.center)
    return (ops.subtract(center, x) if folded.flip else ops.subtract(x, center)).output(0)


def _binarize(u: Node, threshold: np.ndarray | float = 0.0) -> Node:
    """1 where u > threshold, else 0 (which BinaryConvolution reads as +1 / -1).

    A FakeQuantize with 2 levels, equal input bounds and output bounds {0, 1} is the CPU
    plugin's binarization node: a jit kernel that writes the packed bits BinaryConvolution
    reads (without it the plugin converts f32 to bits in a reference Reorder).
    """
    if np.ndim(threshold):
        limit = _channel(threshold)
    else:
        limit = _const(np.full((1, 1, 1, 1), threshold, np.float32))
    zero = _const(np.zeros((1, 1, 1, 1), np.float32))
    one = _const(np.ones((1, 1, 1, 1), np.float32))
    return ops.fake_quantize(u, limit, limit, zero, one, 2).output(0)


def _zero_pad(u: Node, pad: list[int]) -> Node:
    """u padded spatially with 0 by ``pad`` (h, w), as a depthwise 1x1 convolution of weight 1
    (exact: u * 1 + 0). The CPU plugin runs ``Pad`` with a reference kernel, convolutions with
    jit kernels."""
    channels = u.get_partial_shape()[1].get_length()
    weight = _const(np.ones((channels, 1, 1, 1, 1), np.float32))
    return ops.group_convolution(u, weight, [1, 1], pad, pad, [1, 1]).output(0)


def _packed_input(x: Node, folded: FoldedBinaryConv, extra: int) -> tuple[Node, list[int]]:
    """The bits a layer's xnor-popcount conv reads, and the padding left to it.

    sign(x - c) > 0 is x > c and sign(c - x) > 0 is -x > -c (IEEE subtraction of two different
    finite floats is never 0), so the threshold goes into the binarization and no subtraction
    is needed. Otherwise x - c is padded with zeros first (zeros binarize to -1): spatially
    where the padding is above the plugin's limit, and by ``extra`` channels at the end.
    """
    pad = list(folded.padding)
    if max(pad) <= MAX_NATIVE_PAD and not extra:
        u = ops.negative(x).output(0) if folded.flip else x
        threshold = -folded.center if folded.flip else folded.center
        return _binarize(u, threshold if threshold.any() else 0.0), pad
    u = _binary_input(x, folded)
    if extra:
        u = ops.pad(u, _int([0, 0, 0, 0]), _int([0, extra, 0, 0]), "constant", _const(0.0))
        u = u.output(0)
    if max(pad) > MAX_NATIVE_PAD:
        u, pad = _zero_pad(u, pad), [0, 0]
    return _binarize(u), pad


def binary_conv_integer(x: Node, folded: FoldedBinaryConv, ones_kernel: bool = False) -> Node:
    """Y + C_s: the integer conv_{pad 0}(sign(u), s_w) of PyTorch, from an xnor-popcount conv.

    With ``ones_kernel`` an extra output channel with an all-ones kernel is appended (Y_1 + C_1,
    for AdaBin's offset terms): (N, C_out + 1, H', W').
    """
    return _binary_conv_and_border(x, folded, ones_kernel)[0]


def _binary_conv_and_border(
    x: Node, folded: FoldedBinaryConv, ones_kernel: bool
) -> tuple[Node, Node]:
    """(Y + C_s, C_s) of :func:`binary_conv_integer`: the result and its border map."""
    bits = folded.bits
    tap_sums = folded.tap_sums()
    if ones_kernel:
        bits = np.concatenate([bits, np.ones_like(bits[:1])])
        tap_sums = np.concatenate([tap_sums, np.full_like(tap_sums[:1], bits.shape[1])])
    # The CPU plugin's kernel is exact only for C_in a multiple of 8: extra input channels of
    # -1 against weights of -1 add +1 per tap everywhere (the border included, padded with -1),
    # a constant taken off again below.
    extra = -bits.shape[1] % CHANNEL_ALIGN
    u, pad = _packed_input(x, folded, extra)
    if extra:
        bits = np.concatenate([bits, np.zeros((bits.shape[0], extra, *bits.shape[2:]), bool)], 1)
    y = ops1.binary_convolution(
        u,
        ops.constant(packed_bits(bits)).output(0),
        list(folded.stride),
        pad,
        pad,
        list(folded.dilation),
        "xnor-popcount",
        -1.0,
    ).output(0)
    if extra:
        y = ops.subtract(y, _const(float(extra * np.prod(bits.shape[2:])))).output(0)
    border = _border_map(x, folded, tap_sums)
    return ops.add(y, border).output(0), border


def binary_layer_output(x: Node, folded: FoldedBinaryConv) -> Node:
    """conv_{pad 0}(a_B, W_B) of PyTorch as an xnor-popcount conv plus float ops."""
    gamma, delta = folded.act_scale, folded.act_offset
    with_offsets = bool(folded.weight_offset.any())
    y, border = _binary_conv_and_border(x, folded, ones_kernel=with_offsets)
    c_out = folded.bits.shape[0]
    if with_offsets:
        parts = ops.variadic_split(y, _int(1), _int([c_out, 1]))
        y, y_ones = parts.output(0), parts.output(1)
        borders = ops.variadic_split(border, _int(1), _int([c_out, 1]))
        border, border_ones = borders.output(0), borders.output(1)
    out = y if gamma == 1.0 else ops.multiply(y, _const(gamma)).output(0)
    if delta != 0.0:
        # delta * (S - C_s) = delta * (S - (Y + C_s) + Y): C_s alone is the border map.
        sums = _channel(folded.signs.reshape(c_out, -1).sum(1))
        out = ops.add(out, ops.multiply(ops.subtract(sums, border), _const(delta))).output(0)
    out = ops.multiply(out, _channel(folded.weight_scale)).output(0)
    if with_offsets:
        taps = float(np.prod(folded.bits.shape[1:]))
        ones = y_ones if gamma == 1.0 else ops.multiply(y_ones, _const(gamma)).output(0)
        if delta != 0.0:
            valid = ops.subtract(_const(taps), border_ones)
            ones = ops.add(ones, ops.multiply(valid, _const(delta))).output(0)
        out = ops.add(out, ops.multiply(ones, _channel(folded.weight_offset))).output(0)
    return out


def _float_binary_conv(x: Node, folded: FoldedBinaryConv) -> Node:
    """The PyTorch simulation in float ops: sign as +-1 floats, a float conv with W_B."""
    u = _binary_input(x, folded)
    sign = ops.select(ops.greater(u, _const(0.0)), _const(1.0), _const(-1.0)).output(0)
    if folded.act_scale != 1.0:
        sign = ops.multiply(sign, _const(folded.act_scale)).output(0)
    if folded.act_offset != 0.0:
        sign = ops.add(sign, _const(folded.act_offset)).output(0)
    pad = list(folded.padding)
    return ops.convolution(
        sign, _const(folded.weight), list(folded.stride), pad, pad, list(folded.dilation)
    ).output(0)


class BackboneGraph:
    """Builds the OpenVINO model of a :class:`~cmim_dense.models.BinaryResNet`.

    Args:
        backbone: the network, in its current state (call ``eval()`` first: BN uses its running
            statistics).
        binary: ``BinaryConvolution`` layers (True) or the float simulation (False).

    Counts after :meth:`build`: ``binary_convs`` and ``float_convs``.
    """

    def __init__(self, backbone: BinaryResNet, binary: bool = True):
        if not isinstance(backbone, BinaryResNet):
            raise NotExportableError(
                f"{type(backbone).__name__} is not a binary ResNet; export it as float IR"
            )
        self.backbone = backbone
        self.binary = binary
        self.binary_convs = 0
        self.float_convs = 0

    def build(
        self,
        out_indices: tuple[int, ...] | None = None,
        input_shape: tuple[int, int, int, int] | None = None,
    ) -> ov.Model:
        """The model (N, 3, H, W) -> stage outputs ``out_indices`` (default: the backbone's).

        ``input_shape``: a static (N, 3, H, W) input, which the CPU plugin compiles as it is
        (default: dynamic N, H, W, to be reshaped before compiling).
        """
        indices = tuple(self.backbone.out_indices if out_indices is None else out_indices)
        shape = list(input_shape) if input_shape else [-1, 3, -1, -1]
        image = ops.parameter(shape, np.float32, name="image")
        x = self._sequential(image.output(0), self.backbone.stem)
        outputs = []
        for i, stage in enumerate(self.backbone.stages):
            for block in stage:
                x = self._sequential(x, block)
            if i in indices:
                outputs.append(x)
        results = []
        for i, out in zip(indices, outputs):
            result = ops.result(out)
            result.get_output_tensor(0).set_names({f"stage{i + 1}"})
            results.append(result)
        return ov.Model(results, [image], "binary_resnet" if self.binary else "binary_resnet_fp32")

    def _sequential(self, x: Node, modules: nn.Module) -> Node:
        for module in modules.children() if isinstance(modules, nn.Sequential) else [modules]:
            x = self._module(x, module)
        return x

    def _module(self, x: Node, module: nn.Module) -> Node:
        if isinstance(module, BinaryConvUnit):
            return self._unit(x, module)
        if isinstance(module, nn.Sequential):
            return self._sequential(x, module)
        if isinstance(module, BinaryConv2d):
            self.binary_convs += 1
            folded = fold_binary_conv(module)
            return binary_layer_output(x, folded) if self.binary else _float_binary_conv(x, folded)
        if isinstance(module, nn.Conv2d):
            self.float_convs += 1
            return _conv(x, module)
        if isinstance(module, nn.BatchNorm2d):
            return _batch_norm(x, module)
        if isinstance(module, nn.ReLU):
            return ops.relu(x).output(0)
        if isinstance(module, nn.Identity):
            return x
        if isinstance(module, nn.MaxPool2d):
            return self._max_pool(x, module)
        if isinstance(module, nn.AvgPool2d):
            return self._avg_pool(x, module)
        if isinstance(module, RPReLU):
            slope = module.prelu.weight.detach().cpu().numpy()
            shifted = ops.subtract(x, _channel(module.shift_in.detach().cpu().numpy()))
            y = ops.prelu(shifted, _channel(slope))  # (1, C, 1, 1): no broadcast ambiguity
            return ops.add(y, _channel(module.shift_out.detach().cpu().numpy())).output(0)
        if isinstance(module, Maxout):
            pos = ops.multiply(_channel(module.pos_scale.detach().cpu().numpy()), ops.relu(x))
            neg = ops.multiply(
                _channel(module.neg_scale.detach().cpu().numpy()), ops.relu(ops.negative(x))
            )
            return ops.subtract(pos, neg).output(0)
        raise NotExportableError(f"no OpenVINO export for the layer {type(module).__name__}")

    def _unit(self, x: Node, unit: BinaryConvUnit) -> Node:
        y = _batch_norm(self._module(x, unit.conv), unit.bn)
        return self._module(ops.add(y, self._module(x, unit.shortcut)).output(0), unit.act)

    @staticmethod
    def _max_pool(x: Node, pool: nn.MaxPool2d) -> Node:
        k, s, p = (_pair(v) for v in (pool.kernel_size, pool.stride, pool.padding))
        if _pair(pool.dilation) != [1, 1]:
            raise NotExportableError("dilated max pooling does not export")
        rounding = "ceil" if pool.ceil_mode else "floor"
        return ops1.max_pool(x, s, p, p, k, rounding_type=rounding).output(0)

    @staticmethod
    def _avg_pool(x: Node, pool: nn.AvgPool2d) -> Node:
        k, s, p = (_pair(v) for v in (pool.kernel_size, pool.stride, pool.padding))
        if p != [0, 0]:
            raise NotExportableError("padded average pooling does not export")
        # With no padding, PyTorch divides a window that ceil mode lets overhang the input by
        # its in-bounds count: OpenVINO's exclude_pad does the same.
        rounding = "ceil" if pool.ceil_mode else "floor"
        return ops1.avg_pool(x, s, p, p, k, True, rounding_type=rounding).output(0)


def _pair(value) -> list[int]:
    return list(value) if isinstance(value, tuple | list) else [value, value]
