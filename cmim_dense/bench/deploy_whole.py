"""The whole dense model deployed: latency of PyTorch eager against three OpenVINO forms.

``python tools/benchmark.py deploy --whole`` prints what :func:`run_deploy_whole` measures: for
a dense config at batch 1 (random weights: speed does not depend on their values), interleaved
medians of

- ``torch_eager``: the PyTorch model, backbone and heads (raw head outputs, no resize);
- ``openvino_fp32``: the same graph in OpenVINO, the binary convs as float convolutions;
- ``openvino_binary``: the bit-packed binary backbone with fp32 heads (``model.xml``);
- ``openvino_binary_int8``: the binary backbone, then INT8 heads (NNCF, calibrated on the
  backbone's features of a few random frames), compiled apart as exported
  (:class:`~cmim_dense.deploy.runtime.ChainedModel`);
- ``binary_backbone`` and ``int8_heads``: the two parts of the last one alone, for the heads'
  share of the deployed latency.

and the slowest ops of the deployed model by OpenVINO's per-op counters, with the number of
reference (``ref*``) kernels.
"""

from __future__ import annotations

import collections

import numpy as np
import openvino as ov
import torch

from cmim_dense.bench.timing import median_step_times
from cmim_dense.deploy.export import backbone_features, dense_ir, quantize_heads
from cmim_dense.deploy.graph import BackboneGraph
from cmim_dense.deploy.heads import heads_ir
from cmim_dense.deploy.runtime import ChainedModel, OpenVINOBackbone, compile_model
from cmim_dense.engine.config import build_model

CALIBRATION_FRAMES = 4


def whole_model_steps(
    config: str, height: int, width: int, threads: int = 2
) -> tuple[dict, dict[str, ov.Model]]:
    """Step functions of every variant (see the module docstring) on one (1, 3, H, W) image,
    and the OpenVINO models of the deployed form (``backbone``, ``heads``)."""
    torch.set_num_threads(threads)
    model = build_model(config, cfg_options={"model.backbone_backend": "torch"}, init_weights=True)
    shape = (1, 3, height, width)
    image = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    feats = backbone_features(model.backbone, image)
    graphs = {b: BackboneGraph(model.backbone, binary=b).build(input_shape=shape) for b in (0, 1)}
    fp32 = OpenVINOBackbone(dense_ir(model, graphs[0], feats), threads)
    binary = OpenVINOBackbone(dense_ir(model, graphs[1], feats), threads)
    backbone = BackboneGraph(model.backbone).build(input_shape=shape)
    backbone_engine = OpenVINOBackbone(backbone, threads)
    generator = torch.Generator().manual_seed(1)
    features = [
        tuple(f.numpy() for f in backbone_engine(torch.randn(*shape, generator=generator)))
        for _ in range(CALIBRATION_FRAMES)
    ]
    heads = quantize_heads(heads_ir(model, feats), features)
    deployed = ChainedModel(backbone, heads, threads)
    heads_engine = compile_model(heads, threads).create_infer_request()
    feature_arrays = [f.numpy() for f in feats]
    array = image.numpy()

    def torch_step() -> None:
        with torch.no_grad():
            out = model.extract_feat(image)
            for head in model.heads.values():
                head(out)

    steps = {
        "torch_eager": torch_step,
        "openvino_fp32": lambda: fp32(image),
        "openvino_binary": lambda: binary(image),
        "openvino_binary_int8": lambda: deployed.run(array),
        "binary_backbone": lambda: backbone_engine(image),
        "int8_heads": lambda: heads_engine.infer(feature_arrays),
    }
    return steps, {"backbone": backbone, "heads": heads}


def slowest_ops(models: list[ov.Model], inputs: list, threads: int, top: int = 5) -> tuple:
    """OpenVINO's per-op counters of ``models`` run in turn on ``inputs`` (one per model, after
    3 warm-up runs): the ``top`` slowest ops as (name, type, exec type, ms), the total ms, and
    the ops that ran a reference kernel (exec type ``ref*``) as (name, type, exec type)."""
    rows = []
    for model, data in zip(models, inputs):
        request = compile_model(model, threads, PERF_COUNT=True).create_infer_request()
        for _ in range(3):
            request.infer(data)
        for info in request.get_profiling_info():
            ms = info.real_time.total_seconds() * 1e3
            rows.append((info.node_name, info.node_type, info.exec_type, ms))
    rows.sort(key=lambda row: -row[3])
    refs = [row[:3] for row in rows if row[2].startswith("ref")]
    return rows[:top], sum(row[3] for row in rows), refs


def run_deploy_whole(config: str, height: int, width: int, threads: int, iters: int) -> dict:
    """Measure, print and return the medians (s) and ratios; see the module docstring."""
    steps, deployed = whole_model_steps(config, height, width, threads)
    times = median_step_times(steps, iters)
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    print(
        f"{config} at {height}x{width}, batch 1, {threads} threads; torch ISA "
        f"{torch.backends.cpu.get_cpu_capability()}, OpenVINO CPU capabilities {', '.join(caps)}"
    )
    for name, value in times.items():
        print(f"  {name:22s} {value * 1e3:8.1f} ms")
    int8 = times["openvino_binary_int8"]
    ratios = {
        "torch_eager/binary_int8": times["torch_eager"] / int8,
        "openvino_fp32/binary_int8": times["openvino_fp32"] / int8,
        "torch_eager/binary_fp32_heads": times["torch_eager"] / times["openvino_binary"],
        "heads_share_of_binary_int8": times["int8_heads"] / int8,
    }
    shape = (1, 3, height, width)
    image = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feats = list(compile_model(deployed["backbone"], threads)(image).values())
    top, total, refs = slowest_ops(
        [deployed["backbone"], deployed["heads"]], [image, feats], threads
    )
    print(
        f"slowest ops of the deployed model (binary + INT8 heads; counters total {total:.1f} ms):"
    )
    for name, kind, exec_type, ms in top:
        print(f"  {ms:7.1f} ms  {kind:18s} {exec_type:22s} {name}")
    by_kind = collections.Counter(f"{kind}/{exec_type}" for _, kind, exec_type in refs)
    print(f"reference kernels: {len(refs)} {dict(by_kind) if refs else ''}".rstrip())
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    return dict(times=times, ratios=ratios, reference_kernels=len(refs))
