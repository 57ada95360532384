"""Transfer to NYUD-v2 end to end on a generated tree (``synth_nyud_tree``).

A frozen pretrained binary backbone stays bit-identical while the heads learn; tools/test.py
writes metrics.json, predictions and pictures; an interrupted and resumed run equals an
uninterrupted one; bad input gives one ``error:`` line and exit 2; a 2-process gloo run
completes. Runs go through the real Runner (the tools' ``main()`` in this process, torchrun for
the distributed run) with configs that inherit ``configs/demo/nyud_synth.py`` by absolute path
and shrink it: width-8 backbone, 16-channel heads, 60x80 frames, batch 2.
"""

from __future__ import annotations

import math
import pickle
import runpy
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner.checkpoint import _load_checkpoint
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from cmim_dense.binary.irnet import ede_schedule
from cmim_dense.engine.prediction_dump import DensePredictionDumpHook
from cmim_dense.engine.runs import _is_dump_hook, train
from cmim_dense.engine.runs import test as evaluate
from cmim_dense.evaluation.report import read_run_metrics
from cmim_dense.evaluation.visualize import load_predictions_npz
from cmim_dense.models.backbones.bin_resnet import BinaryResNet
from cmim_dense.registry import HOOKS, MODELS
from cmim_dense.utils.checkpoint import CheckpointError
from cmim_dense.utils.errors import InputError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TOOLS = REPO / "tools"
MAX_ITERS = 4
HEAD_PREFIXES = ("seg_head.", "depth_head.")

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _tool_main(name: str):
    """``main(argv)`` of ``tools/<name>.py``."""
    return runpy.run_path(str(TOOLS / f"{name}.py"), run_name=f"tools_{name}")["main"]


def _save_backbone(path: Path, seed: int, **arch) -> dict[str, torch.Tensor]:
    """A pretraining-style checkpoint of a random BinaryResNet (``backbone.*`` keys, plus a
    classifier key the transfer must ignore). BN statistics are random too, so that loading
    them and keeping them are both visible. Returns the backbone's state."""
    torch.manual_seed(seed)
    state = BinaryResNet(**arch).state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.normal_()
        elif key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
        elif key.endswith("num_batches_tracked"):
            value.fill_(1000)
    ckpt = {f"backbone.{k}": v for k, v in state.items()}
    ckpt["head.fc.weight"] = torch.zeros(4, arch.get("base_channels", 64) * 8)
    torch.save(dict(state_dict=ckpt), path)
    return state


def _run_config(folder: Path, name: str, base: Path, body: str = "") -> Path:
    """``<folder>/<name>.py`` inheriting ``base``. Each run needs its own ``name``: the file stem
    names the run's logger, message hub and visualizer, which mmengine keeps per name in a
    process."""
    path = folder / f"{name}.py"
    path.write_text(f"_base_ = [{str(base)!r}]\n{body}")
    return path


def _with_hooks(*hooks: dict) -> str:
    """``custom_hooks`` of the project's runtime plus ``hooks``."""
    base = Config.fromfile(CONFIGS / "_base_" / "default_runtime.py").custom_hooks
    return f"custom_hooks = {[*base, *hooks]!r}\n"


