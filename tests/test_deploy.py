"""Real 1-bit inference: bit-packed OpenVINO export of every binarizer, exact to PyTorch.

Each binary conv's integer result (the xnor-popcount conv plus the border correction) must equal
PyTorch's conv of the signs exactly; whole backbones agree within float rounding at odd input
sizes and output strides 8, 16, 32; a dense model's argmax and depth agree; the tools refuse bad
input with one line and leave no partial folder.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
import torch
import torch.nn.functional as F
from _binary_helpers import METHODS, block_of, trained_like
from torch import nn

from cmim_dense.bench.machine import machine, machine_line
from cmim_dense.binary import BINARIZERS, Binarizer, BinaryConv2d, hard_sign
from cmim_dense.deploy.export import export_model
from cmim_dense.deploy.fold import NotExportableError, fold_binary_conv
from cmim_dense.deploy.graph import BackboneGraph, binary_conv_integer, packed_bits
from cmim_dense.deploy.runtime import (
    EXPORT_FORMAT,
    OpenVINOBackbone,
    binary_convolution_kernel,
    compile_model,
    kernels,
)
from cmim_dense.engine.config import build_model, load_config
from cmim_dense.engine.export import export_config
from cmim_dense.models import BinaryResNet, MultiTaskDense
from cmim_dense.registry import MODELS

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _compile(model: ov.Model, shape: tuple[int, ...]) -> ov.CompiledModel:
    model.reshape({model.inputs[0]: ov.PartialShape(list(shape))})
    return compile_model(model, 1)  # the f32 hint: exact whatever the CPU's default precision


# -- one layer ---------------------------------------------------------------------------------


def test_packed_bits_are_little_endian_per_byte():
    bits = np.zeros((1, 8, 1, 1), dtype=bool)
    bits[0, 0] = True  # the first weight is the lowest bit of the first byte
    bits[0, 3] = True
    assert packed_bits(bits).data.tolist() == [0b00001001]


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize(
    "stride,dilation", [(1, 1), (2, 1), (1, 2), (1, 4), (2, 3)], ids=lambda v: str(v)
)
def test_binary_conv_integer_result_is_exact(name, stride, dilation):
    """The engine's Y + C_s equals PyTorch's conv of the signs bit for bit, with zero padding
    (dilation 3 and 4 pad explicitly, above the plugin's limit of 2), and 12 input channels (the
    plugin's kernel needs a multiple of 8: the export pads the channels)."""
    torch.manual_seed(0)
    conv = BinaryConv2d(
        12, 8, 3, stride=stride, padding=dilation, dilation=dilation, binarizer=METHODS[name]
    ).eval()
    trained_like(conv, seed=1)
    x = torch.randn(2, 12, 13, 11)
    x[:, :, 0, :3] = 0.0  # exact zeros binarize to -1 in both
    folded = fold_binary_conv(conv)
    with torch.no_grad():
        signs = conv.binarizer.activation(x).sign
        expected = F.conv2d(signs, torch.from_numpy(folded.signs), None, stride, dilation, dilation)
    image = ops.parameter(list(x.shape), np.float32)
    model = ov.Model([ops.result(binary_conv_integer(image.output(0), folded))], [image])
    got = _compile(model, tuple(x.shape))(x.numpy())[0]
    assert np.array_equal(got, expected.numpy())


@pytest.mark.parametrize("negative_spread", [False, True])
def test_adabin_layer_output_matches_with_both_spread_signs(negative_spread):
    """AdaBin's sets fold into scales and offsets around the integer conv (and a negative
    alpha_a flips which side of beta_a is +1)."""
    torch.manual_seed(0)
    net = BinaryResNet(base_channels=8, binarizer="adabin", block="adabin", stem="cifar").eval()
    trained_like(net, seed=2, negative_spread=negative_spread)
    x = torch.randn(2, 3, 17, 15)
    with torch.no_grad():
        reference = net(x)
    outputs = OpenVINOBackbone(BackboneGraph(net).build())(x)
    for out, ref in zip(outputs, reference):
        assert torch.linalg.norm(out - ref) / torch.linalg.norm(ref) < 1e-5


def test_sign_of_zero_is_minus_one_in_training_and_in_the_engine():
    """sign(0) = -1, decided once: PyTorch's hard_sign and OpenVINO's x > 0 binarization agree
    on a ReLU output full of zeros."""
    assert hard_sign(torch.tensor([-1.0, -0.0, 0.0, 1e-30])).tolist() == [-1.0, -1.0, -1.0, 1.0]
    torch.manual_seed(0)
    conv = BinaryConv2d(4, 4, 3, padding=1, binarizer="ste").eval()
    x = torch.relu(torch.randn(1, 4, 6, 6))
    assert (x == 0).any()
    with torch.no_grad():
        expected = conv(x)
    folded = fold_binary_conv(conv)
    image = ops.parameter(list(x.shape), np.float32)
    model = ov.Model([ops.result(binary_conv_integer(image.output(0), folded))], [image])
    assert np.array_equal(_compile(model, tuple(x.shape))(x.numpy())[0], expected.numpy())


def test_fold_refuses_per_channel_activation_levels():
    conv = BinaryConv2d(4, 4, 3, padding=1, binarizer="ste")
    conv.binarizer.activation_levels = lambda: (torch.ones(1, 4, 1, 1), 0.0)
    with pytest.raises(NotExportableError, match="STEBinarizer: per-channel activation level"):
        fold_binary_conv(conv)


def test_fold_refuses_weights_with_more_than_two_values():
    conv = BinaryConv2d(4, 4, 3, padding=1, binarizer="ste")
    conv.binarizer.binarize_weight = lambda w: w  # a real-valued "binarizer"
    with pytest.raises(NotExportableError, match="more than two values"):
        fold_binary_conv(conv)


# -- whole backbones ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_backbone_features_match_pytorch(name, output_stride):
    torch.manual_seed(0)
    net = BinaryResNet(
        base_channels=8,
        binarizer=METHODS[name],
        block=block_of(name),
        output_stride=output_stride,
    ).eval()
    trained_like(net, seed=3)
    x = torch.randn(2, 3, 37, 53)  # odd sizes: ceil-mode pooling and uneven borders
    with torch.no_grad():
        reference = net(x)
    graph = BackboneGraph(net)
    outputs = OpenVINOBackbone(graph.build())(x)
    assert graph.binary_convs == 16 and graph.float_convs == 4  # stem + 3 shortcuts
    for out, ref in zip(outputs, reference):
        assert out.shape == ref.shape
        assert torch.linalg.norm(out - ref) / torch.linalg.norm(ref) < 1e-4


def test_float_reference_graph_matches_too():
    torch.manual_seed(0)
    net = BinaryResNet(base_channels=8, binarizer="xnor", output_stride=16).eval()
    trained_like(net, seed=4)
    x = torch.randn(1, 3, 29, 31)
    with torch.no_grad():
        reference = net(x)
    outputs = OpenVINOBackbone(BackboneGraph(net, binary=False).build())(x)
    for out, ref in zip(outputs, reference):
        assert torch.linalg.norm(out - ref) / torch.linalg.norm(ref) < 1e-4


def test_runtime_compiles_once_per_shape_and_outputs_do_not_alias():
    torch.manual_seed(0)
    net = BinaryResNet(base_channels=8, stem="cifar", out_indices=(3,)).eval()
    engine = OpenVINOBackbone(BackboneGraph(net).build())
    a, b = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16)
    (out_a,) = engine(a)
    kept = out_a.clone()
    (out_b,) = engine(b)
    assert torch.equal(out_a, kept) and not torch.equal(out_a, out_b)
    engine(torch.randn(2, 3, 8, 12))
    assert sorted(engine._compiled) == [(1, 3, 16, 16), (2, 3, 8, 12)]


