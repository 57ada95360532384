"""Inference for users: ``DenseInferencer``, ``cmim-dense infer`` and mmseg's own inference APIs
on the project's dense configs.

The model is the main config (``configs/nyud_deeplab_bin_r18.py``) shrunk by a config that
inherits it by absolute path: width-8 backbone, 16-channel heads, frames resized to fit 80x60.
Its checkpoint is saved by the tests, with mmseg's ``dataset_meta`` as a training run saves it.
Inputs are real files written by OpenCV: PNG, JPEG, 16-bit, grey, RGBA, an MP4 video, and a
corrupt file among them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest
import torch

from cmim_dense.apis import DenseInferencer, DenseResult
from cmim_dense.apis.images import expand_inputs, read_image, to_rgb8
from cmim_dense.apis.outputs import OVERLAY_ALPHA, colour_bar_height, depth_picture
from cmim_dense.cli.infer import main as infer_main
from cmim_dense.engine.config import build_model
from cmim_dense.evaluation.visualize import DEPTH_CMAP, colorize_depth, colorize_seg
from cmim_dense.nyud_io.classes import NYUD40_CLASSES
from cmim_dense.utils.errors import InputError
from cmim_dense.utils.io import atomic_path

REPO = Path(__file__).resolve().parents[1]
MAIN_CONFIG = REPO / "configs" / "nyud_deeplab_bin_r18.py"

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = """_base_ = [{main!r}]
crop_size = (60, 80)
head = dict(in_channels=64, channels=16, dilations=(1, 2))
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(base_channels=8),
    seg_head=head,
    depth_head=head,
)
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(80, 60), keep_ratio=True),
    dict(type="LoadAnnotations"),
    dict(type="LoadDepthAnnotation", depth_rescale_factor=1e-3),
    dict(type="PackSegInputs", meta_keys={{{{_base_.meta_keys}}}}),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
"""


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """(h, w, 3) uint8 RGB: smooth colour regions (so that resizing and JPEG keep them)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """The tiny config, a checkpoint of it (random weights, random BN statistics) and a
    DenseInferencer of both."""
    root = tmp_path_factory.mktemp("infer")
    config = root / "tiny.py"
    config.write_text(TINY.format(main=str(MAIN_CONFIG)))
    torch.manual_seed(0)
    model = build_model(config)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.normal_(0.0, 0.5)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
    checkpoint = root / "tiny.pth"
    meta = dict(dataset_meta=dict(classes=NYUD40_CLASSES))
    torch.save(dict(state_dict=state, meta=meta), checkpoint)
    return dict(
        root=root,
        config=config,
        checkpoint=checkpoint,
        inferencer=DenseInferencer(config, checkpoint),
    )


# -- DenseInferencer -------------------------------------------------------------------------


def test_inferencer_matches_mmseg_inference_model_at_the_input_resolution(tiny):
    from mmseg.apis import inference_model, init_model

    rgb = _image(90, 150, 1)
    ours = tiny["inferencer"](rgb)
    assert isinstance(ours, DenseResult)
    assert ours.seg.shape == (90, 150) and ours.seg.dtype == np.int64
    assert ours.depth.shape == (90, 150) and ours.depth.dtype == np.float32
    assert len(np.unique(ours.seg)) > 1  # not a constant map
    model = init_model(str(tiny["config"]), str(tiny["checkpoint"]), device="cpu")
    # mmseg's helper takes arrays as the pipeline's loaders do: BGR
    sample = inference_model(model, np.ascontiguousarray(rgb[..., ::-1]))
    assert np.array_equal(ours.seg, sample.pred_sem_seg.data[0].numpy())
    assert np.allclose(ours.depth, sample.pred_depth_map.data[0].numpy(), atol=1e-6)


def test_files_and_arrays_give_the_same_result(tiny):
    rgb = _image(48, 64, 2)
    path = tiny["root"] / "same.png"
    cv2.imwrite(str(path), rgb[..., ::-1])
    by_array, by_path = tiny["inferencer"]([rgb, path])
    assert np.array_equal(by_array.seg, by_path.seg)
    assert np.array_equal(by_array.depth, by_path.depth)


