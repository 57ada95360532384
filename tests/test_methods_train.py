"""Every binarizer trains through tools/train.py with CMIM; S2-BNN, LNS weight, method configs.

The end-to-end runs derive a tiny config from each method's real CIFAR-100 config (base width 8,
batch 16, 24 iterations, in-batch CMIM negatives) and train on a learnable toy set written in the
official CIFAR-100 pickle format; the loss must go down. The S2-BNN run uses an ImageFolder with
the labels dropped and a small real-valued teacher from a local checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from _data_writers import cifar_batch, dump_cifar_pickle, write_pattern_folder
from mmengine.config import Config
from mmengine.optim import OptimWrapper

from cmim_dense.binary import list_binarizers
from cmim_dense.binary.lns import lns_noisy_label_loss
from cmim_dense.models.s2bnn import info_nce_loss
from cmim_dense.registry import DATASETS, MODELS
from cmim_dense.utils.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "configs" / "pretrain"
METHODS = ["adabin", "bireal", "irnet", "lns", "rbnn", "react", "sdbnn", "threshold_shift"]
# Binarizers without their own configs train from the IR-Net config with the binarizer swapped.
SWAPPED = {"ste": "irnet", "xnor": "irnet"}
ITERS = 24
# Long enough for every binarizer's CMIM term to stop rising (RBNN, the slowest, peaks later).
CMIM_ITERS = 96

_spec = importlib.util.spec_from_file_location("train_tool", ROOT / "tools" / "train.py")
train_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_tool)


# ------------------------------------------------------------------ data in the real formats
def _write_cifar100(root: Path, train: int = 64, test: int = 16) -> None:
    """The official CIFAR-100 layout, cifar-100-python/{train,test}, of 4 learnable classes."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        batch = cifar_batch(rng, count, 4, b"fine_labels", learnable=True)
        dump_cifar_pickle(folder / split, batch)


# ------------------------------------------------------------------ running tools/train.py
_TINY_RUN = """
model = {model!r}
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(_delete_=True, type="InfiniteSampler", shuffle=True, seed=0),
    dataset={dataset!r},
)
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
train_cfg = dict(_delete_=True, type="IterBasedTrainLoop", max_iters={iters})
param_scheduler = []
log_processor = dict(by_epoch=False, window_size=1)
default_hooks = dict(
    logger=dict(interval=1, log_metric_by_epoch=False),
    checkpoint=dict(by_epoch=False, interval={iters}, save_best=None),
)
visualizer = dict(name={name!r})
"""


def _train(
    tmp_path: Path,
    name: str,
    base: Path,
    model: dict,
    dataset: dict,
    extra: str = "",
    iters: int = ITERS,
) -> list[dict]:
    """Train a tiny run of ``iters`` iterations derived from config ``base`` via tools/train.py.

    ``model`` and ``dataset`` are merged into the config's ``model`` and
    ``train_dataloader.dataset``. Returns the per-iteration logged scalars.
    """
    config = tmp_path / f"{name}.py"
    run = _TINY_RUN.format(model=model, dataset=dataset, iters=iters, name=name)
    config.write_text(f"_base_ = [{str(base)!r}]\n{run}\n{extra}\n")
    work_dir = tmp_path / "work"
    assert train_tool.main([str(config), "--work-dir", str(work_dir), "--amp", "off"]) == 0
    (scalars,) = work_dir.glob("*/vis_data/scalars.json")
    rows = [json.loads(line) for line in scalars.read_text().splitlines()]
    assert len(rows) == iters
    return rows


