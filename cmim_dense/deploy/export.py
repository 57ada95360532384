"""Export a project model to OpenVINO IR: the bit-packed binary backbone, and the dense model.

``export_model`` writes into ``out_dir``::

    backbone.xml / .bin   the backbone, every binary conv an xnor-popcount BinaryConvolution with
                          u1 weights (a backbone with no binary layer: plain fp32 IR)
    model.xml / .bin      dense models only: backbone + heads, outputs the heads' raw outputs
                          (seg logits, depth in metres, at feature resolution)
    export.json           what was exported and how exact it is (:data:`EXPORT_FORMAT`)

The folder is written beside ``out_dir`` and renamed into place, so it is complete or absent.
Only a folder this module wrote (with a valid ``export.json``) is ever replaced.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import torch
from mmengine.config import Config
from torch import Tensor, nn

from cmim_dense.binary import BinaryConv2d
from cmim_dense.deploy.fold import NotExportableError
from cmim_dense.deploy.graph import BackboneGraph
from cmim_dense.deploy.runtime import OpenVINOBackbone
from cmim_dense.models.backbones.bin_resnet import BinaryResNet
from cmim_dense.models.dense import MultiTaskDense
from cmim_dense.utils.errors import InputError
from cmim_dense.utils.io import replace_dir, write_json_atomic

EXPORT_FORMAT = "cmim_dense.export/1"
STAMP = "export.json"


class _Heads(nn.Module):
    """The dense model's heads as one traceable module: stage features -> raw head outputs."""

    def __init__(self, model: MultiTaskDense):
        super().__init__()
        self.heads = nn.ModuleDict(model.heads)

    def forward(self, *feats: Tensor) -> tuple[Tensor, ...]:
        return tuple(head(list(feats)) for head in self.heads.values())


def backbone_features(backbone: nn.Module, image: Tensor) -> tuple[Tensor, ...]:
    """The backbone's feature maps in PyTorch, as its IR outputs them: (1, C_i, h_i, w_i) each.

    A binary ResNet with a classifier (a pretraining model) gives its stage outputs, not logits.
    """
    with torch.no_grad():
        if isinstance(backbone, BinaryResNet):
            indices = backbone.out_indices
            return tuple(backbone.forward_intermediates(image, indices, intermediates_only=True))
        out = backbone(image)
    return tuple(out) if isinstance(out, list | tuple) else (out,)


def backbone_ir(backbone: nn.Module, example: Tensor) -> tuple[ov.Model, dict]:
    """The backbone as an OpenVINO model, and its layer counts.

    A :class:`BinaryResNet` is built op by op (:class:`BackboneGraph`); any other backbone has
    no binary layer and goes through OpenVINO's PyTorch frontend as plain fp32 IR.
    """
    if isinstance(backbone, BinaryResNet):
        graph = BackboneGraph(backbone)
        model = graph.build()
        return model, dict(binary_convs=graph.binary_convs, float_convs=graph.float_convs)
    if any(isinstance(m, BinaryConv2d) for m in backbone.modules()):
        raise NotExportableError(
            f"{type(backbone).__name__} has binary convs but is not a BinaryResNet: no exact "
            "bit-packed export is known for it"
        )
    convs = sum(isinstance(m, nn.Conv2d) for m in backbone.modules())
    model = ov.convert_model(backbone, example_input=example)
    return model, dict(binary_convs=0, float_convs=convs)


def dense_ir(model: MultiTaskDense, backbone: ov.Model, feats: tuple[Tensor, ...]) -> ov.Model:
    """Backbone + heads: the heads converted by OpenVINO's PyTorch frontend, fed by ``backbone``.

    ``feats``: example stage outputs of the backbone (N, C_i, h_i, w_i), in its output order.
    """
    heads = ov.convert_model(_Heads(model).eval(), example_input=tuple(feats))
    params = heads.get_parameters()
    sources = [result.input_value(0) for result in backbone.get_results()]
    if len(params) != len(sources):
        raise NotExportableError(
            f"the heads read {len(params)} feature maps, the backbone gives {len(sources)}"
        )
    for param, source in zip(params, sources):
        for target in list(param.output(0).get_target_inputs()):
            target.replace_source_output(source)
    results = []
    for old, name in zip(heads.get_results(), model.heads):
        result = ops.result(old.input_value(0))
        result.get_output_tensor(0).set_names({name})
        results.append(result)
    return ov.Model(results, backbone.get_parameters(), "multitask_dense")


def _relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    denom = float(np.linalg.norm(reference))
    return float(np.linalg.norm(ours - reference)) / denom if denom > 0 else 0.0