@pytest.fixture(scope="module")
def transfer(tmp_path_factory, synth_nyud_tree: Path) -> dict:
    """The tiny transfer config (``base.py``) and its pretrained backbone checkpoint."""
    root = tmp_path_factory.mktemp("transfer")
    arch = dict(depth=18, base_channels=8, output_stride=8)
    pretrained = root / "pretrained.pth"
    backbone = _save_backbone(pretrained, 1, **arch)
    base = root / "base.py"
    base.write_text(
        f"""_base_ = [{str(CONFIGS / "demo" / "nyud_synth.py")!r}]
data_root = {str(synth_nyud_tree)!r}
crop_size = (60, 80)
head = dict(in_channels=64, channels=16, dilations=(1, 2, 3, 4), c1_in_channels=8, c1_channels=8)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(base_channels=8, pretrained={str(pretrained)!r}),
    backbone_backend="torch",  # the probes watch the PyTorch backbone (OpenVINO: test_deploy)
    seg_head=head,
    depth_head=head,
)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="LoadDepthAnnotation", depth_rescale_factor=1e-3),
    dict(type="RandomResizeDepth", scale=(80, 60), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
loader = dict(batch_size=2, num_workers=0, persistent_workers=False)
train_dataloader = dict(loader, dataset=dict(data_root=data_root, pipeline=train_pipeline))
test_dataloader = dict(loader, dataset=dict(data_root=data_root))
max_iters = {MAX_ITERS}
param_scheduler = [dict(type="PolyLR", by_epoch=False, power=0.9, eta_min=1e-5, end=max_iters)]
train_cfg = dict(max_iters=max_iters)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2, max_keep_ckpts=-1))
log_processor = dict(window_size=1)
"""
    )
    return dict(root=root, base=base, backbone=backbone)


# -- frozen backbone -------------------------------------------------------------------------


@HOOKS.register_module(force=True)
class FrozenProbeHook(Hook):
    """Records, for the frozen-transfer test: the model state when training starts, the names
    of the parameters holding a gradient at each optimizer step, and per backbone forward
    whether the backbone was in train mode and whether its outputs carry a graph."""

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self.start = {k: v.clone() for k, v in model.state_dict().items()}
        self.with_grad: list[set[str]] = []
        self.backbone_calls: list[tuple[bool, bool]] = []
        names = {id(p): n for n, p in model.named_parameters()}

        def before_step(optimizer, *_) -> None:
            params = (p for group in optimizer.param_groups for p in group["params"])
            self.with_grad.append({names[id(p)] for p in params if p.grad is not None})

        def after_backbone(module, _, outputs) -> None:
            self.backbone_calls.append((module.training, any(o.requires_grad for o in outputs)))

        runner.optim_wrapper.optimizer.register_step_pre_hook(before_step)
        model.backbone.register_forward_hook(after_backbone)


@pytest.fixture(scope="module")
def frozen_run(transfer) -> dict:
    """4 iterations with the probe: the runner and its work dir (also the uninterrupted run
    of the resume test)."""
    config = _run_config(
        transfer["root"], "full", transfer["base"], _with_hooks(dict(type="FrozenProbeHook"))
    )
    work_dir = transfer["root"] / "full"
    runner = train(str(config), str(work_dir))
    (probe,) = [h for h in runner.hooks if isinstance(h, FrozenProbeHook)]
    return dict(runner=runner, probe=probe, work_dir=work_dir)


def _part(state: dict, prefix: str) -> dict:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def test_frozen_backbone_is_bit_identical_and_heads_learn(transfer, frozen_run):
    probe = frozen_run["probe"]
    final = _load_checkpoint(str(frozen_run["work_dir"] / f"iter_{MAX_ITERS}.pth"))
    final = final["state_dict"]
    pretrained = transfer["backbone"]
    # The pretrained weights and BN statistics were loaded, and are unchanged after training
    # (running stats and num_batches_tracked too: the BN layers stayed in eval mode).
    for state in (_part(probe.start, "backbone."), _part(final, "backbone.")):
        assert state.keys() == pretrained.keys()
        changed = [k for k, v in pretrained.items() if not torch.equal(v, state[k])]
        assert not changed
    # No backbone parameter ever held a gradient; every head parameter did, at every step.
    model = frozen_run["runner"].model
    head_params = {n for n, _ in model.named_parameters() if n.startswith(HEAD_PREFIXES)}
    assert len(probe.with_grad) == MAX_ITERS
    assert all(names == head_params for names in probe.with_grad)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    # One backbone forward per step, in eval mode, without a graph.
    assert probe.backbone_calls == [(False, False)] * MAX_ITERS
    # The heads changed: every weight, and the BN statistics of the (training) heads.
    for name in head_params:
        assert not torch.equal(probe.start[name], final[name]), name
    for head in ("seg_head", "depth_head"):
        key = f"{head}.bottleneck.bn.running_mean"
        assert not torch.equal(probe.start[key], final[key]), key