def _first_last(rows: list[dict], key: str, k: int = 6) -> tuple[float, float]:
    values = [row[key] for row in rows]
    assert np.isfinite(values).all(), f"{key} is not finite: {values}"
    return float(np.mean(values[:k])), float(np.mean(values[-k:]))


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(list_binarizers()))
def test_every_binarizer_trains_with_cmim(tmp_path, method):
    data = tmp_path / "cifar100"
    _write_cifar100(data)
    config_method = SWAPPED.get(method, method)
    base = PRETRAIN / f"cifar100_bin_r18_{config_method}_cmim.py"
    base_cfg = Config.fromfile(str(base))
    # The config's recipe (flip critic, in-batch negatives), narrower, with lambda 1e-3: at the
    # config's lambda the literal CMIM term outweighs the CE term for many more steps than these.
    model = dict(backbone=dict(base_channels=8), cmim_lambda=1e-3)
    if method in SWAPPED:
        model["backbone"]["binarizer"] = method
    # lr 0.1 is the SGD recipe for batch 256; at batch 16 it only oscillates.
    extra = (
        "optim_wrapper = dict(optimizer=dict(lr=0.01))"
        if base_cfg.optim_wrapper.optimizer.type == "SGD"
        else ""
    )
    rows = _train(
        tmp_path, f"train_{method}", base, model, dict(data_root=str(data)), extra, CMIM_ITERS
    )

    assert rows[0]["loss_cmim"] != 0
    first_cls, last_cls = _first_last(rows, "loss_cls")
    assert last_cls < first_cls, f"{method}: loss_cls {first_cls:.3f} -> {last_cls:.3f}"
    # The literal CMIM term scales with the activations, which grow from their initial scale
    # while the classifier learns: the term rises (1-3.5x its first steps' value in the first
    # quarter, by CPU and seed) and then levels off. It must level off, not diverge: a term that
    # keeps growing (linearly from 0 or faster) has its last quarter's mean >= 2.3x the second
    # quarter's. Measured on an AVX-512 bf16 CPU, 10 binarizers x 2 seeds: at most 1.27x (RBNN).
    quarters = np.array_split(np.array([row["loss_cmim"] for row in rows]), 4)
    assert all(np.isfinite(q).all() and (q > 0).all() for q in quarters), f"{method}: {quarters}"
    growth = quarters[3].mean() / quarters[1].mean()
    assert growth < 1.5, f"{method}: loss_cmim still grows {growth:.2f}x over the last half"
    assert ("loss_lns" in rows[0]) == (method == "lns")
    dumped = tmp_path / "work" / f"train_{method}.py"
    binarizer = Config.fromfile(str(dumped)).model.backbone.binarizer
    assert (binarizer if isinstance(binarizer, str) else binarizer["type"]) == method


# ------------------------------------------------------------------ S2-BNN
TEACHER = dict(arch="resnet18", prefix="module.encoder_q.", mlp_hidden=32)
EMBED_DIM = 16


def _write_ssl_teacher(path: Path) -> dict[str, torch.Tensor]:
    """A MoCo v2-style checkpoint: a ResNet-18 with a Linear-ReLU-Linear head under a prefix."""
    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=EMBED_DIM)
    net.fc = torch.nn.Sequential(
        torch.nn.Linear(512, 32), torch.nn.ReLU(), torch.nn.Linear(32, EMBED_DIM)
    )
    state = {k: v.clone() for k, v in net.state_dict().items()}
    torch.save({"state_dict": {TEACHER["prefix"] + k: v for k, v in state.items()}}, path)
    return state


def _s2bnn(tmp_path: Path, **kwargs) -> torch.nn.Module:
    """A tiny S2BNNClassifier (base width 8, CIFAR stem) with the teacher of _write_ssl_teacher."""
    checkpoint = tmp_path / "teacher.pth"
    _write_ssl_teacher(checkpoint)
    torch.manual_seed(0)
    backbone = dict(
        type="BinaryResNet", binarizer="react", block="react", base_channels=8, stem="cifar"
    )
    return MODELS.build(
        dict(
            type="S2BNNClassifier",
            backbone=backbone,
            num_classes=EMBED_DIM,
            teacher=dict(TEACHER, checkpoint=str(checkpoint)),
            head_hidden=16,
            **kwargs,
        )
    )


@pytest.mark.slow
def test_s2bnn_trains_without_labels_and_leaves_the_teacher_alone(tmp_path):
    write_pattern_folder(tmp_path / "images", per_class=dict(train=8))
    checkpoint = tmp_path / "teacher.pth"
    original = _write_ssl_teacher(checkpoint)
    model = dict(
        backbone=dict(base_channels=8, stem="cifar"),
        num_classes=EMBED_DIM,
        teacher=dict(TEACHER, checkpoint=str(checkpoint)),
        head_hidden=16,
        cmim=dict(n_nce=0),
    )
    dataset = dict(dataset=dict(data_root=str(tmp_path / "images"), img_size=32))
    rows = _train(
        tmp_path,
        "train_s2bnn",
        PRETRAIN / "imagenet_bin_r18_s2bnn_cmim.py",
        model,
        dataset,
        extra="optim_wrapper = dict(optimizer=dict(lr=2e-3))",
    )
    assert "loss_cls" not in rows[0] and rows[0]["loss_cmim"] != 0
    first, last = _first_last(rows, "loss_distill")
    assert last < 0.95 * first, f"loss_distill {first:.4f} -> {last:.4f}"

    state = torch.load(tmp_path / "work" / f"iter_{ITERS}.pth", map_location="cpu")["state_dict"]
    teacher = {k[len("teacher.") :]: v for k, v in state.items() if k.startswith("teacher.")}
    assert teacher.keys() == original.keys()
    for key, value in original.items():  # weights and BN statistics: frozen and in eval mode
        assert torch.equal(teacher[key], value), key