def test_grey_rgba_and_16_bit_files_are_converted(tiny, tmp_path):
    rgb = _image(40, 56, 3)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    rgba = np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 77, np.uint8)])  # BGRA on disk
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    cv2.imwrite(str(tmp_path / "deep.png"), rgb[..., ::-1].astype(np.uint16) * 257)
    assert np.array_equal(read_image(tmp_path / "grey.png"), np.dstack([grey] * 3))
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgb)  # alpha dropped
    assert np.array_equal(read_image(tmp_path / "deep.png"), rgb)  # v * 257 -> v
    infer = tiny["inferencer"]
    for name, reference in (("grey.png", np.dstack([grey] * 3)), ("deep.png", rgb)):
        result, expected = infer(tmp_path / name), infer(reference)
        assert np.array_equal(result.seg, expected.seg), name
    # arrays: (H, W) grey, RGBA and 16-bit RGB, as the user holds them
    assert np.array_equal(to_rgb8(grey, "rgb", "a"), np.dstack([grey] * 3))
    assert np.array_equal(to_rgb8(np.dstack([rgb, rgb[..., :1]]), "rgb", "a"), rgb)
    assert np.array_equal(to_rgb8(rgb.astype(np.uint16) * 257, "rgb", "a"), rgb)
    with pytest.raises(InputError, match=r"float32 pixels"):
        infer(rgb.astype(np.float32))
    with pytest.raises(InputError, match=r"shape \(4, 5, 2\)"):
        infer(np.zeros((4, 5, 2), np.uint8))


def test_openvino_backbone_agrees_with_pytorch(tiny):
    pytest.importorskip("openvino")
    rgb = _image(60, 80, 4)
    torch_result = tiny["inferencer"](rgb)
    ov_result = DenseInferencer(tiny["config"], tiny["checkpoint"], backend="openvino")(rgb)
    assert (ov_result.seg == torch_result.seg).mean() > 0.99
    assert np.abs(ov_result.depth - torch_result.depth).max() < 1e-3


def test_bad_backend_and_arm_cpu_are_refused_in_one_line(tiny, monkeypatch):
    with pytest.raises(InputError, match="backend must be one of torch, openvino"):
        DenseInferencer(tiny["config"], tiny["checkpoint"], backend="onnx")
    with pytest.raises(InputError, match="not a torch device"):
        DenseInferencer(tiny["config"], tiny["checkpoint"], device="gpu0")
    with pytest.raises(InputError, match="not a dense config"):
        DenseInferencer(REPO / "configs" / "demo" / "pretrain_crops.py")
    runtime = pytest.importorskip("cmim_dense.deploy.runtime")
    monkeypatch.setattr(runtime, "_capabilities", lambda: ("FP32", "FP16"))
    with pytest.raises(InputError, match="no BinaryConvolution") as err:
        DenseInferencer(tiny["config"], tiny["checkpoint"], backend="openvino")
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="no BinaryConvolution"):
        DenseInferencer(tiny["config"], tiny["checkpoint"], ir=tiny["root"])
    # the PyTorch path does not need the capability
    assert DenseInferencer(tiny["config"], tiny["checkpoint"])(_image(20, 30, 5)).seg.shape == (
        20,
        30,
    )


class _ExportedByTorch:
    """An opened export's interface (``input_size``, ``output_names``, a call on (N, 3, H, W)
    float32 giving raw head outputs at feature resolution) computed by a PyTorch model."""

    def __init__(self, model, input_size):
        self.model = model
        self.input_size = input_size
        self.output_names = ("seg", "depth")
        self.shapes = []

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.shapes.append(images.shape)
        with torch.no_grad():
            outputs = self.model._forward(torch.from_numpy(images))
        return {name: value.numpy() for name, value in outputs.items()}


