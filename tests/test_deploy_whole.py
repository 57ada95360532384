"""The whole dense model deployed: every compile with the f32 hint, a static IR that compiles as
exported, INT8 heads that leave the binary backbone bit for bit as it is, agreement on real
frames, the exported-folder loader, and one-line refusals (no data, no BinaryConvolution)."""

from __future__ import annotations

import json
import os
import runpy
import stat
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import pytest
import torch
from _binary_helpers import trained_like

from cmim_dense.deploy import runtime
from cmim_dense.deploy.export import export_model
from cmim_dense.deploy.runtime import EXPORT_FORMAT, ExportedModel, OpenVINOBackbone
from cmim_dense.engine.config import build_model, load_config
from cmim_dense.engine.export import export_config
from cmim_dense.models import BinaryResNet
from cmim_dense.utils.errors import InputError

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("torch_one_thread")

BODY = """_base_ = [{base!r}]
crop_size = (40, 56)
head = dict(in_channels=64, channels=16, dilations=(1, 2, 3, 4), c1_in_channels=8, c1_channels=8)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(base_channels=8, binarizer="react", block="react"),
    seg_head=head,
    depth_head=head,
)
train_dataloader = dict(dataset=dict(data_root={root!r}))
test_dataloader = dict(dataset=dict(data_root={root!r}))
"""


def _config(tmp_path: Path, frames: bool = True) -> Path:
    """A small dense config whose data root holds 3 train and 2 test images (or nothing)."""
    root = tmp_path / "nyud"
    if frames:
        rng = np.random.default_rng(0)
        for split, count in (("train", 3), ("test", 2)):
            folder = root / "images" / split
            folder.mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
                cv2.imwrite(str(folder / f"{i:04d}.png"), image)
    path = tmp_path / "dense.py"
    base = REPO / "configs" / "demo" / "nyud_synth.py"
    path.write_text(BODY.format(base=str(base), root=str(root)))
    return path


def _checkpoint(tmp_path: Path, config: Path) -> Path:
    """A checkpoint of ``config``'s model with trained-like binarizers and BN statistics (at
    initialisation, activations that cancel to exactly 0 sit on the sign thresholds)."""
    model = build_model(str(config), init_weights=True).eval()
    trained_like(model, seed=7)
    path = tmp_path / "iter_1.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def _is_f32_hint(config: dict | None) -> bool:
    """Whether a compile config holds INFERENCE_PRECISION_HINT f32, in any of the spellings
    OpenVINO accepts (strings, property objects, ov.Type)."""
    for key, value in (config or {}).items():
        name = key() if callable(key) else key
        if str(name) == "INFERENCE_PRECISION_HINT":
            return str(value) in ("f32", str(ov.Type.f32))
    return False


@pytest.fixture
def compiles(monkeypatch):
    """Every config given to ``ov.Core.compile_model`` during the test."""
    seen: list = []
    original = ov.Core.compile_model

    def spy(self, model, device_name=None, config=None):
        seen.append(config)
        return original(self, model, device_name, config or {})

    monkeypatch.setattr(ov.Core, "compile_model", spy)
    return seen


def test_every_compile_passes_the_f32_hint(tmp_path, compiles):
    """Backbone runtime, dense export and its checks, INT8 calibration (NNCF's own compiles)
    and the folder loader: none may leave the precision to the CPU's default (bf16 on AMX or
    AVX512_BF16 machines), which a test of the compiled property could not see on this CPU."""
    net = BinaryResNet(base_channels=8, stem="cifar", out_indices=(3,)).eval()
    OpenVINOBackbone.from_backbone(net)(torch.randn(1, 3, 16, 16))
    assert len(compiles) == 1
    export_config(str(_config(tmp_path)), None, tmp_path / "ir", int8_heads=True, calib_frames=2)
    ExportedModel.open(tmp_path / "ir")
    assert len(compiles) >= 5
    assert all(_is_f32_hint(config) for config in compiles), compiles


