"""The dense model's float heads as an OpenVINO model, in the form the CPU plugin runs fastest.

:func:`heads_ir` converts the heads with OpenVINO's PyTorch frontend and then rewrites two
patterns that would otherwise reach the plugin as copies or reference kernels:

- ``ShapeOf -> Gather`` resize targets, constant once the input shapes are static;
- ``Concat(x_1 .. x_k, axis=1) -> Convolution`` (the ASPP bottleneck): the plugin cannot
  concatenate in place in the channels-last layout its convolutions use at full size, so it
  copies with its ``ref`` Concat. A convolution is linear in its input channels, so the pair is
  the sum of k convolutions, each with its slice of the weights::

      conv(concat(x_1 .. x_k), W) = conv(x_1, W[:, c_1]) + ... + conv(x_k, W[:, c_k])

  which the plugin fuses as sum post-ops. In fp32 only the order of the additions changes.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
from openvino.passes import ConstantFolding, Manager
from torch import Tensor, nn

from cmim_dense.models.dense import MultiTaskDense


class _Heads(nn.Module):
    """The dense model's heads as one traceable module: stage features -> raw head outputs."""

    def __init__(self, model: MultiTaskDense):
        super().__init__()
        self.heads = nn.ModuleDict(model.heads)

    def forward(self, *feats: Tensor) -> tuple[Tensor, ...]:
        return tuple(head(list(feats)) for head in self.heads.values())


def _fold_static_shapes(model: ov.Model) -> None:
    """Replace every ``ShapeOf`` of a static shape by a constant, and fold what follows."""
    for op in model.get_ordered_ops():
        if op.get_type_name() == "ShapeOf" and op.input(0).get_partial_shape().is_static:
            dtype = op.output(0).get_element_type().to_dtype()
            shape = ops.constant(np.array(op.input(0).get_shape(), dtype=dtype))
            op.output(0).replace(shape.output(0))
    manager = Manager()
    manager.register_pass(ConstantFolding())
    manager.run_passes(model)


def _split_concat_convs(model: ov.Model) -> None:
    """Rewrite every channel ``Concat`` read only by one ``Convolution`` with constant weights
    (O, sum c_i, kh, kw) as the sum of per-input convolutions (module docstring)."""
    for concat in model.get_ordered_ops():
        if concat.get_type_name() != "Concat":
            continue
        rank = concat.get_output_partial_shape(0).rank.get_length()
        if concat.get_attributes()["axis"] % rank != 1:  # not the channel axis
            continue
        readers = list(concat.output(0).get_target_inputs())
        conv = readers[0].get_node() if len(readers) == 1 else None
        if conv is None or conv.get_type_name() != "Convolution" or readers[0].get_index() != 0:
            continue
        weights = conv.input_value(1).get_node()
        if weights.get_type_name() != "Constant":
            continue
        attrs = conv.get_attributes()
        kernel = weights.get_data()
        total, offset = None, 0
        for part in concat.input_values():
            channels = part.get_partial_shape()[1].get_length()
            piece = ops.constant(np.ascontiguousarray(kernel[:, offset : offset + channels]))
            offset += channels
            term = ops.convolution(
                part, piece, attrs["strides"], attrs["pads_begin"], attrs["pads_end"],
                attrs["dilations"], attrs["auto_pad"],
            )  # fmt: skip
            total = term if total is None else ops.add(total, term)
        conv.output(0).replace(total.output(0))


def heads_ir(model: MultiTaskDense, feats: tuple[Tensor, ...]) -> ov.Model:
    """The heads alone, converted by OpenVINO's PyTorch frontend: one input per stage output
    (static, the shapes of ``feats`` (1, C_i, h_i, w_i)) -> raw head outputs, named by task.

    Static resize targets are folded and channel concats into a conv are split (module
    docstring), so the plugin runs neither a reference kernel nor a copying Concat for them."""
    heads = ov.convert_model(_Heads(model).eval(), example_input=tuple(feats))
    heads.reshape({p: ov.PartialShape(list(f.shape)) for p, f in zip(heads.inputs, feats)})
    _fold_static_shapes(heads)
    _split_concat_convs(heads)
    heads.validate_nodes_and_infer_types()
    for result, name in zip(heads.get_results(), model.heads):
        result.get_output_tensor(0).set_names({name})
    return heads