def test_s2bnn_teacher_is_frozen_and_gets_no_gradient(tmp_path):
    model = _s2bnn(tmp_path, cmim_lambda=1.0, cmim=dict(critic="flip"))
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    model.init_weights()  # what the Runner does: it must not re-initialise the teacher
    model.train()
    assert not model.teacher.training
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert isinstance(model.teacher.fc, torch.nn.Sequential)  # the MoCo head, loaded strictly
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batch = dict(inputs=torch.randn(6, 3, 32, 32), index=torch.arange(6))  # no "label"
    log_vars = model.train_step(batch, OptimWrapper(optimizer))
    assert set(log_vars) == {"loss", "loss_distill", "loss_cmim"}

    student_before = model.backbone.stem[0].weight.clone()
    loss, _ = model.parse_losses(model.loss(**batch))
    loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.backbone.stem[0].weight.grad.abs().sum() > 0
    optimizer.step()
    for key, value in model.teacher.state_dict().items():  # weights and BN statistics
        assert torch.equal(value, teacher_before[key]), key
    assert not torch.equal(model.backbone.stem[0].weight, student_before)


def test_s2bnn_ignores_labels_and_matches_the_teacher_distribution(tmp_path):
    model = _s2bnn(tmp_path).train()
    inputs = torch.randn(4, 3, 32, 32)
    unlabeled = model.loss(inputs)
    labeled = model.loss(inputs, label=torch.tensor([0, 1, 2, 3]), index=torch.arange(4))
    assert set(unlabeled) == set(labeled) == {"loss_distill"}
    torch.testing.assert_close(unlabeled["loss_distill"], labeled["loss_distill"])
    with torch.no_grad():
        student = F.normalize(model.backbone(inputs), dim=1) / 0.2
        teacher = F.normalize(model.teacher(inputs), dim=1) / 0.2
    expected = -(teacher.softmax(1) * student.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(unlabeled["loss_distill"].detach(), expected)
    with pytest.raises(ValueError, match="needs a teacher"):
        MODELS.build(
            dict(
                type="S2BNNClassifier",
                backbone=dict(type="BinaryResNet"),
                num_classes=4,
                teacher=None,
            )
        )


def test_s2bnn_contrastive_term_on_two_views(tmp_path):
    model = _s2bnn(tmp_path, contrastive_weight=0.5).train()
    views = torch.randn(4, 2, 3, 32, 32)
    losses = model.loss(views, index=torch.arange(4))
    assert set(losses) == {"loss_distill", "loss_contrast"}
    with torch.no_grad():
        z = model.backbone(views.flatten(0, 1)).view(4, 2, -1)
    expected = 0.5 * info_nce_loss(z[:, 0], z[:, 1], 0.2)
    torch.testing.assert_close(losses["loss_contrast"].detach(), expected)
    with pytest.raises(ValueError, match="two views"):
        model.loss(torch.randn(4, 3, 32, 32))


def test_info_nce_hand_values_and_gradient():
    basis = torch.eye(2)
    # Each anchor: positive cos 1, two negatives cos 0 -> -log(e^(1/t) / (e^(1/t) + 2)).
    for t in (1.0, 0.5):
        expected = torch.tensor(1 + 2 * np.exp(-1 / t)).log().float()
        torch.testing.assert_close(info_nce_loss(basis, basis.clone(), t), expected)
    z1, z2 = torch.randn(3, 4, dtype=torch.double, requires_grad=True), torch.randn(3, 4).double()
    assert torch.autograd.gradcheck(lambda a: info_nce_loss(a, z2, 0.3), (z1,))
    with pytest.raises(ValueError, match="two"):
        info_nce_loss(torch.randn(3, 4), torch.randn(2, 4), 0.2)


def test_teacher_checkpoint_needs_its_mlp_head(tmp_path):
    from cmim_dense.models.classifier import build_teacher

    checkpoint = tmp_path / "teacher.pth"
    _write_ssl_teacher(checkpoint)
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\) \[fc\.0\.bias, fc\.0\.weight"):
        build_teacher("resnet18", str(checkpoint), EMBED_DIM, prefix=TEACHER["prefix"])
    teacher = build_teacher(num_classes=EMBED_DIM, checkpoint=str(checkpoint), **TEACHER)
    assert teacher(torch.randn(2, 3, 32, 32)).shape == (2, EMBED_DIM)


def test_unlabeled_dataset_drops_labels_and_stacks_views(tmp_path):
    _write_cifar100(tmp_path)
    inner = dict(type="CIFARClassification", data_root=str(tmp_path), num_classes=100)
    torch.manual_seed(0)
    one = DATASETS.build(dict(type="UnlabeledDataset", dataset=inner))
    assert len(one) == 64 and one.metainfo == {}
    sample = one[5]
    assert set(sample) == {"inputs", "index"} and sample["index"] == 5
    assert sample["inputs"].shape == (3, 32, 32)
    two = DATASETS.build(dict(type="UnlabeledDataset", dataset=inner, num_views=2))
    views = two[5]["inputs"]
    assert views.shape == (2, 3, 32, 32) and not torch.equal(views[0], views[1])
    with pytest.raises(ValueError, match="num_views"):
        DATASETS.build(dict(type="UnlabeledDataset", dataset=inner, num_views=0))


# ------------------------------------------------------------------ LNS weight in the classifier
def _lns_classifier(**kwargs):
    torch.manual_seed(0)
    backbone = dict(type="BinaryResNet", binarizer="lns", base_channels=8, stem="cifar")
    return MODELS.build(
        dict(type="BinaryImageClassifier", backbone=backbone, num_classes=4, **kwargs)
    ).train()


def test_lns_weight_adds_the_noisy_label_loss_and_zero_changes_nothing():
    inputs, label = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    plain = _lns_classifier().loss(inputs, label, None)
    zero = _lns_classifier(lns_weight=0.0).loss(inputs, label, None)
    assert set(plain) == set(zero) == {"loss_cls"}
    assert torch.equal(plain["loss_cls"], zero["loss_cls"])

    model = _lns_classifier(lns_weight=0.5)
    losses = model.loss(inputs, label, None)
    assert set(losses) == {"loss_cls", "loss_lns"}
    assert torch.equal(losses["loss_cls"], plain["loss_cls"])
    torch.testing.assert_close(losses["loss_lns"], 0.5 * lns_noisy_label_loss(model.backbone))
    assert losses["loss_lns"] > 0
    with pytest.raises(ValueError, match="binarizer='lns'"):
        MODELS.build(
            dict(
                type="BinaryImageClassifier",
                backbone=dict(type="BinaryResNet", base_channels=8),
                num_classes=4,
                lns_weight=1.0,
            )
        )


# ------------------------------------------------------------------ the method configs
@pytest.mark.parametrize("dataset", ["cifar100", "imagenet"])
@pytest.mark.parametrize("method", METHODS)
def test_method_configs_come_in_cmim_and_baseline_pairs(dataset, method):
    cmim = Config.fromfile(str(PRETRAIN / f"{dataset}_bin_r18_{method}_cmim.py"))
    baseline = Config.fromfile(str(PRETRAIN / f"{dataset}_bin_r18_{method}_baseline.py"))
    assert cmim.model.cmim_lambda > 0 and baseline.model.cmim_lambda == 0
    assert {**cmim.model.to_dict(), "cmim_lambda": 0.0} == baseline.model.to_dict()
    assert cmim.model.num_classes == (100 if dataset == "cifar100" else 1000)
    binarizer = cmim.model.backbone.binarizer
    assert (binarizer if isinstance(binarizer, str) else binarizer["type"]) == method
    hooks = [hook["type"] for hook in cmim.custom_hooks]
    assert hooks[:2] == ["BinarizerProgressHook", "NumClassesCheckHook"]
    assert ("RBNNRotationHook" in hooks) == (method == "rbnn")
    assert (cmim.model.get("lns_weight", 0) > 0) == (method == "lns")


def test_s2bnn_configs_are_label_free():
    cmim = Config.fromfile(str(PRETRAIN / "imagenet_bin_r18_s2bnn_cmim.py"))
    baseline = Config.fromfile(str(PRETRAIN / "imagenet_bin_r18_s2bnn_baseline.py"))
    assert cmim.model.type == "S2BNNClassifier" and cmim.model.cmim_lambda > 0
    assert baseline.model.cmim_lambda == 0
    assert cmim.model.teacher.checkpoint == "data/teachers/resnet50_ssl.pth"
    assert cmim.train_dataloader.dataset.type == "UnlabeledDataset"
    assert cmim.val_dataloader is None and cmim.default_hooks.checkpoint.save_best is None


def test_every_registered_binarizer_is_listed():
    assert set(METHODS) | set(SWAPPED) == set(list_binarizers())
