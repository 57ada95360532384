"""Export a project model to OpenVINO IR: the bit-packed binary backbone, and the dense model.

``export_model`` writes into ``out_dir``::

    backbone.xml / .bin   the backbone, every binary conv an xnor-popcount BinaryConvolution with
                          u1 weights (a backbone with no binary layer: plain fp32 IR)
    model.xml / .bin      dense models only: backbone + heads, outputs the heads' raw outputs
                          (seg logits, depth in metres, at feature resolution)
    heads.xml / .bin      instead of model.xml with ``int8_heads``: the heads alone, INT8 (NNCF
                          post-training quantization), run on backbone.xml's outputs
                          (:class:`~cmim_dense.deploy.runtime.ChainedModel`), so the backbone
                          runs exactly as in the fp32 export
    export.json           what was exported, from what, how to compile it and how exact it is
                          (:data:`~cmim_dense.deploy.runtime.EXPORT_FORMAT`)

Every IR has a static (1, 3, H, W) input, so a plain ``compile_model`` compiles it. The folder is
written beside ``out_dir`` (``.NAME.partial-PID-...``) and renamed into place, so it is complete
or absent; staging folders of dead processes are removed. Only a folder this module wrote (with a
valid ``export.json``) is ever replaced. Config-level work (building the model, loading the
checkpoint, reading frames) is :mod:`cmim_dense.engine.export`'s.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmim_dense.binary import BinaryConv2d
from cmim_dense.deploy.fold import NotExportableError
from cmim_dense.deploy.graph import BackboneGraph
from cmim_dense.deploy.heads import heads_ir
from cmim_dense.deploy.runtime import (
    COMPILE_NOTE,
    COMPILE_PROPERTIES,
    EXPORT_FORMAT,
    STAMP,
    ChainedModel,
    OpenVINOBackbone,
    require_binary_support,
)
from cmim_dense.models.backbones.bin_resnet import BinaryResNet
from cmim_dense.models.dense import MultiTaskDense
from cmim_dense.utils.errors import InputError
from cmim_dense.utils.io import replace_dir, write_json_atomic

# Below these, export warns: the deployed model no longer gives the PyTorch model's results.
MIN_SEG_AGREEMENT = 99.0  # % of pixels with the same class
MAX_DEPTH_RELATIVE = 0.01  # mean |depth difference| / mean depth


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
    """The backbone as an OpenVINO model with the static input shape of ``example`` (1, 3, H, W),
    and its layer counts.

    A :class:`BinaryResNet` is built op by op (:class:`BackboneGraph`); any other backbone has
    no binary layer and goes through OpenVINO's PyTorch frontend as plain fp32 IR.
    """
    if isinstance(backbone, BinaryResNet):
        graph = BackboneGraph(backbone)
        model = graph.build(input_shape=tuple(example.shape))
        return model, dict(binary_convs=graph.binary_convs, float_convs=graph.float_convs)
    if any(isinstance(m, BinaryConv2d) for m in backbone.modules()):
        raise NotExportableError(
            f"{type(backbone).__name__} has binary convs but is not a BinaryResNet: no exact "
            "bit-packed export is known for it"
        )
    convs = sum(isinstance(m, nn.Conv2d) for m in backbone.modules())
    model = ov.convert_model(backbone, example_input=example)
    model.reshape({model.inputs[0]: ov.PartialShape(list(example.shape))})
    return model, dict(binary_convs=0, float_convs=convs)


def dense_ir(
    model: MultiTaskDense,
    backbone: ov.Model,
    feats: tuple[Tensor, ...],
    heads: ov.Model | None = None,
) -> ov.Model:
    """Backbone + heads: ``heads`` (default: :func:`heads_ir`) fed by ``backbone``'s outputs.

    ``feats``: example stage outputs of the backbone (N, C_i, h_i, w_i), in its output order.
    The backbone's nodes are reused as they are.
    """
    heads = heads_ir(model, feats) if heads is None else heads
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


def check_out_dir(out_dir: Path) -> None:
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
    found = stamp.get("format") if isinstance(stamp, dict) else None
    if not (isinstance(found, str) and found.startswith(EXPORT_FORMAT.split("/")[0] + "/")):
        raise InputError(
            f"{out_dir}: holds files this exporter did not write (no valid {STAMP}); "
            "choose another --out or empty it"
        )


def _stage_dir(out_dir: Path) -> Path:
    """A new staging folder beside ``out_dir`` (mode from the umask), named with this pid; the
    staging folders of processes that are gone are removed first."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(f".{out_dir.name}.partial-") + r"(\d+)-")
    for old in out_dir.parent.iterdir():
        match = pattern.match(old.name)
        if match and old.is_dir() and not _alive(int(match.group(1))):
            shutil.rmtree(old, ignore_errors=True)
            print(f"removed {old}: the staging folder of a dead export", file=sys.stderr)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    return tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def quantize_heads(heads: ov.Model, features: list[tuple[np.ndarray, ...]]) -> ov.Model:
    """``heads`` (:func:`heads_ir`) with its float convs quantized to INT8 by NNCF
    post-training quantization, calibrated on ``features``: per frame, the backbone's stage
    outputs (1, C_i, h_i, w_i) float32. Quantizing the heads alone, then stitching them to the
    backbone (:func:`dense_ir`), leaves every backbone node as it is."""
    import nncf

    return nncf.quantize(heads, nncf.Dataset(features), subset_size=len(features))