# -- evaluation through tools/test.py ---------------------------------------------------------


def test_tools_test_writes_metrics_predictions_and_pictures(
    transfer, frozen_run, synth_nyud_tree, tmp_path
):
    checkpoint = str(frozen_run["work_dir"] / f"iter_{MAX_ITERS}.pth")
    config = _run_config(transfer["root"], "evaluate", transfer["base"])
    run_dir, show_dir = tmp_path / "eval", tmp_path / "show"
    argv = [str(config), checkpoint, "--work-dir", str(run_dir), "--show-dir", str(show_dir)]
    assert _tool_main("test")(argv) == 0

    record = read_run_metrics(run_dir)
    assert record["checkpoint"] == checkpoint and record["name"] == "evaluate"
    assert record["meta"]["binarizer"] == "irnet"
    metrics = record["metrics"]
    assert 0 <= metrics["mIoU"] <= 100
    assert 0 < metrics["rmse"] < 10  # the depth head's range is (0, 10) m
    assert metrics["neg_log_rmse"] == pytest.approx(-math.log(metrics["rmse"]), rel=1e-12)

    names = sorted(p.stem for p in (synth_nyud_tree / "images" / "test").glob("*.png"))
    assert len(names) == 7
    # every test image gets arrays (up to the hook's 8) and a picture at its original size
    assert sorted(p.stem for p in (run_dir / "predictions").glob("*.npz")) == names
    arrays = load_predictions_npz(run_dir / "predictions" / f"{names[0]}.npz")
    for key in ("rgb", "gt_seg", "pred_seg", "gt_depth", "pred_depth"):
        assert arrays[key].shape[:2] == (60, 80), key
    assert sorted(p.stem for p in show_dir.glob("*.png")) == names
    panel = cv2.imread(str(show_dir / f"{names[0]}.png"), cv2.IMREAD_COLOR)
    assert panel.shape == (60, 5 * 80, 3)  # RGB | GT seg | pred seg | GT depth | pred depth

    # The config that run dumped into its work dir lists the dump hook: testing with it again
    # runs one hook, not two (each test image would be read and saved twice).
    # (Copied to a new stem: mmengine keeps one logger per config name in a process.)
    dumped = tmp_path / "evaluate_again.py"
    shutil.copyfile(run_dir / config.name, dumped)
    assert "DensePredictionDumpHook" in dumped.read_text()
    runner, again = evaluate(str(dumped), checkpoint, str(tmp_path / "again"))
    assert sum(isinstance(h, DensePredictionDumpHook) for h in runner.hooks) == 1
    assert again["mIoU"] == metrics["mIoU"] and again["rmse"] == metrics["rmse"]
    assert sorted(p.stem for p in (tmp_path / "again" / "predictions").glob("*.npz")) == names


def _dense_sample(img_path: Path) -> SegDataSample:
    """A 2x3 test sample with both tasks' ground truth and predictions."""
    sample = SegDataSample(metainfo={"img_path": str(img_path)})
    sample.gt_sem_seg = PixelData(data=torch.zeros(1, 2, 3, dtype=torch.long))
    sample.pred_sem_seg = PixelData(data=torch.ones(1, 2, 3, dtype=torch.long))
    sample.gt_depth_map = PixelData(data=torch.full((1, 2, 3), 2.0))
    sample.pred_depth_map = PixelData(data=torch.full((1, 2, 3), 2.5))
    return sample


