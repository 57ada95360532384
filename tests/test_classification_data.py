"""Classification datasets (ImageFolder, CIFAR pickles) and the top-k accuracy metric."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from _data_writers import cifar_batch, dump_cifar_pickle, write_cifar10
from mmengine.dataset import default_collate
from PIL import Image

import cmim_dense  # noqa: F401  (shims before mmseg)
from cmim_dense.datasets.classification import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFARClassification,
    ImageFolderClassification,
)
from cmim_dense.evaluation.classification import TopKAccuracy
from cmim_dense.registry import DATASETS, METRICS
from cmim_dense.utils.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COLOUR = (200, 100, 50)


def _write_image_folder(root: Path) -> None:
    """ImageNet layout: train/<wnid>/*.JPEG and *.png, val/<wnid>/ uniform-colour PNGs."""
    rng = np.random.default_rng(0)
    for wnid in ("n01440764", "n01443537"):
        (root / "train" / wnid).mkdir(parents=True)
        (root / "val" / wnid).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "train" / wnid / f"{wnid}_{i}.JPEG", "JPEG")
        Image.fromarray(pixels).save(root / "train" / wnid / "extra.png")
        (root / "train" / wnid / "notes.txt").write_text("not an image")
        Image.new("RGB", (40, 36), COLOUR).save(root / "val" / wnid / "ILSVRC2012_val_0.png")


def test_image_folder_train_and_val(tmp_path: Path):
    _write_image_folder(tmp_path)
    train = DATASETS.build(
        dict(type="ImageFolderClassification", data_root=str(tmp_path), img_size=32)
    )
    assert isinstance(train, ImageFolderClassification) and train.train
    assert len(train) == 6 and train.num_classes == 2
    assert train.classes == ("n01440764", "n01443537")
    assert train.metainfo == dict(classes=train.classes)
    sample = train[4]
    assert sample["inputs"].shape == (3, 32, 32) and sample["inputs"].dtype == torch.float32
    assert sample["label"] == 1 and sample["index"] == 4

    val = ImageFolderClassification(tmp_path, split="val", img_size=24)
    assert not val.train and len(val) == 2
    expected = (torch.tensor(COLOUR) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(
        IMAGENET_STD
    )
    out = val[1]["inputs"]
    assert out.shape == (3, 24, 24)
    torch.testing.assert_close(out, expected[:, None, None].expand(3, 24, 24), atol=1e-5, rtol=0)

    batch = default_collate([train[0], train[5], train[2]])
    assert batch["inputs"].shape == (3, 3, 32, 32)
    assert batch["label"].tolist() == [0, 1, 0] and batch["index"].tolist() == [0, 5, 2]


def test_image_folder_errors(tmp_path: Path):
    with pytest.raises(InputError, match="not found"):
        ImageFolderClassification(tmp_path / "missing")
    (tmp_path / "train").mkdir()
    with pytest.raises(InputError, match="class folder"):
        ImageFolderClassification(tmp_path)
    (tmp_path / "train" / "cls").mkdir()
    (tmp_path / "train" / "cls" / "a.txt").write_text("x")
    with pytest.raises(InputError, match="no valid file"):
        ImageFolderClassification(tmp_path)


def test_cifar10_from_official_folder(tmp_path: Path):
    batches = write_cifar10(tmp_path / "cifar-10-batches-py")
    train = DATASETS.build(dict(type="CIFARClassification", data_root=str(tmp_path)))
    assert len(train) == 10 and train.num_classes == 10 and train.classes[1] == "automobile"
    expected_labels = [y for i in range(1, 6) for y in batches[f"data_batch_{i}"][b"labels"]]
    assert [train[i]["label"] for i in range(10)] == expected_labels
    sample = train[7]
    assert sample["inputs"].shape == (3, 32, 32) and sample["index"] == 7

    test = CIFARClassification(tmp_path, split="test")
    assert len(test) == 3 and not test.train
    raw = batches["test_batch"][b"data"][2]
    out = test[2]["inputs"]
    # Row-major RGB planes: value of channel c, row y, column x is data[c * 1024 + y * 32 + x].
    for c, y, x in [(0, 0, 0), (1, 5, 31), (2, 31, 7)]:
        value = raw[c * 1024 + y * 32 + x] / 255
        assert out[c, y, x].item() == pytest.approx(
            (value - CIFAR10_MEAN[c]) / CIFAR10_STD[c], abs=1e-5
        )
    planes = torch.from_numpy(raw.reshape(3, 32, 32)).float() / 255
    mean, std = torch.tensor(CIFAR10_MEAN)[:, None, None], torch.tensor(CIFAR10_STD)[:, None, None]
    torch.testing.assert_close(out, (planes - mean) / std)


def test_cifar10_train_augmentation_keeps_pixels(tmp_path: Path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    train = CIFARClassification(tmp_path)
    raw = train.images[0].float() / 255
    mean, std = torch.tensor(CIFAR10_MEAN)[:, None, None], torch.tensor(CIFAR10_STD)[:, None, None]
    allowed = torch.cat([((raw - mean) / std).flatten(), ((0 - mean) / std).flatten()])
    torch.manual_seed(0)
    for _ in range(3):
        out = train[0]["inputs"]
        assert out.shape == (3, 32, 32)
        # A crop of the zero-padded image, maybe flipped: every value is a source pixel or pad.
        assert torch.isin(out.flatten().round(decimals=4), allowed.round(decimals=4)).all()


def test_cifar100_files_in_root(tmp_path: Path):
    rng = np.random.default_rng(1)
    train = cifar_batch(rng, 5, 100, b"fine_labels")
    train[b"coarse_labels"] = [0] * 5
    dump_cifar_pickle(tmp_path / "train", train)
    dump_cifar_pickle(tmp_path / "test", cifar_batch(rng, 4, 100, b"fine_labels"))
    dump_cifar_pickle(
        tmp_path / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)]}
    )
    ds = CIFARClassification(tmp_path, num_classes=100, split="train")
    assert len(ds) == 5 and ds.num_classes == 100 and ds.classes[42] == "c42"
    assert [ds[i]["label"] for i in range(5)] == train[b"fine_labels"]
    test = CIFARClassification(tmp_path, num_classes=100, split="test")
    raw = test.images[3, 1, 10, 20].item() / 255
    assert test[3]["inputs"][1, 10, 20].item() == pytest.approx(
        (raw - CIFAR100_MEAN[1]) / CIFAR100_STD[1], abs=1e-5
    )


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_cifar_errors(tmp_path: Path):
    with pytest.raises(InputError, match="data_root not found"):
        CIFARClassification(tmp_path / "missing")
    with pytest.raises(InputError, match="data_batch_1"):
        CIFARClassification(tmp_path)
    with pytest.raises(ValueError, match="num_classes"):
        CIFARClassification(tmp_path, num_classes=7)
    (tmp_path / "test_batch").write_bytes(b"\x80\x02}q\x00(garbage")
    with pytest.raises(ValueError, match="corrupt CIFAR pickle"):
        CIFARClassification(tmp_path, split="test")
    dump_cifar_pickle(tmp_path / "test_batch", {b"data": _Exploit(), b"labels": [0]})
    with pytest.raises(ValueError, match="forbidden global"):
        CIFARClassification(tmp_path, split="test")
    dump_cifar_pickle(
        tmp_path / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    )
    with pytest.raises(ValueError, match="3072"):
        CIFARClassification(tmp_path, split="test")


def test_topk_accuracy_hand_logits():
    metric = METRICS.build(dict(type="TopKAccuracy"))
    assert isinstance(metric, TopKAccuracy)
    logits = torch.tensor(
        [
            [0.1, 3.0, 0.2, 0.3, 0.4, 0.5],  # label 1 is the arg max: top-1 and top-5
            [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 3 ranks 4th: top-5 only
            [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 5 ranks 6th: neither
        ]
    )
    labels = [torch.tensor(1), 3, torch.tensor([5])]
    metric.process(
        {}, [dict(pred_logits=lg, gt_label=lb) for lg, lb in zip(logits[:2], labels[:2])]
    )
    metric.process({}, [dict(pred_logits=logits[2], gt_label=labels[2])])
    result = metric.evaluate(3)
    assert result["top1"] == pytest.approx(100 / 3) and result["top5"] == pytest.approx(200 / 3)
    small = TopKAccuracy(topk=(1, 5))
    small.process({}, [dict(pred_logits=torch.tensor([0.0, 1.0]), gt_label=0)])
    assert small.evaluate(1) == {"top1": 0.0, "top5": 100.0}
    with pytest.raises(ValueError, match="outside"):
        small.process({}, [dict(pred_logits=torch.tensor([0.0, 1.0]), gt_label=2)])