def test_an_exported_model_is_resized_like_the_pytorch_model(tiny):
    """``run_exported`` (behind ``ir=`` and ``test --ir``): at the pipeline's own size it must
    reproduce the PyTorch model (same preprocessing, logits and depth resized to the input,
    argmax); at another size the frames are resized to the export's and the outputs back."""
    infer = tiny["inferencer"]
    exported = _ExportedByTorch(infer._runner.model, (60, 80))
    model = build_model(infer.cfg, tiny["checkpoint"]).eval()
    model.run_exported(exported)
    rgb = _image(120, 160, 6)  # the test pipeline resizes it to 60x80 = the export's size

    def predict(image):
        item = infer.pipeline(dict(img=np.ascontiguousarray(image[..., ::-1])))
        with torch.no_grad():
            return model.test_step(
                dict(inputs=[item["inputs"]], data_samples=[item["data_samples"]])
            )[0]

    ours, reference = predict(rgb), infer(rgb)
    assert exported.shapes == [(1, 3, 60, 80)]
    assert np.array_equal(ours.pred_sem_seg.data[0].numpy(), reference.seg)
    assert np.allclose(ours.pred_depth_map.data[0].numpy(), reference.depth, atol=1e-5)
    other = predict(_image(33, 47, 7))  # the pipeline gives 57x80: resized to 60x80 and back
    assert exported.shapes[-1] == (1, 3, 60, 80)
    assert other.pred_sem_seg.data.shape[1:] == (33, 47)
    assert other.pred_depth_map.data.shape[1:] == (33, 47)
    exported.output_names = ("stage1", "stage2")
    with pytest.raises(InputError, match="export the whole dense model"):
        model.run_exported(exported)


def _export_api():
    runtime = pytest.importorskip("cmim_dense.deploy.runtime")
    if not hasattr(runtime, "ExportedModel"):
        pytest.skip("needs cmim_dense.deploy.runtime.ExportedModel (the deploy branch)")
    from cmim_dense.engine.export import export_config

    return export_config