def test_static_ir_compiles_as_exported_and_the_loader_runs_it(tmp_path):
    config = _config(tmp_path)
    checkpoint = _checkpoint(tmp_path, config)
    record = export_config(str(config), str(checkpoint), tmp_path / "ir", input_size=(48, 64))
    assert record["input_shape"] == [1, 3, 48, 64] and record["precision"] == "fp32"
    assert record["compile"]["properties"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert "bf16" in record["compile"]["why"]
    identity = record["identity"]
    assert identity["checkpoint_sha256"] == runtime.sha256_file(checkpoint)
    assert len(identity["config_sha256"]) == 64
    assert record["agreement"]["frames"] == 2  # the test split's frames
    assert record["agreement"]["seg_pixel_agreement"] >= 99.0
    assert record["warnings"] == []
    for name in ("model.xml", "backbone.xml"):  # no reshape needed
        ov.Core().compile_model(str(tmp_path / "ir" / name), "CPU")
    loaded = ExportedModel.open(tmp_path / "ir")
    assert loaded.input_size == (48, 64) and loaded.output_names == ("seg", "depth")
    assert loaded.precision == "fp32" and loaded.identity == identity
    images = np.random.default_rng(1).standard_normal((2, 3, 48, 64)).astype(np.float32)
    out = loaded(images)
    assert out["seg"].shape[:2] == (2, 40) and out["depth"].shape[:2] == (2, 1)
    single = loaded(images[1:])
    assert np.array_equal(out["seg"][1:], single["seg"])  # frames are independent
    with pytest.raises(InputError, match=r"takes \(N, 3, 48, 64\) images"):
        loaded(images[:, :, :40])
    with pytest.raises(InputError, match="exported from another config"):
        loaded.check_identity(dict(identity, config_sha256="0" * 64))
    loaded.check_identity(identity)


def test_int8_heads_keep_the_backbone_bit_for_bit(tmp_path):
    config = _config(tmp_path)
    checkpoint = str(_checkpoint(tmp_path, config))
    fp32 = export_config(str(config), checkpoint, tmp_path / "fp32")
    int8 = export_config(
        str(config), checkpoint, tmp_path / "int8", int8_heads=True, calib_frames=3
    )
    assert int8["precision"] == "int8_heads"
    calibration = int8["calibration"]
    assert calibration["count"] == 3 and calibration["split"] == "train"
    assert [Path(p).name for p in calibration["frames"]] == ["0000.png", "0001.png", "0002.png"]
    assert int8["agreement"]["frames"] == 2 and "depth_mean_relative" in int8["agreement"]
    assert fp32["identity"] == int8["identity"]
    # The backbone IR is the fp32 one (weights byte for byte, outputs bit for bit); the INT8
    # heads run on its outputs.
    fp32_weights = (tmp_path / "fp32" / "backbone.bin").read_bytes()
    assert (tmp_path / "int8" / "backbone.bin").read_bytes() == fp32_weights
    assert "model.xml" not in int8["files"] and "heads.xml" in int8["files"]
    core = ov.Core()
    heads = core.read_model(tmp_path / "int8" / "heads.xml")
    assert "FakeQuantize" in {op.get_type_name() for op in heads.get_ops()}
    image = np.random.default_rng(2).standard_normal((1, 3, 40, 56)).astype(np.float32)
    feats = runtime.compile_model(tmp_path / "fp32" / "backbone.xml", 1)(image)
    feats_int8 = runtime.compile_model(tmp_path / "int8" / "backbone.xml", 1)(image)
    for a, b in zip(feats.values(), feats_int8.values()):
        assert np.array_equal(a, b)
    expected = runtime.compile_model(heads, 1)(list(feats.values()))
    loaded = ExportedModel.open(tmp_path / "int8", num_threads=1)
    assert loaded.precision == "int8_heads" and loaded.output_names == ("seg", "depth")
    got = loaded(image)
    for i, name in enumerate(loaded.output_names):
        assert np.array_equal(got[name], expected[i])
    whole = ExportedModel.open(tmp_path / "fp32", num_threads=1)(image)
    assert not np.array_equal(whole["seg"], got["seg"])  # the heads did change


def _tool(name: str):
    return runpy.run_path(str(REPO / "tools" / f"{name}.py"), run_name=f"tools_{name}")["main"]


def test_int8_without_data_is_refused_in_one_line_naming_the_folder(tmp_path, capsys):
    config = _config(tmp_path, frames=False)
    out = tmp_path / "ir"
    assert _tool("export")([str(config), "--out", str(out), "--int8-heads"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert str(tmp_path / "nyud" / "images" / "train") in err[0]
    assert not out.exists()


def test_a_cpu_without_binary_convolution_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runtime, "_capabilities", lambda: ("FP32", "INT8", "EXPORT_IMPORT"))
    net = BinaryResNet(base_channels=8, stem="cifar", out_indices=(3,)).eval()
    with pytest.raises(InputError, match="has no BinaryConvolution"):
        OpenVINOBackbone.from_backbone(net)(torch.randn(1, 3, 16, 16))
    config = _config(tmp_path)
    assert _tool("export")([str(config), "--out", str(tmp_path / "ir")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no BinaryConvolution" in err[0]


def test_export_folder_follows_the_umask_and_dead_staging_folders_go(tmp_path):
    dead = tmp_path / ".fp.partial-999999999-abcd"  # no such pid
    dead.mkdir()
    live = tmp_path / f".fp.partial-{os.getpid()}-abcd"
    live.mkdir()
    model = torch.nn.Module()
    model.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)).eval()
    old = os.umask(0o022)
    try:
        export_model(model, tmp_path / "fp", (12, 12))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "fp").stat().st_mode) == 0o755
    assert not dead.exists() and live.exists()