def _feature_errors(outputs: tuple[Tensor, ...], reference: tuple[Tensor, ...]) -> dict:
    """The IR's backbone ``outputs`` against PyTorch's ``reference`` (each (1, C_i, h_i, w_i)):
    the largest relative L2 error and the largest absolute difference over the outputs."""
    return {
        "feature_relative_l2": max(
            _relative_error(o.numpy(), r.numpy()) for o, r in zip(outputs, reference)
        ),
        "feature_max_abs": max(float((o - r).abs().max()) for o, r in zip(outputs, reference)),
    }


def _record_header(info: dict | None, int8_heads: bool, input_size: tuple[int, int]) -> dict:
    """The first fields of ``export.json``: its format, ``info``, the precision, the static
    input shape and how to compile the IRs."""
    return dict(
        format=EXPORT_FORMAT,
        **(info or {}),
        precision="int8_heads" if int8_heads else "fp32",
        input_shape=[1, 3, *input_size],
        compile=dict(properties=COMPILE_PROPERTIES, why=COMPILE_NOTE),
    )


def _dense_irs(
    model: MultiTaskDense,
    ir: ov.Model,
    backbone_engine: OpenVINOBackbone,
    reference: tuple[Tensor, ...],
    calibration: np.ndarray | None,
) -> tuple[ov.Model, ov.Model | None, OpenVINOBackbone | ChainedModel]:
    """The heads IR, the whole-model IR (None with INT8 heads) and the engine that runs them
    from an image; ``calibration`` (N, 3, H, W) frames make the heads INT8 on the backbone
    IR's features of them."""
    heads = heads_ir(model, reference)
    if calibration is not None:
        features = [
            tuple(f.numpy() for f in backbone_engine(torch.from_numpy(frame[None])))
            for frame in np.asarray(calibration, np.float32)
        ]
        heads = quantize_heads(heads, features)
        return heads, None, ChainedModel(ir, heads)
    full = dense_ir(model, ir, reference, heads)
    return heads, full, OpenVINOBackbone(full)


def _save_irs(folder: Path, ir: ov.Model, full: ov.Model | None, heads: ov.Model | None) -> None:
    """Write backbone.xml/.bin into ``folder``, and model.xml/.bin (the whole model) or else
    heads.xml/.bin (INT8 heads) where there is one."""
    ov.save_model(ir, folder / "backbone.xml", compress_to_fp16=False)
    if full is not None:
        ov.save_model(full, folder / "model.xml", compress_to_fp16=False)
    elif heads is not None:
        ov.save_model(heads, folder / "heads.xml", compress_to_fp16=False)