def test_kernels_name_the_binary_convolution_kernel_of_a_backbone():
    """The one-layer probe finds the kernel a whole backbone's BinaryConvolution nodes run
    with, and the plugin's float convolutions have kernels of their own."""
    kernel = binary_convolution_kernel()
    if kernel is None:
        pytest.skip("this CPU's OpenVINO plugin has no BinaryConvolution")
    torch.manual_seed(0)
    net = BinaryResNet(base_channels=8, stem="cifar").eval()
    found = kernels(OpenVINOBackbone(BackboneGraph(net).build()).compiled((1, 3, 16, 16)))
    assert found["BinaryConvolution"] == [kernel]
    assert kernel.startswith("jit_") and kernel.endswith("_u1")  # u1: bit-packed operands
    assert "BinaryConvolution" not in kernels(
        _compile(BackboneGraph(net, binary=False).build(), (1, 3, 16, 16))
    )


def test_machine_line_names_the_kernels_and_a_cap_set_in_the_environment(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    info = machine()  # the probe in a fresh process
    assert info == machine(probe_here=True)
    kernel, capability = binary_convolution_kernel(), torch.backends.cpu.get_cpu_capability()
    assert info["openvino_binary_convolution"] == kernel and info["onednn_max_cpu_isa"] is None
    assert info["cores"] >= 1 and info["cpu"]
    assert machine_line(info) == (
        f"{info['cpu']}, {info['cores']} cores; torch kernels {capability}; "
        f"OpenVINO BinaryConvolution {kernel}"
    )
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert f"{capability}; ONEDNN_MAX_CPU_ISA=AVX2; OpenVINO" in machine_line(machine(True))
    assert machine_line(dict(info, openvino_binary_convolution=None)).endswith(
        "; OpenVINO BinaryConvolution none"
    )


def test_onednn_isa_cap_leaves_openvinos_binary_convolution_uncapped():
    """Why an AVX2 ceiling on an AVX-512 machine understates an AVX2-only one (README): under
    ONEDNN_MAX_CPU_ISA=AVX2 OpenVINO's float convolutions take AVX2 kernels, its
    BinaryConvolution and FakeQuantize keep AVX-512 ones. A fresh interpreter: the cap is read
    at start."""
    if binary_convolution_kernel() != "jit_avx512_u1":  # not at collection: no OpenVINO run
        pytest.skip("needs OpenVINO's AVX-512 binary kernel")
    script = (
        "import json, torch\n"
        "from cmim_dense.deploy.graph import BackboneGraph\n"
        "from cmim_dense.deploy.runtime import OpenVINOBackbone, kernels\n"
        "from cmim_dense.models import BinaryResNet\n"
        "net = BinaryResNet(base_channels=8, stem='cifar').eval()\n"
        "engine = OpenVINOBackbone(BackboneGraph(net).build(), 1)\n"
        "print(json.dumps(kernels(engine.compiled((1, 3, 16, 16)))))\n"
    )
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["BinaryConvolution"] == ["jit_avx512_u1"]
    assert found["FakeQuantize"] == ["jit_avx512_f32"]  # the binarization of their inputs
    assert all("avx512" not in kernel for kernel in found["Convolution"]), found["Convolution"]
    assert any("avx2" in kernel for kernel in found["Convolution"]), found["Convolution"]


# -- export of configs -------------------------------------------------------------------------

DENSE_BODY = """_base_ = [{base!r}]
crop_size = (45, 61)
head = dict(in_channels=64, channels=16, dilations=(1, 2, 3, 4), c1_in_channels=8, c1_channels=8)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(base_channels=8, binarizer={binarizer!r}, block={block!r}),
    seg_head=head,
    depth_head=head,
)
"""


def _dense_config(tmp_path: Path, binarizer="irnet", block="basic") -> Path:
    path = tmp_path / f"dense_{binarizer}.py"
    base = REPO / "configs" / "demo" / "nyud_synth.py"
    path.write_text(DENSE_BODY.format(base=str(base), binarizer=binarizer, block=block))
    return path


def test_export_dense_config_writes_ir_and_records_exactness(tmp_path):
    """On a checkpoint with trained-like binarizers and BN statistics: at initialisation
    (thresholds at 0) activations that cancel to exactly 0 sit on the sign thresholds, where
    float rounding decides them and a binary network amplifies each flip (seen: relative L2
    0.68 on one of four random initialisations)."""
    config = _dense_config(tmp_path, "react", "react")
    torch.manual_seed(0)
    model = build_model(str(config), init_weights=True).eval()
    trained_like(model, seed=5)
    checkpoint = tmp_path / "model.pth"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    record = export_config(str(config), str(checkpoint), tmp_path / "ir")
    files = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert files == ["backbone.bin", "backbone.xml", "export.json", "model.bin", "model.xml"]
    saved = json.loads((tmp_path / "ir" / "export.json").read_text())
    assert saved == record and saved["format"] == EXPORT_FORMAT
    assert saved["binary_convs"] == 16 and saved["float_convs"] == 4
    assert saved["output_stride"] == 8 and saved["input_size"] == [45, 61]
    assert saved["ir_weight_bytes"] == (tmp_path / "ir" / "backbone.bin").stat().st_size
    assert saved["size_ratio"] > 1
    errors = saved["max_error"]
    assert errors["feature_relative_l2"] < 1e-4
    assert errors["seg_argmax_agreement"] >= 99.9 and errors["depth_max_abs_m"] <= 1e-3
    # The IR on disk runs: its outputs are the heads' raw outputs.
    model = ov.Core().read_model(tmp_path / "ir" / "model.xml")
    assert [o.get_any_name() for o in model.outputs] == ["seg", "depth"]


def test_export_of_a_real_valued_backbone_is_plain_fp32(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2))
    model = nn.Module()
    model.backbone = net.eval()
    record = export_model(model, tmp_path / "fp", (20, 22))
    assert record["binary_convs"] == 0 and record["float_convs"] == 2
    ops_used = {
        op.get_type_name()
        for op in ov.Core().read_model(tmp_path / "fp" / "backbone.xml").get_ops()
    }
    assert "BinaryConvolution" not in ops_used and "Convolution" in ops_used
    assert record["max_error"]["feature_relative_l2"] < 1e-5


