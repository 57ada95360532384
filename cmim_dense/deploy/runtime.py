"""Running an exported backbone in OpenVINO from PyTorch code."""

from __future__ import annotations

import numpy as np
import openvino as ov
import torch
from torch import Tensor, nn

from cmim_dense.deploy.graph import BackboneGraph
from cmim_dense.registry import BACKBONE_RUNTIMES


@BACKBONE_RUNTIMES.register_module(name="openvino")
class OpenVINOBackbone:
    """Calls an OpenVINO model like a backbone: (N, 3, H, W) tensor -> tuple of stage outputs.

    The model is compiled once per input shape (``BinaryConvolution`` needs static shapes) on
    the CPU plugin with as many threads as torch uses. Inputs on another device are copied to
    the CPU and the outputs back.

    Args:
        model: an OpenVINO model with one (N, 3, H, W) input, e.g. from
            :meth:`BackboneGraph.build` or ``backbone.xml``.
        num_threads: inference threads (default: ``torch.get_num_threads()``).
    """

    def __init__(self, model: ov.Model, num_threads: int | None = None):
        self.model = model
        self.num_threads = num_threads or torch.get_num_threads()
        self._core = ov.Core()
        self._compiled: dict[tuple[int, ...], ov.CompiledModel] = {}

    @classmethod
    def from_backbone(cls, backbone: nn.Module, binary: bool = True) -> OpenVINOBackbone:
        """Export ``backbone`` (a BinaryResNet, in eval mode) in memory and wrap it."""
        return cls(BackboneGraph(backbone, binary=binary).build())

    def compiled(self, shape: tuple[int, ...]) -> ov.CompiledModel:
        """The model compiled for inputs of ``shape`` (N, 3, H, W)."""
        if shape not in self._compiled:
            model = self.model.clone()
            model.reshape({model.inputs[0]: ov.PartialShape(list(shape))})
            config = {"INFERENCE_NUM_THREADS": self.num_threads, "PERFORMANCE_HINT": "LATENCY"}
            self._compiled[shape] = self._core.compile_model(model, "CPU", config)
        return self._compiled[shape]

    def __call__(self, x: Tensor) -> tuple[Tensor, ...]:
        compiled = self.compiled(tuple(x.shape))
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        # Copies both ways: no OpenVINO buffer outlives its call inside a torch tensor.
        results = compiled(array, share_inputs=False, share_outputs=False)
        return tuple(torch.from_numpy(results[out]).to(x.device) for out in compiled.outputs)