def _size_fields(folder: Path, backbone: nn.Module, counts: dict) -> dict:
    """The record's layer counts and sizes: the backbone IR's weight file in ``folder`` against
    the backbone's fp32 state dict, both in bytes."""
    ir_bytes = (folder / "backbone.bin").stat().st_size
    fp32_bytes = _state_bytes(backbone)
    return dict(
        binary_convs=counts["binary_convs"],
        float_convs=counts["float_convs"],
        ir_weight_bytes=ir_bytes,
        fp32_state_dict_bytes=fp32_bytes,
        size_ratio=fp32_bytes / ir_bytes,
    )


def export_model(
    model: nn.Module,
    out_dir: str | os.PathLike,
    input_size: tuple[int, int],
    info: dict | None = None,
    seed: int = 0,
    frames: np.ndarray | None = None,
    calibration: np.ndarray | None = None,
) -> dict:
    """Export ``model`` (a classifier with a ``backbone``, or a :class:`MultiTaskDense`) with a
    static (1, 3, H, W) input of ``input_size`` (H, W).

    Exactness is measured on one random image of ``input_size``: the relative L2 error of every
    backbone output, and for a dense model the share of identical segmentation argmax pixels
    and the largest depth difference (m) (``max_error``). A dense model is also compared on
    ``frames`` (N, 3, H, W), real normalised frames where the data exist (``agreement``); below
    :data:`MIN_SEG_AGREEMENT` or above :data:`MAX_DEPTH_RELATIVE` it warns in one line.
    ``calibration`` (N, 3, H, W): quantize the dense model's heads to INT8 on these frames
    (:func:`quantize_heads`). ``info`` is added to ``export.json``.

    Returns:
        The ``export.json`` record.

    Raises:
        InputError: ``out_dir`` holds foreign files, bad ``input_size``, INT8 heads asked of a
            model with no heads, or a CPU without ``BinaryConvolution``. NotExportableError: a
            layer that has no exact export.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    if len(input_size) != 2 or min(input_size) < 1:
        raise InputError(f"input size must be two positive integers H W, got {input_size}")
    model = model.eval()
    backbone = model.backbone
    dense = isinstance(model, MultiTaskDense)
    if calibration is not None and not dense:
        raise InputError("--int8-heads quantizes a dense model's heads; this model has none")
    if isinstance(backbone, BinaryResNet) and backbone.binary_convs():
        require_binary_support()
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 3, *input_size, generator=generator)
    reference = backbone_features(backbone, image)
    ir, counts = backbone_ir(backbone, image)
    backbone_engine = OpenVINOBackbone(ir)
    errors = _feature_errors(backbone_engine(image), reference)
    record = _record_header(info, calibration is not None, input_size)
    full = heads = None
    if dense:
        heads, full, engine = _dense_irs(model, ir, backbone_engine, reference, calibration)
        errors.update(_dense_errors(model, engine, image, reference))
        if frames is not None and len(frames):
            record["agreement"] = frame_agreement(model, engine, frames)
        record["warnings"] = _agreement_warnings(record.get("agreement") or errors)

    tmp = _stage_dir(out_dir)
    try:
        _save_irs(tmp, ir, full, heads)
        record.update(
            **_size_fields(tmp, backbone, counts),
            output_stride=round(image.shape[-1] / reference[-1].shape[-1]),
            input_size=list(input_size),
            outputs=[list(r.shape[1:]) for r in reference],
            max_error=errors,
            files=[*sorted(p.name for p in tmp.iterdir()), STAMP],
        )
        write_json_atomic(tmp / STAMP, record)
        check_out_dir(out_dir)  # it may have changed meanwhile
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for line in record.get("warnings", []):
        print(f"warning: {line}", file=sys.stderr)
    return record


def _torch_heads(model: MultiTaskDense, feats: tuple[Tensor, ...]) -> dict[str, Tensor]:
    with torch.no_grad():
        return {name: head(list(feats)) for name, head in model.heads.items()}


def _dense_errors(
    model: MultiTaskDense,
    engine: OpenVINOBackbone | ChainedModel,
    image: Tensor,
    feats: tuple[Tensor, ...],
) -> dict:
    """Seg argmax agreement (%) and the largest depth difference (m) of the whole model, against
    the PyTorch heads on the PyTorch backbone's features ``feats``."""
    reference = _torch_heads(model, feats)
    outputs = dict(zip(model.heads, engine(image)))
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