@pytest.mark.parametrize(
    "entry,is_dump",
    [
        (dict(type="DensePredictionDumpHook"), True),
        (dict(type="cmim_dense.DensePredictionDumpHook", num_npz=2), True),
        (dict(type=DensePredictionDumpHook), True),
        (DensePredictionDumpHook(), True),
        (dict(type="BinarizerProgressHook"), False),
        (dict(type=Hook), False),
        (Hook(), False),
        ("DensePredictionDumpHook", False),  # not an entry mmengine accepts: left to it
    ],
)
def test_a_listed_dump_hook_is_recognised_in_every_form(entry, is_dump):
    assert _is_dump_hook(entry) is is_dump


def test_dump_hook_reads_only_the_images_it_saves(tmp_path):
    """With arrays for the first image only and no pictures, the hook does not read the
    others: their files are missing here, and reading one would raise."""
    image = tmp_path / "first.png"
    cv2.imwrite(str(image), np.zeros((2, 3, 3), np.uint8))
    hook = DensePredictionDumpHook(num_npz=1, out_dir=str(tmp_path / "npz"))
    hook.before_test(runner=None)
    batch = [_dense_sample(image), _dense_sample(tmp_path / "missing.png")]
    hook.after_test_iter(runner=None, batch_idx=0, outputs=batch)
    hook.after_test_iter(runner=None, batch_idx=1, outputs=[_dense_sample(tmp_path / "gone.png")])
    assert [p.name for p in (tmp_path / "npz").iterdir()] == ["first.npz"]
    arrays = load_predictions_npz(tmp_path / "npz" / "first.npz")
    assert arrays["rgb"].shape == (2, 3, 3) and (arrays["pred_depth"] == 2.5).all()
    # with pictures asked for, every image is read: a missing one is a one-line input error
    hook = DensePredictionDumpHook(num_npz=0, show_dir=str(tmp_path / "show"))
    hook.before_test(runner=None)
    with pytest.raises(InputError, match=r"cannot read test image .*missing\.png"):
        hook.after_test_iter(runner=None, batch_idx=0, outputs=batch)


# -- resume -----------------------------------------------------------------------------------


@HOOKS.register_module(force=True)
class StopAfterIterHook(Hook):
    """Ends training after ``iters`` iterations (their checkpoint saved): an interrupted run."""

    def __init__(self, iters: int):
        self.iters = iters

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 >= self.iters:
            runner.train_loop.stop_training = True


