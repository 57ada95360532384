"""End-to-end classification pretraining with CMIM.

One backbone pass per step, lambda = 0 equals the plain classifier, tools/train.py and
tools/test.py on a tiny ImageFolder and on CIFAR-10 pickles, exact resume, and a 2-process
gloo run whose memory bank holds both ranks' samples. Runs go through the tools' ``main()``
in this process (a subprocess only for torchrun); configs inherit from the project's
``configs/pretrain`` files by absolute path and shrink them.
"""

from __future__ import annotations

import json
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _data_writers import write_cifar10, write_pattern_folder
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapper
from mmengine.runner.checkpoint import _load_checkpoint

from cmim_dense.engine.distributed import init_cpu_distributed
from cmim_dense.evaluation.report import read_run_metrics
from cmim_dense.models.backbones.bin_resnet import BinaryResNet
from cmim_dense.registry import HOOKS, MODELS

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TOOLS = REPO / "tools"
SMALL_BACKBONE = dict(
    type="BinaryResNet", depth=18, binarizer="irnet", stem="cifar", base_channels=8
)
CRITICS = {
    "flip": dict(type="CMIMLoss", critic="flip", n_nce=0),
    "embed": dict(type="CMIMLoss", critic="embed", n_nce=16, embed_dim=16, hidden_dim=16),
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: a second intra-op thread only waits for CPU
    (20 steps took 11-15 s with 2 threads under load, 0.7 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- the training step ----------------------------------------------------------------------


def _classifier(cmim_lambda: float, cmim: dict | None):
    torch.manual_seed(0)
    return MODELS.build(
        dict(
            type="BinaryImageClassifier",
            backbone=SMALL_BACKBONE,
            num_classes=4,
            cmim_lambda=cmim_lambda,
            cmim=cmim,
            tap_size=2,
            data_preprocessor=dict(type="BaseDataPreprocessor"),
        )
    )


def _batch(step: int, n: int = 6) -> dict:
    """A collated batch as the classification datasets give it; indices n*step .. n*step+n-1."""
    gen = torch.Generator().manual_seed(step)
    return dict(
        inputs=torch.randn(n, 3, 16, 16, generator=gen),
        label=torch.randint(0, 4, (n,), generator=gen),
        index=torch.arange(n) + step * n,
    )


@pytest.mark.parametrize("critic", sorted(CRITICS))
def test_one_backbone_forward_per_step(critic: str):
    model = _classifier(1.0, CRITICS[critic])
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    calls = dict(backbone=0, stage0=0, deepest_tap=0)

    def counter(name: str):
        def hook(*_) -> None:
            calls[name] += 1

        return hook

    model.backbone.register_forward_hook(counter("backbone"))
    model.backbone.stages[0].register_forward_hook(counter("stage0"))
    model.taps.layers[-1].register_forward_hook(counter("deepest_tap"))
    for step in range(3):
        log_vars = model.train_step(_batch(step), optim)
        assert calls == dict(backbone=step + 1, stage0=step + 1, deepest_tap=step + 1)
        assert set(log_vars) == {"loss", "loss_cls", "loss_cmim"}
        assert torch.isfinite(log_vars["loss_cmim"]) and log_vars["loss_cmim"] > 0
        assert len(model.cmim.last_layer_terms) == 4
        # The taps are attached only inside the loss forward.
        assert all(conv.tap is None for conv in model.backbone.binary_convs())
    if critic == "embed":
        # 3 steps x 6 samples through a 16-row queue: the 16 latest indices remain.
        assert sorted(model.cmim.bank_index_0.tolist()) == list(range(2, 18))


def test_lambda_zero_is_the_plain_classifier():
    plain = _classifier(0.0, None)
    zero = _classifier(0.0, CRITICS["embed"])
    assert zero.taps is None and zero.cmim is None
    assert plain.state_dict().keys() == zero.state_dict().keys()
    taps_seen = []
    for conv in zero.backbone.binary_convs():
        conv.register_forward_pre_hook(lambda conv, _: taps_seen.append(conv.tap))
    batch = _batch(0)
    losses = []
    for model in (plain, zero):
        loss = model(**batch, mode="loss")
        assert set(loss) == {"loss_cls"}
        loss["loss_cls"].backward()
        losses.append(loss["loss_cls"])
    assert len(taps_seen) == 16 and all(tap is None for tap in taps_seen)
    assert torch.equal(losses[0], losses[1])
    for (name, p_plain), p_zero in zip(plain.named_parameters(), zero.parameters()):
        assert p_plain.grad is not None and torch.equal(p_plain.grad, p_zero.grad), name
    # Same initial weights with lambda > 0: the CE term is unchanged, CMIM is added.
    loss = _classifier(0.5, CRITICS["embed"])(**batch, mode="loss")
    assert torch.equal(loss["loss_cls"], losses[0]) and loss["loss_cmim"] > 0


# -- end-to-end runs through tools/train.py and tools/test.py --------------------------------


def _tool_main(name: str):
    """``main(argv)`` of ``tools/<name>.py``."""
    return runpy.run_path(str(TOOLS / f"{name}.py"), run_name=f"tools_{name}")["main"]


def _loader(batch_size: int, workers: int = 0, **dataset) -> str:
    return (
        f"dict(batch_size={batch_size}, num_workers={workers}, persistent_workers=False, "
        f"dataset={dataset!r})"
    )


def _write_config(path: Path, base: str, body: str, epochs: int) -> Path:
    """A config at ``path`` inheriting ``configs/<base>`` (absolute path) with ``body`` and a
    short, logged, seeded, gloo runtime."""
    path.write_text(
        f"""_base_ = [{str(CONFIGS / base)!r}]
{body}
train_cfg = dict(max_epochs={epochs})
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=-1))
log_processor = dict(window_size=1)
randomness = dict(seed=0)
env_cfg = dict(dist_cfg=dict(backend="gloo"))
# mmengine keeps one Visualizer per name in a process: a unique one per run.
visualizer = dict(name={path.stem!r})
"""
    )
    return path


def _train_records(work_dir: Path) -> list[dict]:
    """Training-iteration records of every run of ``work_dir``, oldest first.

    Runs started in the same second share their ``<timestamp>/`` folder, whose
    ``vis_data/scalars.json`` they append to.
    """
    records = []
    for path in sorted(work_dir.glob("*/vis_data/scalars.json")):
        records += [r for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]
    return records


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, Path]:
    """4 epochs of IR-Net + CMIM (embed critic, queue bank) on a 4-class ImageFolder.

    Adam: with the schedule's SGD lr 0.1 a width-8 IR-Net does not learn in 16 steps.
    """
    root = tmp_path_factory.mktemp("folder_run")
    write_pattern_folder(root / "data", num_classes=4, per_class=dict(train=8, val=4))
    data = dict(data_root=str(root / "data"), img_size=32)
    body = f"""
model = dict(
    backbone=dict(base_channels=8, stem="cifar"),
    num_classes=4,
    cmim_lambda=0.5,
    cmim=dict(critic="embed", n_nce=16, embed_dim=16, hidden_dim=16),
    tap_size=2,
)
optim_wrapper = dict(optimizer=dict(_delete_=True, type="Adam", lr=1e-3))
train_dataloader = {_loader(8, split="train", **data)}
val_dataloader = {_loader(8, split="val", **data)}
test_dataloader = val_dataloader
"""
    config = _write_config(
        root / "folder_cmim.py", "pretrain/imagenet_bin_r18_irnet_cmim.py", body, epochs=4
    )
    work_dir = root / "work"
    assert _tool_main("train")([str(config), "--work-dir", str(work_dir)]) == 0
    return config, work_dir


def test_folder_run_learns_and_saves(folder_run):
    _, work_dir = folder_run
    records = _train_records(work_dir)
    assert [r["step"] for r in records] == list(range(1, 17))  # 4 epochs x 32 / 8
    for key in ("loss", "loss_cls"):
        first = sum(r[key] for r in records[:4])
        last = sum(r[key] for r in records[-4:])
        assert last < first, key
    ckpt = _load_checkpoint(str(work_dir / "epoch_4.pth"), map_location="cpu")
    assert ckpt["meta"]["epoch"] == 4 and ckpt["meta"]["iter"] == 16
    keys = {key.split(".")[0] for key in ckpt["state_dict"]}
    assert keys == {"backbone", "cmim", "tap_seed", "tap_step"}
    assert {"backbone.fc.weight", "backbone.fc.bias"} <= set(ckpt["state_dict"])  # timm's layout
    assert {"cmim.bank_3", "cmim.bank_index_3", "cmim.embed_F.3.2.weight"} <= set(
        ckpt["state_dict"]
    )
    assert len(list(work_dir.glob("best_top1_epoch_*.pth"))) == 1


def test_checkpoint_loads_into_transfer_backbone(folder_run):
    _, work_dir = folder_run
    ckpt = str(work_dir / "epoch_4.pth")
    backbone = BinaryResNet(depth=18, base_channels=8, stem="cifar", pretrained=ckpt)
    backbone.init_weights()  # strict: a missing or unexpected key raises; the classifier is left
    state = _load_checkpoint(ckpt, map_location="cpu")["state_dict"]
    own = backbone.state_dict()
    expected = {k.removeprefix("backbone.") for k in state if k.startswith("backbone.")}
    assert set(own) == {k for k in expected if not k.startswith("fc.")}
    for key, value in own.items():
        assert torch.equal(value, state[f"backbone.{key}"]), key


def test_tools_test_writes_metrics(folder_run, tmp_path):
    config, work_dir = folder_run
    ckpt = str(work_dir / "epoch_4.pth")
    argv = [str(config), ckpt, "--work-dir", str(tmp_path), "--name", "folder"]
    assert _tool_main("test")(argv) == 0
    record = read_run_metrics(tmp_path)
    assert record["name"] == "folder" and record["checkpoint"] == ckpt
    top1, top5 = record["metrics"]["top1"], record["metrics"]["top5"]
    assert top1 in {6.25 * k for k in range(17)}  # 16 val images
    assert top5 == 100.0  # 4 classes: every label is in the top 5
    meta = record["meta"]
    assert meta["binarizer"] == "irnet" and meta["cmim_lambda"] == 0.5
    assert meta["pretrain_top1"] == top1 and meta["pretrain_top5"] == top5


@HOOKS.register_module(force=True)
class StopAfterEpochHook(Hook):
    """Ends training after ``epoch`` epochs (their checkpoints saved): an interrupted run."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def after_train_epoch(self, runner) -> None:
        if runner.epoch + 1 >= self.epoch:
            runner.train_loop.stop_training = True


def _cifar_config(root: Path, name: str, stop_after: int | None = None) -> Path:
    """3 epochs of IR-Net + CMIM (flip critic) on 20 CIFAR-10 images, batch 8.

    One loader worker: mmengine seeds each worker with ``seed + worker_id`` when it starts,
    so the random crops and flips do not depend on what ran before a resume (in-process
    loading would draw them from the global RNG, which resume does not restore).
    """
    data = dict(data_root=str(root / "cifar"))
    stop = f"dict(type='StopAfterEpochHook', epoch={stop_after})," if stop_after else ""
    body = f"""
model = dict(
    backbone=dict(base_channels=8),
    cmim_lambda=0.5,
    cmim=dict(_delete_=True, type="CMIMLoss", critic="flip", n_nce=0),
    tap_size=2,
)
optim_wrapper = dict(optimizer=dict(_delete_=True, type="Adam", lr=1e-3))
train_dataloader = {_loader(8, workers=1, **data)}
val_dataloader = {_loader(8, split="test", **data)}
test_dataloader = val_dataloader
custom_hooks = [dict(type="BinarizerProgressHook"), dict(type="NumClassesCheckHook"), {stop}]
"""
    return _write_config(
        root / f"{name}.py", "pretrain/cifar10_bin_r18_irnet_cmim.py", body, epochs=3
    )


def test_cifar_resume_matches_uninterrupted_run(tmp_path):
    """Interrupted after 2 of 3 epochs and resumed == 3 epochs in one go, bit for bit.

    The interrupted run has the same max_epochs: IR-Net's EDE schedule reads
    epoch / max_epochs, so a 2-epoch run is not the start of a 3-epoch one.
    """
    write_cifar10(tmp_path / "cifar" / "cifar-10-batches-py", per_batch=4, learnable=True)
    train = _tool_main("train")
    full, part = tmp_path / "full", tmp_path / "part"
    assert train([str(_cifar_config(tmp_path, "full")), "--work-dir", str(full)]) == 0
    interrupted = _cifar_config(tmp_path, "interrupted", stop_after=2)
    assert train([str(interrupted), "--work-dir", str(part)]) == 0
    assert (part / "epoch_2.pth").is_file() and not (part / "epoch_3.pth").exists()
    assert [r["step"] for r in _train_records(part)] == list(range(1, 7))
    resumed = _cifar_config(tmp_path, "resumed")
    assert train([str(resumed), "--work-dir", str(part), "--resume"]) == 0

    logs = "".join(p.read_text() for p in part.glob("*/*.log"))
    assert "resumed epoch: 2, iter: 6" in logs
    # 3 steps per epoch; the resumed run logged only epoch 3 (steps 7-9).
    expected = [(1 + (step - 1) // 3, step) for step in range(1, 10)]
    assert [(r["epoch"], r["step"]) for r in _train_records(part)] == expected
    a = _load_checkpoint(str(full / "epoch_3.pth"), map_location="cpu")
    b = _load_checkpoint(str(part / "epoch_3.pth"), map_location="cpu")
    assert a["meta"]["epoch"] == b["meta"]["epoch"] == 3 and b["meta"]["iter"] == 9
    assert a["state_dict"].keys() == b["state_dict"].keys()
    different = [k for k, v in a["state_dict"].items() if not torch.equal(v, b["state_dict"][k])]
    assert not different
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], b["optimizer"]["state"][key]["exp_avg"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU launch path")
def test_cpu_torchrun_setup():
    cfg = Config(dict(launcher="none", env_cfg=dict(dist_cfg=dict(backend="nccl"))))
    init_cpu_distributed(cfg)
    assert "model_wrapper_cfg" not in cfg
    cfg.launcher = "pytorch"
    with pytest.raises(ValueError, match="backend=gloo"):
        init_cpu_distributed(cfg)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_run_gathers_the_bank(tmp_path):
    """torchrun x 2 on CPU: every step's queue update holds both ranks' samples."""
    write_cifar10(tmp_path / "cifar" / "cifar-10-batches-py", per_batch=4, learnable=True)
    data = dict(data_root=str(tmp_path / "cifar"))
    body = f"""
model = dict(
    backbone=dict(base_channels=8),
    cmim_lambda=0.5,
    cmim=dict(n_nce=20, embed_dim=16, hidden_dim=16),
    tap_size=2,
)
optim_wrapper = dict(optimizer=dict(_delete_=True, type="Adam", lr=1e-3))
train_dataloader = {_loader(4, **data)}
val_dataloader = {_loader(4, split="test", **data)}
test_dataloader = val_dataloader
"""
    config = _write_config(
        tmp_path / "dist.py", "pretrain/cifar10_bin_r18_irnet_cmim.py", body, epochs=1
    )
    work_dir = tmp_path / "work"
    env = dict(
        os.environ,
        PORT=str(_free_port()),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    proc = subprocess.run(
        ["bash", str(TOOLS / "dist_train.sh"), str(config), "2", "--work-dir", str(work_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = _load_checkpoint(str(work_dir / "epoch_1.pth"), map_location="cpu")["state_dict"]
    # DefaultSampler(seed=0), epoch 0: rank r reads perm[r::2] of randperm(20, seed 0 + 0).
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    shards = [perm[0::2], perm[1::2]]
    # Per step, the gathered batch is rank 0's 4 (then 2) samples followed by rank 1's: the
    # 20-row queue receives exactly the whole dataset, in that order.
    expected = torch.cat([shard[i : i + 4] for i in (0, 4, 8) for shard in shards])
    for k in range(4):
        assert torch.equal(state[f"cmim.bank_index_{k}"], expected), k
    assert int(state["cmim.bank_ptr"]) == 0
    (log,) = work_dir.glob("*/*.log")
    assert "Distributed training: True" in log.read_text() and "GPU number: 2" in log.read_text()
    assert [r["step"] for r in _train_records(work_dir)] == [1, 2, 3]


def test_classifier_num_classes_must_match_the_dataset(tmp_path, capsys):
    """NumClassesCheckHook reads the classifier's num_classes: 5 classes on a 4-class folder
    stop before the first step with one line naming both."""
    write_pattern_folder(tmp_path / "data", num_classes=4, per_class=dict(train=2, val=2))
    data = dict(data_root=str(tmp_path / "data"), img_size=32)
    body = f"""
model = dict(backbone=dict(base_channels=8, stem="cifar"), num_classes=5)
train_dataloader = {_loader(4, split="train", **data)}
val_dataloader = {_loader(4, split="val", **data)}
test_dataloader = val_dataloader
"""
    config = _write_config(
        tmp_path / "five.py", "pretrain/imagenet_bin_r18_irnet_baseline.py", body, epochs=1
    )
    assert _tool_main("train")([str(config), "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "num_classes=5" in err[-1] and "4 classes" in err[-1]
    assert not list((tmp_path / "w").glob("*.pth"))