def frame_agreement(
    model: MultiTaskDense, engine: OpenVINOBackbone | ChainedModel, frames: np.ndarray
) -> dict:
    """The whole IR against the PyTorch model (its own backbone) on ``frames`` (N, 3, H, W).

    Both models' head outputs are resized to the frame size (bilinear, like the model's predict)
    before the argmax. Returns ``frames`` (N), ``seg_pixel_agreement`` (% of pixels with the same
    class), ``depth_mean_abs_m``, ``depth_max_abs_m`` and ``depth_mean_relative`` (mean absolute
    difference / mean PyTorch depth); keys of absent heads are left out.
    """
    sums = dict(same=0.0, pixels=0, depth_abs=0.0, depth_ref=0.0, depth_max=0.0)
    for frame in np.asarray(frames, np.float32):
        x = torch.from_numpy(frame[None])
        reference = _torch_heads(model, backbone_features(model.backbone, x))
        ours = dict(zip(model.heads, engine(x)))
        size = frame.shape[1:]
        up = {
            name: {
                k: F.interpolate(v[name], size, mode="bilinear", align_corners=model.align_corners)
                for k, v in (("ours", ours), ("ref", reference))
            }
            for name in ours
        }
        if "seg" in up:
            same = up["seg"]["ours"].argmax(1) == up["seg"]["ref"].argmax(1)
            sums["same"] += float(same.sum())
            sums["pixels"] += same.numel()
        if "depth" in up:
            diff = (up["depth"]["ours"] - up["depth"]["ref"]).abs()
            sums["depth_abs"] += float(diff.sum())
            sums["depth_ref"] += float(up["depth"]["ref"].abs().sum())
            sums["depth_max"] = max(sums["depth_max"], float(diff.max()))
    n = len(frames)
    result: dict = dict(frames=n)
    if "seg" in model.heads:
        result["seg_pixel_agreement"] = 100.0 * sums["same"] / sums["pixels"]
    if "depth" in model.heads:
        pixels = n * int(np.prod(frames.shape[2:]))
        result["depth_mean_abs_m"] = sums["depth_abs"] / pixels
        result["depth_max_abs_m"] = sums["depth_max"]
        result["depth_mean_relative"] = sums["depth_abs"] / max(sums["depth_ref"], 1e-12)
    return result


def _agreement_warnings(agreement: dict) -> list[str]:
    """One line per measure beyond its bound (:data:`MIN_SEG_AGREEMENT`,
    :data:`MAX_DEPTH_RELATIVE`)."""
    lines = []
    where = (
        f"on {agreement['frames']} real frames" if "frames" in agreement else "on a random image"
    )
    seg = agreement.get("seg_pixel_agreement", agreement.get("seg_argmax_agreement"))
    if seg is not None and seg < MIN_SEG_AGREEMENT:
        lines.append(
            f"the exported segmentation agrees with PyTorch on {seg:.2f}% of pixels {where} "
            f"(< {MIN_SEG_AGREEMENT}%)"
        )
    relative = agreement.get("depth_mean_relative")
    if relative is not None and relative > MAX_DEPTH_RELATIVE:
        lines.append(
            f"the exported depth differs from PyTorch by {100 * relative:.2f}% on average {where} "
            f"(> {100 * MAX_DEPTH_RELATIVE:.0f}%)"
        )
    return lines