def test_the_loader_refuses_other_formats(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "export.json").write_text(json.dumps({"format": "cmim_dense.export/1"}))
    with pytest.raises(InputError, match=f"this version reads '{EXPORT_FORMAT}'"):
        ExportedModel.open(folder)
    with pytest.raises(InputError, match="no such export folder"):
        ExportedModel.open(tmp_path / "absent")


def test_the_identity_is_of_what_the_config_computes_not_how_it_is_launched():
    config = str(REPO / "configs" / "nyud_deeplab_bin_r18.py")
    base = runtime.identity(load_config(config), None)
    launched = load_config(config, work_dir="/tmp/elsewhere", launcher="pytorch")
    launched.resume, launched.load_from = True, "any.pth"
    assert runtime.identity(launched, None) == base
    other = runtime.identity(load_config(config, {"model.seg_head.channels": 64}), None)
    assert other["config_sha256"] != base["config_sha256"]
    assert base["checkpoint_sha256"] is None


def _binary_conv_inputs(net: BinaryResNet, x: torch.Tensor) -> list[torch.Tensor]:
    """The input each binary conv of ``net`` sees on ``x``, in order."""
    inputs: list[torch.Tensor] = []
    convs = net.binary_convs()
    hooks = [c.register_forward_pre_hook(lambda _, args: inputs.append(args[0])) for c in convs]
    with torch.no_grad():
        net(x)
    for hook in hooks:
        hook.remove()
    return inputs


@pytest.mark.parametrize(
    "size", [(37, 53), (1536, 1536), (3000, 4000)], ids=lambda s: f"{s[0]}x{s[1]}"
)
def test_every_binary_layer_is_exact_to_the_integer_at_small_and_large_sizes(size):
    """Fed the same input as in PyTorch, each layer's xnor-popcount result plus border map
    equals PyTorch's conv of the signs exactly (output stride 8: dilations 2 and 4, the
    latter padded by a depthwise conv). A whole binary network still amplifies float rounding
    (one sign flip near a threshold cascades), so exactness is a per-layer property."""
    import openvino.opset13 as ops
    import torch.nn.functional as F

    from cmim_dense.deploy.fold import fold_binary_conv
    from cmim_dense.deploy.graph import binary_conv_integer

    torch.manual_seed(0)
    net = BinaryResNet(base_channels=8, binarizer="react", block="react", output_stride=8).eval()
    trained_like(net, seed=8)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    for conv, u in zip(net.binary_convs(), _binary_conv_inputs(net, x)):
        folded = fold_binary_conv(conv)
        with torch.no_grad():
            signs = conv.binarizer.activation(u).sign
            expected = F.conv2d(
                signs,
                torch.from_numpy(folded.signs),
                None,
                conv.stride,
                conv.padding,
                conv.dilation,
            )
        image = ops.parameter(list(u.shape), np.float32)
        model = ov.Model([ops.result(binary_conv_integer(image.output(0), folded))], [image])
        got = runtime.compile_model(model, 2)(u.numpy())[0]
        assert np.array_equal(got, expected.numpy()), (conv, size)


def test_the_static_backbone_runs_no_reference_kernel():
    """OpenVINO's per-op counters of a static binary backbone at output stride 8 (padding 4
    above the plugin's limit) name no ``ref*`` kernel: binarization by FakeQuantize, padding by
    a depthwise conv, border maps folded to constants."""
    from cmim_dense.deploy.graph import BackboneGraph

    net = BinaryResNet(base_channels=8, binarizer="react", block="react", output_stride=8).eval()
    model = BackboneGraph(net).build(input_shape=(1, 3, 64, 80))
    request = runtime.compile_model(model, 1, PERF_COUNT=True).create_infer_request()
    request.infer(np.zeros((1, 3, 64, 80), np.float32))
    kinds = {(p.node_type, p.exec_type) for p in request.get_profiling_info()}
    assert "BinaryConvolution" in {node_type for node_type, _ in kinds}
    assert [k for k in kinds if k[1].startswith("ref")] == []