def test_whole_exported_model_runs_and_a_foreign_export_is_refused(tiny, tmp_path, capsys):
    export_config = _export_api()
    out = tmp_path / "ir"
    export_config(str(tiny["config"]), str(tiny["checkpoint"]), out, (60, 80))
    rgb = _image(60, 80, 8)
    ir_result = DenseInferencer(tiny["config"], tiny["checkpoint"], ir=out)(rgb)
    reference = tiny["inferencer"](rgb)
    assert (ir_result.seg == reference.seg).mean() > 0.99
    assert np.abs(ir_result.depth - reference.depth).mean() < 1e-3
    other = tmp_path / "other.pth"
    state = torch.load(tiny["checkpoint"], weights_only=True)
    state["state_dict"]["seg_head.conv_seg.bias"] += 1.0
    torch.save(state, other)
    with pytest.raises(InputError, match="exported from another checkpoint"):
        DenseInferencer(tiny["config"], other, ir=out)
    # the tool: any image size (resized to the IR's and back), a foreign export in one line
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), _image(45, 70, 14)[..., ::-1])
    argv = [str(tiny["config"]), str(tiny["checkpoint"]), str(image), "--ir", str(out)]
    assert infer_main([*argv, "--out", str(tmp_path / "o")]) == 0
    with np.load(tmp_path / "o" / "photo.npz") as npz:
        assert npz["seg"].shape == (45, 70) and npz["depth"].shape == (45, 70)
    argv[1] = str(other)
    capsys.readouterr()
    assert infer_main([*argv, "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exported from another checkpoint" in err[0]
    with pytest.raises(InputError, match="runs the whole exported model"):
        DenseInferencer(tiny["config"], tiny["checkpoint"], ir=out, backend="openvino")


# -- inputs and outputs ----------------------------------------------------------------------


def test_expand_inputs_names_and_problems(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for rel in ("a/x.png", "a/b/y.jpg", "a/b/notes.txt", "a/clip.mp4", "solo.png"):
        (tmp_path / rel).write_bytes(b"")
    sources, problems = expand_inputs(
        [str(tmp_path / "a"), str(tmp_path / "solo.png"), str(tmp_path / "missing.png"),
         str(tmp_path / "a" / "*" / "*.jpg")]
    )  # fmt: skip
    names = {s.name: s.is_video for s in sources}
    assert names == {"x": False, "b/y": False, "clip": True, "solo": False}
    assert problems == [f"{tmp_path / 'missing.png'}: no such file or folder"]
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="would both write x_"):
        expand_inputs([str(tmp_path / "a")])


def test_depth_picture_has_a_colour_bar_in_metres():
    depth = np.linspace(1.0, 5.0, 40 * 90, dtype=np.float32).reshape(40, 90)
    picture = depth_picture(depth, (1.0, 5.0))
    bar_h = colour_bar_height(90, 40)
    assert picture.shape == (40 + bar_h, 90, 3)
    assert np.array_equal(picture[:40], colorize_depth(depth, 1.0, 5.0))
    cmap = matplotlib.colormaps[DEPTH_CMAP]
    assert np.array_equal(picture[40, 0], np.asarray(cmap(0.0, bytes=True)[:3]))
    assert np.array_equal(picture[40, -1], np.asarray(cmap(1.0, bytes=True)[:3]))
    assert picture[40 + bar_h // 2 :].max() == 255  # tick labels in white


def test_atomic_path_leaves_the_target_or_nothing(tmp_path):
    target = tmp_path / "v.mp4"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.suffix == ".mp4" and tmp.parent == tmp_path
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]
    assert target.read_bytes() == b"whole"


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 5.0) -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()


def test_infer_tool_writes_every_output_and_reports_unreadable_inputs(tiny, tmp_path, capsys):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    rgb = _image(50, 70, 9)
    cv2.imwrite(str(inputs / "sub" / "photo.png"), rgb[..., ::-1])
    cv2.imwrite(str(inputs / "snap.jpg"), _image(64, 48, 10)[..., ::-1])
    cv2.imwrite(str(inputs / "deep.png"), rgb[..., ::-1].astype(np.uint16) * 257)
    cv2.imwrite(str(inputs / "grey.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    cv2.imwrite(str(inputs / "alpha.png"), np.dstack([rgb[..., ::-1], np.full((50, 70), 9, "u1")]))
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    _write_video(inputs / "clip.mp4", [_image(40, 60, 20 + i) for i in range(3)])
    out = tmp_path / "out"
    code = infer_main(
        [str(tiny["config"]), str(tiny["checkpoint"]), str(inputs), str(tmp_path / "nope.png"),
         "--out", str(out), "--threads", "1"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert any("broken.png" in line for line in errors)
    assert any("nope.png" in line for line in errors)
    assert "frames/s" in captured.out
    # the others were processed, named after their path under the folder given
    frames = {"sub/photo": (50, 70), "snap": (64, 48), "deep": (50, 70), "grey": (50, 70),
              "alpha": (50, 70)}  # fmt: skip
    frames.update({f"clip_{i:06d}": (40, 60) for i in range(3)})
    for name, shape in frames.items():
        with np.load(out / f"{name}.npz") as npz:
            assert npz["seg"].dtype == np.uint8 and npz["seg"].shape == shape, name
            assert npz["depth"].dtype == np.float32 and npz["depth"].shape == shape, name
            seg = npz["seg"]
        seg_png = cv2.imread(str(out / f"{name}_seg.png"))[..., ::-1]
        assert np.array_equal(seg_png, colorize_seg(seg)), name
        depth_png = cv2.imread(str(out / f"{name}_depth.png"))
        assert depth_png.shape == (shape[0] + colour_bar_height(shape[1], shape[0]), shape[1], 3)
    assert not (out / "broken.npz").exists()
    with np.load(out / "sub" / "photo.npz") as npz:
        direct = tiny["inferencer"](rgb)
        assert np.array_equal(npz["seg"], direct.seg)
        assert np.array_equal(npz["depth"], direct.depth)
    assert cv2.imread(str(out / "legend.png")) is not None
    video = cv2.VideoCapture(str(out / "clip.mp4"))
    count = 0
    while True:
        ok, frame = video.read()
        if not ok:
            break
        count += 1
        assert frame.shape == (40 + colour_bar_height(60, 40), 180, 3)
    assert count == 3
    assert not [p for p in out.rglob(".*")]  # no temporary file left


def test_overlay_blends_the_class_colours_over_the_image(tiny, tmp_path):
    rgb = _image(30, 40, 11)
    path = tmp_path / "p.png"
    cv2.imwrite(str(path), rgb[..., ::-1])
    out = tmp_path / "out"
    argv = [str(tiny["config"]), str(tiny["checkpoint"]), str(path), "--out", str(out)]
    assert infer_main([*argv, "--overlay"]) == 0
    with np.load(out / "p.npz") as npz:
        colours = colorize_seg(npz["seg"]).astype(np.float64)
    picture = cv2.imread(str(out / "p_seg.png"))[..., ::-1].astype(np.float64)
    expected = OVERLAY_ALPHA * colours + (1 - OVERLAY_ALPHA) * rgb
    assert np.abs(picture - expected).max() <= 1.0  # OpenCV rounds


def test_infer_tool_needs_a_readable_input(tiny, tmp_path, capsys):
    code = infer_main(
        [str(tiny["config"]), str(tiny["checkpoint"]), str(tmp_path / "none.png"),
         "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err.strip().startswith("error: cannot read")
    with pytest.raises(SystemExit) as exit_info:
        infer_main(["cfg.py", "ck.pth", "x.png", "--out", "o", "--threads", "0"])
    assert exit_info.value.code == 2


# -- the project's pieces behind mmseg's APIs ----------------------------------------------


def test_depth_loader_passes_a_bare_image_and_still_fails_a_sample_without_depth():
    from cmim_dense.datasets.transforms import LoadDepthAnnotation

    loader = LoadDepthAnnotation(depth_rescale_factor=1e-3)
    bare = dict(img=np.zeros((2, 2, 3), np.uint8), seg_fields=[])
    assert loader(dict(bare)) == bare
    with pytest.raises(KeyError, match="depth_map_path"):
        loader(dict(bare, seg_map_path="a.png"))


def test_dense_visualizer_draws_segmentation_and_metric_depth():
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    from cmim_dense.evaluation import DenseLocalVisualizer

    visualizer = DenseLocalVisualizer(name="test_dense_visualizer")
    assert list(visualizer.dataset_meta["classes"]) == list(NYUD40_CLASSES)
    image = _image(40, 60, 12)
    depth = np.linspace(1.0, 4.0, 40 * 60, dtype=np.float32).reshape(1, 40, 60)
    sample = SegDataSample()
    sample.pred_sem_seg = PixelData(data=torch.full((1, 40, 60), 3))
    sample.pred_depth_map = PixelData(data=torch.from_numpy(depth))
    visualizer.add_datasample("x", image, sample, draw_gt=False)
    drawn = visualizer.get_image()
    assert drawn.shape == (80, 60, 3)
    # top: the class colour blended over the image; bottom: depth coloured in metres
    colour = colorize_seg(np.full((40, 60), 3))
    blend = visualizer.alpha * colour + (1 - visualizer.alpha) * image
    assert np.abs(drawn[5:10, 40:45] - blend[5:10, 40:45]).max() <= 1.0
    assert np.array_equal(drawn[40:50, 30:], colorize_depth(depth[0], 1.0, 4.0)[:10, 30:])


def test_multitask_dense_takes_mmseg_pretrained_argument(tiny):
    from mmengine.config import Config

    cfg = Config.fromfile(tiny["config"])
    cfg.model.pretrained = "ckpt.pth"
    cfg.model.backbone.pretrained = None
    model = build_model(cfg)
    assert model.backbone.init_cfg["checkpoint"] == "ckpt.pth"
    cfg.model.backbone.pretrained = "other.pth"
    with pytest.raises(InputError, match=r"both model\.pretrained and model\.backbone\.pretrained"):
        build_model(cfg)


MMSEG_SCRIPT = """
import json, sys
import numpy as np
import cmim_dense  # before mmseg, as a user would
from mmengine.config import Config
from mmseg.apis import MMSegInferencer, inference_model, init_model

config, checkpoint, image = sys.argv[1:4]
model = init_model(Config.fromfile(config), checkpoint, device="cpu")
sample = inference_model(model, image)
inferencer = MMSegInferencer(config, checkpoint, device="cpu", scope="cmim_dense")
out = inferencer(image, return_vis=True)
print(json.dumps(dict(
    sample=type(sample).__name__,
    seg=list(sample.pred_sem_seg.shape),
    depth=list(sample.pred_depth_map.shape),
    visualizer=type(inferencer.visualizer).__name__,
    predictions=list(out["predictions"].shape),
    visualization=list(out["visualization"].shape),
)))
"""


def test_mmseg_apis_work_after_import_cmim_dense(tiny, tmp_path):
    """In a fresh interpreter (import order matters): ``init_model`` (a config object),
    ``inference_model`` on a file and ``MMSegInferencer`` with the project's visualizer."""
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), _image(45, 70, 13)[..., ::-1])
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MMSEG_SCRIPT), str(tiny["config"]),
         str(tiny["checkpoint"]), str(image)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == dict(
        sample="SegDataSample",
        seg=[45, 70],
        depth=[45, 70],
        visualizer="DenseLocalVisualizer",
        predictions=[45, 70],
        visualization=[90, 70, 3],
    )