def _state_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _check_out_dir(out_dir: Path) -> None:
    """Refuse an output folder that holds anything this exporter did not write."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    if not any(out_dir.iterdir()):
        return
    try:
        stamp = json.loads((out_dir / STAMP).read_text())
    except (OSError, ValueError):
        stamp = None
    if not isinstance(stamp, dict) or stamp.get("format") != EXPORT_FORMAT:
        raise InputError(
            f"{out_dir}: holds files this exporter did not write (no valid {STAMP}); "
            "choose another --out or empty it"
        )


def export_model(
    model: nn.Module,
    out_dir: str | os.PathLike,
    input_size: tuple[int, int],
    info: dict | None = None,
    seed: int = 0,
) -> dict:
    """Export ``model`` (a classifier with a ``backbone``, or a :class:`MultiTaskDense`).

    Exactness is measured on one random image of ``input_size`` (H, W): the relative L2 error of
    every backbone output, and for a dense model the share of identical segmentation argmax
    pixels and the largest depth difference (m). ``info`` is added to ``export.json``.

    Returns:
        The ``export.json`` record.

    Raises:
        InputError: ``out_dir`` holds foreign files. NotExportableError: a layer that has no
            exact export.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    model = model.eval()
    backbone = model.backbone
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 3, *input_size, generator=generator)
    reference = backbone_features(backbone, image)
    ir, counts = backbone_ir(backbone, image)
    outputs = OpenVINOBackbone(ir)(image)
    errors = {
        "feature_relative_l2": max(
            _relative_error(o.numpy(), r.numpy()) for o, r in zip(outputs, reference)
        ),
        "feature_max_abs": max(float((o - r).abs().max()) for o, r in zip(outputs, reference)),
    }
    dense = isinstance(model, MultiTaskDense)
    if dense:
        full = dense_ir(model, ir, reference)
        errors.update(_dense_errors(model, full, image, reference))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        ov.save_model(ir, tmp / "backbone.xml", compress_to_fp16=False)
        if dense:
            ov.save_model(full, tmp / "model.xml", compress_to_fp16=False)
        ir_bytes = (tmp / "backbone.bin").stat().st_size
        fp32_bytes = _state_bytes(backbone)
        record = dict(
            format=EXPORT_FORMAT,
            **(info or {}),
            binary_convs=counts["binary_convs"],
            float_convs=counts["float_convs"],
            ir_weight_bytes=ir_bytes,
            fp32_state_dict_bytes=fp32_bytes,
            size_ratio=fp32_bytes / ir_bytes,
            output_stride=round(image.shape[-1] / reference[-1].shape[-1]),
            input_size=list(input_size),
            outputs=[list(r.shape[1:]) for r in reference],
            max_error=errors,
            files=[*sorted(p.name for p in tmp.iterdir()), STAMP],
        )
        write_json_atomic(tmp / STAMP, record)
        _check_out_dir(out_dir)  # it may have changed meanwhile
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def _dense_errors(
    model: MultiTaskDense, full: ov.Model, image: Tensor, feats: tuple[Tensor, ...]
) -> dict:
    """Seg argmax agreement (%) and the largest depth difference (m) of the whole model, against
    the PyTorch heads on the PyTorch backbone's features ``feats``."""
    with torch.no_grad():
        reference = {name: head(list(feats)) for name, head in model.heads.items()}
    compiled = OpenVINOBackbone(full)
    outputs = dict(zip(model.heads, compiled(image)))
    errors = {}
    if "seg" in outputs:
        same = outputs["seg"].argmax(1) == reference["seg"].argmax(1)
        errors["seg_argmax_agreement"] = 100.0 * float(same.float().mean())
    if "depth" in outputs:
        errors["depth_max_abs_m"] = float((outputs["depth"] - reference["depth"]).abs().max())
    errors["heads_relative_l2"] = max(
        _relative_error(outputs[k].numpy(), reference[k].numpy()) for k in outputs
    )
    if not all(math.isfinite(v) for v in errors.values()):
        raise NotExportableError(f"the exported model gives non-finite outputs: {errors}")
    return errors


def default_input_size(cfg: Config) -> tuple[int, int]:
    """The size a config's model sees: a dense model's crop size, else 32 (CIFAR stem) or 224."""
    size = cfg.model.get("data_preprocessor", {}).get("size")
    if size:
        return tuple(size)
    return (32, 32) if cfg.model.get("backbone", {}).get("stem") == "cifar" else (224, 224)


def export_config(
    config: str,
    checkpoint: str | None,
    out_dir: str | os.PathLike,
    input_size: tuple[int, int] | None = None,
    cfg_options: dict | None = None,
) -> dict:
    """Build ``config``'s model, load ``checkpoint`` strictly (none: the config's own
    initialisation) and :func:`export_model` it; returns the ``export.json`` record."""
    from cmim_dense.engine.config import build_model, load_config

    cfg = load_config(config, cfg_options)
    _check_out_dir(Path(out_dir))
    model = build_model(cfg, checkpoint, init_weights=checkpoint is None)
    if not hasattr(model, "backbone"):
        raise NotExportableError(f"{config}: the model has no backbone to export")
    size = tuple(input_size) if input_size else default_input_size(cfg)
    binarizer = cfg.model.get("backbone", {}).get("binarizer")
    info = dict(
        config=str(config),
        checkpoint=str(checkpoint) if checkpoint else None,
        binarizer=binarizer.get("type") if isinstance(binarizer, dict) else binarizer,
    )
    return export_model(model, out_dir, size, info)