def test_the_main_heads_run_no_reference_kernel_and_no_concat_at_full_size():
    """At 480x640 the plugin's convs run channels-last, where it can only copy a Concat (its
    ``ref`` implementation): the ASPP bottleneck's concat is split into per-branch convs, with
    the same outputs as the PyTorch heads."""
    from cmim_dense.deploy.heads import _Heads, heads_ir

    config = str(REPO / "configs" / "nyud_deeplab_bin_r18.py")
    model = build_model(config, cfg_options={"model.backbone_backend": "torch"}).eval()
    generator = torch.Generator().manual_seed(0)
    shapes = [(64, 120, 160), (128, 60, 80), (256, 60, 80), (512, 60, 80)]
    feats = tuple(torch.randn(1, *shape, generator=generator).relu() for shape in shapes)
    heads = heads_ir(model, feats)
    assert "Concat" not in [op.get_type_name() for op in heads.get_ordered_ops()]
    request = runtime.compile_model(heads, 2, PERF_COUNT=True).create_infer_request()
    outputs = list(request.infer([f.numpy() for f in feats]).values())
    with torch.no_grad():
        expected = _Heads(model)(*feats)
    for ours, reference in zip(outputs, expected):
        reference = reference.numpy()
        assert np.linalg.norm(ours - reference) <= 1e-5 * np.linalg.norm(reference)
    kernels = [(info.node_type, info.exec_type) for info in request.get_profiling_info()]
    assert not [k for k in kernels if k[1].startswith("ref")], kernels


def test_the_exported_model_is_evaluated_with_the_same_metrics(tmp_path, synth_nyud_tree, capsys):
    """``test --ir``: the whole IR through the test loop (same resizing, same metrics) agrees
    with PyTorch, records what ran, and refuses a foreign or mixed invocation in one line."""
    config = tmp_path / "dense.py"
    root = str(synth_nyud_tree)
    config.write_text(
        BODY.format(base=str(REPO / "configs" / "demo" / "nyud_synth.py"), root=root)
        .replace("crop_size = (40, 56)", "crop_size = (120, 160)")  # the test pipeline's size
        .replace("dilations=(1, 2, 3, 4)", "dilations=(1, 2)")
        + "test_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)\n"
    )
    checkpoint = str(_checkpoint(tmp_path, config))
    export_config(str(config), checkpoint, tmp_path / "fp32")
    export_config(str(config), checkpoint, tmp_path / "int8", int8_heads=True, calib_frames=3)
    test = _tool("test")

    def evaluate(name: str, *extra: str) -> dict:
        work_dir = tmp_path / name
        assert test([str(config), checkpoint, "--work-dir", str(work_dir), *extra]) == 0
        return json.loads((work_dir / "metrics.json").read_text())

    torch_run = evaluate("torch", "--backend", "torch")
    fp32_run = evaluate("fp32", "--ir", str(tmp_path / "fp32"))
    int8_run = evaluate("int8", "--ir", str(tmp_path / "int8"))
    assert torch_run["run"]["backend"] == "torch" and torch_run["run"]["ir_sha256"] is None
    for run, precision in ((fp32_run, "fp32"), (int8_run, "int8_heads")):
        assert run["run"]["backend"] == "openvino" and run["run"]["precision"] == precision
        assert len(run["run"]["ir_sha256"]) == 64 and run["test_set"] == torch_run["test_set"]
    assert fp32_run["run"]["ir_sha256"] != int8_run["run"]["ir_sha256"]
    assert fp32_run["run"]["ir"] == str(tmp_path / "fp32")
    reference, fp32, int8 = (r["metrics"] for r in (torch_run, fp32_run, int8_run))
    assert abs(fp32["mIoU"] - reference["mIoU"]) <= 0.05
    assert abs(fp32["rmse"] / reference["rmse"] - 1) <= 5e-4
    assert abs(int8["mIoU"] - reference["mIoU"]) <= 1.0
    assert abs(int8["rmse"] / reference["rmse"] - 1) <= 0.02
    assert int8 != fp32  # the INT8 heads did run
    # another checkpoint or another config (cfg-options): one line, nothing written
    other = tmp_path / "other.pth"
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"]["seg_head.conv_seg.bias"] += 1.0
    torch.save(state, other)
    ir = ["--ir", str(tmp_path / "fp32"), "--work-dir", str(tmp_path / "refused")]
    capsys.readouterr()
    for argv, needle in (
        ([str(config), str(other), *ir], "another checkpoint"),
        ([str(config), checkpoint, *ir, "--cfg-options", "model.depth_head.max_depth=8.0"],
         "another config"),
    ):  # fmt: skip
        assert test(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "refused" / "metrics.json").exists()
    with pytest.raises(SystemExit) as exit_info:  # argparse's own refusal
        test([str(config), checkpoint, *ir, "--backend", "torch"])
    assert exit_info.value.code == 2
    assert "--backend: not allowed with argument --ir" in capsys.readouterr().err