def test_export_replaces_only_its_own_folder(tmp_path):
    config = _dense_config(tmp_path)
    out = tmp_path / "ir"
    export_config(str(config), None, out)
    first = (out / "backbone.bin").read_bytes()
    export_config(str(config), None, out, cfg_options={"model.backbone.binarizer": "xnor"})
    assert (out / "backbone.bin").read_bytes() != first  # a folder it wrote is replaced
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="did not write"):
        export_config(str(config), None, foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def _tool(name: str):
    return runpy.run_path(str(REPO / "tools" / f"{name}.py"), run_name=f"tools_{name}")["main"]


class _ThreeLevelWeights(Binarizer):
    """A user's method whose weights take three values: no exact bit-packed form."""

    def binarize_weight(self, w: torch.Tensor) -> torch.Tensor:
        levels = torch.tensor([-1.0, 0.0, 1.0])
        return levels[torch.arange(w.numel()) % 3].view_as(w) + 0 * w


@pytest.fixture
def three_level_binarizer():
    """``_ThreeLevelWeights`` registered as ``three_level_test`` for one test only."""
    BINARIZERS.register_module(name="three_level_test", module=_ThreeLevelWeights, force=True)
    yield "three_level_test"
    BINARIZERS.module_dict.pop("three_level_test")


@pytest.mark.parametrize("case", ["other_arch", "truncated", "foreign_out", "not_binary"])
def test_export_tool_bad_input_exits_2_and_leaves_nothing(
    tmp_path, capsys, case, three_level_binarizer
):
    config = _dense_config(tmp_path)
    out = tmp_path / "ir"
    checkpoint = None
    options = []
    if case == "other_arch":
        wide = BinaryResNet(base_channels=16)
        checkpoint = tmp_path / "wide.pth"
        state = {f"backbone.{k}": v for k, v in wide.state_dict().items()}
        torch.save({"state_dict": state}, checkpoint)
    elif case == "truncated":
        checkpoint = tmp_path / "cut.pth"
        torch.save({"state_dict": BinaryResNet(base_channels=8).state_dict()}, checkpoint)
        checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    elif case == "foreign_out":
        out.mkdir()
        (out / "keep.txt").write_text("x")
    else:
        # Weights in {-1, 0, +1}: no u1 kernel holds them.
        options = ["--cfg-options", f"model.backbone.binarizer={three_level_binarizer}"]
    argv = [str(config), *([str(checkpoint)] if checkpoint else []), "--out", str(out), *options]
    assert _tool("export")(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    if case == "not_binary":
        assert "_ThreeLevelWeights" in err[0] and "more than two values" in err[0]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ir")] == []
    if case == "foreign_out":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert not out.exists()


# -- the OpenVINO backbone in transfer ----------------------------------------------------------


def _dense_model(**kwargs) -> MultiTaskDense:
    head = dict(type="FCNHead", in_channels=64, channels=8, num_convs=1, num_classes=3, in_index=0)
    return MultiTaskDense(
        backbone=dict(
            type="BinaryResNet", base_channels=8, out_indices=(3,), binarizer="react", block="react"
        ),
        seg_head=head,
        **kwargs,
    )


def test_openvino_backbone_in_the_dense_model_matches_and_follows_new_weights():
    torch.manual_seed(0)
    model = _dense_model(backbone_backend="openvino").eval()
    reference = _dense_model().eval()
    trained_like(model.backbone, seed=5)
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 33, 47)
    with torch.no_grad():
        for _ in range(2):
            ours, ref = model.extract_feat(x)[0], reference.extract_feat(x)[0]
            assert torch.linalg.norm(ours - ref) / torch.linalg.norm(ref) < 1e-5
        model.load_state_dict(_dense_model().state_dict())  # new backbone weights
        reference.load_state_dict(model.state_dict())
        ours, ref = model.extract_feat(x)[0], reference.extract_feat(x)[0]
        assert torch.linalg.norm(ours - ref) / torch.linalg.norm(ref) < 1e-5
    assert all(not k.startswith("_engine") for k in model.state_dict())


def test_openvino_backend_needs_a_frozen_backbone():
    with pytest.raises(ValueError, match="frozen backbone only"):
        _dense_model(backbone_backend="openvino", freeze_backbone=False)
    with pytest.raises(ValueError, match="backbone_backend must be one of"):
        _dense_model(backbone_backend="tensorrt")


def test_export_of_a_pretraining_checkpoint_gives_its_stage_features(tmp_path):
    """A classifier's checkpoint exports its backbone's stage features, not its logits. (Trained
    BN statistics: at initialisation BN has no bias, and activations that cancel to exactly 0
    sit on the sign threshold, where PyTorch's float conv of scaled weights rounds either way.)"""
    config = REPO / "configs" / "pretrain" / "cifar100_bin_r18_react_cmim.py"
    options = {"model.backbone.base_channels": 8}
    model = MODELS.build(load_config(str(config), options).model)
    trained_like(model, seed=6)
    checkpoint = tmp_path / "epoch_1.pth"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    record = export_config(str(config), str(checkpoint), tmp_path / "cls", cfg_options=options)
    assert record["input_size"] == [32, 32] and record["output_stride"] == 8  # CIFAR stem
    assert record["outputs"] == [[8, 32, 32], [16, 16, 16], [32, 8, 8], [64, 4, 4]]
    assert record["binary_convs"] == 16 and record["max_error"]["feature_relative_l2"] < 1e-4
    assert sorted(p.name for p in (tmp_path / "cls").iterdir()) == [
        "backbone.bin",
        "backbone.xml",
        "export.json",
    ]


def test_dense_exactness_is_measured_against_pytorch_even_with_the_openvino_backend(tmp_path):
    config = _dense_config(tmp_path)
    options = {"model.backbone_backend": "openvino"}
    record = export_config(str(config), None, tmp_path / "ir", cfg_options=options)
    errors = record["max_error"]
    assert errors["seg_argmax_agreement"] >= 99.9 and errors["depth_max_abs_m"] <= 1e-3
