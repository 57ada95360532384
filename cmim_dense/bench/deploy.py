"""The bit-packed OpenVINO backbone against the PyTorch simulation, whole and layer by layer."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import torch
from torch import Tensor, nn

from cmim_dense.deploy.export import backbone_features
from cmim_dense.deploy.fold import fold_binary_conv
from cmim_dense.deploy.graph import BackboneGraph, binary_layer_output
from cmim_dense.deploy.runtime import OpenVINOBackbone
from cmim_dense.engine.config import build_model


def backbone_from_config(config: str) -> nn.Module:
    """The config's backbone, randomly initialised, in eval mode (speed does not depend on the
    weights' values); a classifier's backbone is timed up to its features."""
    options = {"model.backbone.pretrained": None, "model.backbone.init_cfg": None}
    return build_model(config, cfg_options=options).backbone.eval()


def deploy_steps(config: str, height: int, width: int, threads: int = 2) -> tuple[dict, dict, dict]:
    """The config's frozen binary backbone at batch 1, run four ways, as timed step functions.

    Returns:
        (backbone steps: ``torch_fp32`` (the PyTorch simulation), ``openvino_fp32`` (the same
        float computation as OpenVINO IR), ``openvino_binary`` (xnor-popcount IR);
        per-layer steps ``"<i> torch"`` / ``"<i> openvino"`` for every binary conv, on the
        input it sees in the backbone; sizes: ``binary_ir_bytes`` and ``fp32_state_dict_bytes``).
    """
    backbone = backbone_from_config(config)
    image = torch.randn(1, 3, height, width)
    engines = {
        "openvino_fp32": OpenVINOBackbone(BackboneGraph(backbone, binary=False).build(), threads),
        "openvino_binary": OpenVINOBackbone(BackboneGraph(backbone, binary=True).build(), threads),
    }

    def torch_step() -> None:
        backbone_features(backbone, image)

    steps = {"torch_fp32": torch_step}
    steps.update({name: (lambda e=e: e(image)) for name, e in engines.items()})

    inputs: list[Tensor] = []
    convs = backbone.binary_convs()
    hooks = [c.register_forward_pre_hook(lambda _, args: inputs.append(args[0])) for c in convs]
    torch_step()
    for hook in hooks:
        hook.remove()
    layers = {}
    for i, (conv, x) in enumerate(zip(convs, inputs)):
        param = ops.parameter(list(x.shape), np.float32)
        out = binary_layer_output(param.output(0), fold_binary_conv(conv))
        layer = OpenVINOBackbone(ov.Model([ops.result(out)], [param]), threads)

        def torch_layer(conv=conv, x=x) -> None:
            with torch.no_grad():
                conv(x)

        layers[f"{i:2d} torch"] = torch_layer
        layers[f"{i:2d} openvino"] = lambda layer=layer, x=x: layer(x)
    with tempfile.TemporaryDirectory() as tmp:
        ov.save_model(
            engines["openvino_binary"].model, f"{tmp}/backbone.xml", compress_to_fp16=False
        )
        ir_bytes = os.path.getsize(f"{tmp}/backbone.bin")
    sizes = dict(
        binary_ir_bytes=ir_bytes,
        fp32_state_dict_bytes=sum(
            t.numel() * t.element_size() for t in backbone.state_dict().values()
        ),
    )
    return steps, layers, sizes