def test_resume_matches_uninterrupted_run(transfer, frozen_run):
    """2 iterations, interrupted, resumed to 4 == 4 in one go, bit for bit.

    Both runs keep max_iters=4 (the PolyLR schedule depends on it). Resume restores the
    sampler position by drawing the first 2 batches again, which also replays the random
    transforms' draws from the global numpy RNG that the seed set.
    """
    root, base = transfer["root"], transfer["base"]
    train_main = _tool_main("train")
    work_dir = root / "part"
    interrupted = _run_config(
        root, "interrupted", base, _with_hooks(dict(type="StopAfterIterHook", iters=2))
    )
    assert train_main([str(interrupted), "--work-dir", str(work_dir)]) == 0
    assert (work_dir / "iter_2.pth").is_file() and not (work_dir / "iter_4.pth").exists()
    resumed = _run_config(root, "resumed", base)
    assert train_main([str(resumed), "--work-dir", str(work_dir), "--resume"]) == 0

    logs = sorted(work_dir.glob("*/*.log"))
    assert "resumed epoch: 0, iter: 2" in logs[-1].read_text()
    full = _load_checkpoint(str(frozen_run["work_dir"] / "iter_4.pth"))
    part = _load_checkpoint(str(work_dir / "iter_4.pth"))
    assert full["meta"]["iter"] == part["meta"]["iter"] == MAX_ITERS
    assert full["state_dict"].keys() == part["state_dict"].keys()
    different = [
        k for k, v in full["state_dict"].items() if not torch.equal(v, part["state_dict"][k])
    ]
    assert not different
    assert full["optimizer"]["state"].keys() == part["optimizer"]["state"].keys()
    for key, state in full["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], part["optimizer"]["state"][key]["exp_avg"]), key


# -- bad input ---------------------------------------------------------------------------------


def _expect_error(capsys, argv: list[str], *needles: str) -> str:
    """tools/train.py exits 2 with one ``error:`` line (no traceback) holding ``needles``."""
    assert _tool_main("train")(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    line = err.splitlines()[-1]
    assert line.startswith("error: "), err
    for needle in needles:
        assert needle in line, line
    return line


def test_wrong_depth_checkpoint_exits_2(transfer, tmp_path, capsys):
    ckpt = tmp_path / "r34.pth"
    _save_backbone(ckpt, 2, depth=34, base_channels=8, output_stride=8)
    config = _run_config(tmp_path, "wrong_depth", transfer["base"])
    argv = [str(config), "--work-dir", str(tmp_path / "w")]
    argv += ["--cfg-options", f"model.backbone.pretrained={ckpt}"]
    _expect_error(capsys, argv, str(ckpt), "BinaryResNet-18", "unexpected key(s) [stages.")


def test_wrong_width_checkpoint_names_the_shapes(transfer, tmp_path):
    ckpt = tmp_path / "wide.pth"
    _save_backbone(ckpt, 3, depth=18, base_channels=16, output_stride=8)
    model_cfg = Config.fromfile(transfer["base"]).model
    model_cfg.backbone.pretrained = str(ckpt)
    model = MODELS.build(model_cfg)
    with pytest.raises(CheckpointError, match=r"channels \(8, 16, 32, 64\).*wrong shape"):
        model.init_weights()


@pytest.mark.parametrize(
    ("case", "remove"),
    [("no_root", "."), ("no_annotations", "annotations/train"), ("no_images", "images/train/*")],
)
def test_missing_data_exits_2_naming_the_folder(
    transfer, synth_nyud_tree, tmp_path, capsys, case: str, remove: str
):
    """A copy of the train split without its root, its annotations folder or its images."""
    root = tmp_path / "nyud"
    shutil.copytree(synth_nyud_tree, root)
    folder = root / remove.removesuffix("/*")
    if remove.endswith("/*"):
        for png in folder.iterdir():
            png.unlink()
    else:
        shutil.rmtree(folder)
    config = _run_config(tmp_path, case, transfer["base"])
    argv = [str(config), "--work-dir", str(tmp_path / "w")]
    argv += ["--cfg-options", f"train_dataloader.dataset.data_root={root}"]
    shown = root / "images" / "train" if case == "no_root" else folder
    _expect_error(capsys, argv, "NYUDv2Dataset", str(shown))


def test_num_classes_mismatch_exits_2(transfer, tmp_path, capsys):
    config = _run_config(tmp_path, "num_classes", transfer["base"])
    argv = [str(config), "--work-dir", str(tmp_path / "w")]
    argv += ["--cfg-options", "model.seg_head.num_classes=13"]
    _expect_error(capsys, argv, "num_classes=13", "NYUDv2Dataset has 40 classes")


# -- distributed ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_run(transfer, tmp_path):
    """torchrun x 2 on CPU through tools/train.py: trains, saves, keeps the backbone frozen.

    The heads' SyncBN cannot run on CPU; the launcher's CPU DDP wrapper makes it BN.
    """
    config = _run_config(tmp_path, "dist", transfer["base"], "train_cfg = dict(max_iters=2)\n")
    work_dir = tmp_path / "work"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd += ["--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
    cmd += [str(TOOLS / "train.py"), str(config), "--launcher", "pytorch"]
    cmd += ["--work-dir", str(work_dir), "--cfg-options", "env_cfg.dist_cfg.backend=gloo"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (log,) = work_dir.glob("*/*.log")
    text = log.read_text()
    assert "Distributed training: True" in text and "GPU number: 2" in text  # world size
    assert "Iter(train) [2/2]" in text
    state = _load_checkpoint(str(work_dir / "iter_2.pth"))["state_dict"]
    backbone = _part(state, "backbone.")
    assert all(torch.equal(v, backbone[k]) for k, v in transfer["backbone"].items())


# -- channels-last heads ---------------------------------------------------------------------


def test_channels_last_heads_match_the_default_layout():
    cfg = Config.fromfile(CONFIGS / "demo" / "nyud_synth.py")
    head = dict(in_channels=64, channels=16, dilations=(1, 2), c1_in_channels=8, c1_channels=8)
    cfg.merge_from_dict({"model.backbone.base_channels": 8, "model.seg_head": head})
    cfg.merge_from_dict({"model.backbone_backend": "torch"})  # the heads' layouts are under test
    cfg.merge_from_dict({"model.depth_head": head})
    models = {}
    for layout in (False, True):
        cfg.model.channels_last = layout
        models[layout] = MODELS.build(cfg.model)
    models[True].load_state_dict(models[False].state_dict())
    assert models[True].seg_head.conv_seg.weight.is_contiguous(memory_format=torch.channels_last)
    inputs = torch.randn(2, 3, 48, 64)
    outputs, grads = {}, {}
    for layout, model in models.items():
        model.train()
        out = model._forward(inputs)
        (out["seg"].square().mean() + out["depth"].mean()).backward()
        outputs[layout] = out
        grads[layout] = model.depth_head.conv_seg.weight.grad
    for task in ("seg", "depth"):
        torch.testing.assert_close(outputs[True][task], outputs[False][task], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-4, atol=1e-5)


def test_frozen_backbone_keeps_its_schedule_buffers(transfer, tmp_path):
    """A backbone saved at the end of pretraining (EDE t = 10, k = 1) comes out of transfer
    bit-identical, buffers included, although the progress hook runs every iteration."""
    ckpt = tmp_path / "late.pth"
    state = _save_backbone(ckpt, 5, depth=18, base_channels=8, output_stride=8)
    t_end, k_end = ede_schedule(1.0)
    for key in state:
        if key.endswith("binarizer.t"):
            state[key].fill_(t_end)
        elif key.endswith("binarizer.k"):
            state[key].fill_(k_end)
    torch.save(dict(state_dict={f"backbone.{k}": v for k, v in state.items()}), ckpt)
    body = _with_hooks() + "custom_hooks[0]['interval'] = 1\n"
    config = _run_config(tmp_path, "late", transfer["base"], body)
    work_dir = tmp_path / "w"
    train(str(config), str(work_dir), cfg_options={"model.backbone.pretrained": str(ckpt)})
    final = _part(
        _load_checkpoint(str(work_dir / f"iter_{MAX_ITERS}.pth"))["state_dict"], "backbone."
    )
    assert final.keys() == state.keys()
    assert [k for k, v in state.items() if not torch.equal(v, final[k])] == []


def _tool_error(capsys, tool: str, argv: list[str]) -> str:
    """``tools/<tool>.py`` exits 2 with exactly one ``error:`` line on stderr."""
    assert _tool_main(tool)(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


class _RunsCode:
    """Unpickling this would run ``touch`` on a path: a checkpoint that executes code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.path)],))


@pytest.mark.parametrize("case", ["wider", "backbone_only", "truncated", "text", "runs_code"])
def test_bad_checkpoints_are_refused_by_test_and_resume(
    transfer, frozen_run, tmp_path, capsys, case
):
    """tools/test.py loads strictly and safely: another architecture, a pretraining checkpoint
    of the backbone alone, a cut file, a text file and a pickle that would run code all give
    one line and exit 2, with no metrics.json; --resume refuses the same files."""
    good = frozen_run["work_dir"] / f"iter_{MAX_ITERS}.pth"
    ckpt = tmp_path / f"{case}.pth"
    touched = tmp_path / "ran"
    if case == "wider":
        state = _load_checkpoint(str(good))["state_dict"]
        state = {
            k: torch.cat([v, v]) if k.endswith("seg_head.conv_seg.bias") else v
            for k, v in state.items()
        }
        torch.save(dict(state_dict=state), ckpt)
    elif case == "backbone_only":
        shutil.copy(transfer["root"] / "pretrained.pth", ckpt)
    elif case == "truncated":
        ckpt.write_bytes(good.read_bytes()[:1000])
    elif case == "text":
        ckpt.write_text("not a checkpoint\n")
    else:
        with open(ckpt, "wb") as f:
            pickle.dump({"state_dict": _RunsCode(touched)}, f)
    config = _run_config(tmp_path, f"bad_{case}", transfer["base"])
    run_dir = tmp_path / "eval"
    line = _tool_error(capsys, "test", [str(config), str(ckpt), "--work-dir", str(run_dir)])
    assert str(ckpt) in line
    assert not (run_dir / "metrics.json").exists() and not touched.exists()
    if case in ("truncated", "text", "runs_code"):
        argv = [str(config), "--work-dir", str(tmp_path / "w"), "--resume", str(ckpt)]
        assert str(ckpt) in _tool_error(capsys, "train", argv)
        assert not touched.exists()


@HOOKS.register_module(force=True)
class PoisonDepthHeadHook(Hook):
    """Sets the depth head's bias to NaN once the checkpoint is loaded (a checkpoint holding
    NaN is refused before the test runs): the outputs, and the depth metrics, become NaN."""

    def before_test(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        with torch.no_grad():
            model.depth_head.conv_seg.bias.fill_(float("nan"))


def test_nan_metrics_are_an_error_not_a_result(transfer, frozen_run, tmp_path, capsys):
    ckpt = str(frozen_run["work_dir"] / f"iter_{MAX_ITERS}.pth")
    config = _run_config(
        tmp_path, "nan", transfer["base"], _with_hooks(dict(type="PoisonDepthHeadHook"))
    )
    run_dir = tmp_path / "eval"
    line = _tool_error(capsys, "test", [str(config), ckpt, "--work-dir", str(run_dir)])
    assert "non-finite metrics" in line and "rmse" in line
    assert not (run_dir / "metrics.json").exists()


def test_nan_weights_are_refused_naming_the_tensor(transfer, frozen_run, tmp_path, capsys):
    state = _load_checkpoint(str(frozen_run["work_dir"] / f"iter_{MAX_ITERS}.pth"))["state_dict"]
    state["depth_head.conv_seg.bias"].fill_(float("nan"))
    ckpt = tmp_path / "nan.pth"
    torch.save(dict(state_dict=state), ckpt)
    config = _run_config(tmp_path, "nan_weights", transfer["base"])
    run_dir = tmp_path / "eval"
    line = _tool_error(capsys, "test", [str(config), str(ckpt), "--work-dir", str(run_dir)])
    assert "depth_head.conv_seg.bias holds 1 NaN" in line
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.parametrize(
    ("option", "named"),
    [
        ("model.backbone.binariser=irnet", "model.backbone.binariser: BinaryResNet"),
        ("train_cfg.max_iter=3", "train_cfg.max_iter: IterBasedTrainLoop"),
    ],
)
def test_mistyped_config_keys_are_named(transfer, tmp_path, capsys, option, named):
    config = _run_config(tmp_path, "typo", transfer["base"])
    argv = [str(config), "--work-dir", str(tmp_path / "w"), "--cfg-options", option]
    line = _tool_error(capsys, "train", argv)
    assert named in line and "it accepts" in line
    assert "binarizer" in line or "max_iters" in line


def test_slide_inference_is_refused(transfer):
    model_cfg = Config.fromfile(transfer["base"]).model
    model_cfg.test_cfg = dict(mode="slide", crop_size=(32, 32), stride=(16, 16))
    with pytest.raises(ValueError, match=r"test_cfg\.mode='slide' is not supported"):
        MODELS.build(model_cfg)
