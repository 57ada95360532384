"""Classification datasets for pretraining: ImageNet-style folders and the CIFAR pickles.

Nothing is downloaded: the files must already be on disk. Every sample is
``dict(inputs=FloatTensor[3, H, W] (normalised), label=int, index=int)``, where ``index`` is
the dataset index (the CMIM memory bank needs it). Batch with mmengine's ``default_collate``
(``collate_fn=dict(type='default_collate')``) to get ``inputs (B, 3, H, W)``, ``label (B,)``,
``index (B,)``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms import v2

from cmim_dense.registry import DATASETS
from cmim_dense.utils.errors import InputError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_CIFAR_LAYOUT = {
    # num_classes: (folder, train files, test files, label key, meta file, class-name key)
    10: (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
        "batches.meta",
        "label_names",
    ),
    100: ("cifar-100-python", ["train"], ["test"], "fine_labels", "meta", "fine_label_names"),
}


def _check_split(split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise InputError(f"split must be one of {allowed}, got {split!r}")


class _ClassificationBase(Dataset):
    """Shared ``classes``/``num_classes``/``metainfo`` (mmengine loops read ``metainfo``)."""

    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def metainfo(self) -> dict:
        return dict(classes=self.classes)


@DATASETS.register_module()
class ImageFolderClassification(_ClassificationBase):
    """ImageNet ImageFolder layout: ``<data_root>/<split>/<class>/<image>``.

    Any of torchvision's image extensions counts (case-insensitive: ``.JPEG`` too); classes
    are the sorted sub-folder names. Works for ImageNet (``train``/``val`` with wnid folders)
    and for the synthetic object crops (``crops/{train,val}/<class>/*.png``, small img_size).

    Augmentation is timm's ``create_transform``: RandomResizedCrop + horizontal flip for
    training (no colour jitter, the BNN recipes do not use it), resize to img_size / crop_pct
    then center crop for evaluation, ImageNet mean/std.

    Args:
        data_root: folder holding the split folders.
        split: sub-folder name, e.g. ``'train'`` or ``'val'``.
        img_size: output side in pixels.
        train: training augmentation; None means ``split == 'train'``.
        crop_pct: evaluation center-crop fraction (timm default 0.875).
        color_jitter: timm colour-jitter strength for training (None: off).
        scale: RandomResizedCrop area range for training (ImageNet default (0.08, 1); small
            object crops keep more, e.g. (0.5, 1)).
    """

    def __init__(
        self,
        data_root: str | os.PathLike,
        split: str = "train",
        img_size: int = 224,
        train: bool | None = None,
        crop_pct: float = 0.875,
        color_jitter: float | None = None,
        scale: tuple[float, float] = (0.08, 1.0),
    ):
        root = Path(data_root) / split
        if not root.is_dir():
            raise InputError(f"image folder split not found: {root}")
        try:  # torchvision reports an empty tree or class folder as FileNotFoundError
            classes, class_to_idx = find_classes(root)
            self.samples = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS)
        except FileNotFoundError as err:
            raise InputError(f"{root}: {err}") from err
        self.classes = tuple(classes)
        self.split = split
        self.train = split == "train" if train is None else train
        self.transform = create_transform(
            img_size,
            is_training=self.train,
            color_jitter=color_jitter,
            crop_pct=crop_pct,
            scale=tuple(scale),
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except (OSError, SyntaxError) as err:  # PIL: UnidentifiedImageError, truncated files
            raise InputError(f"{path}: not a readable image ({err})") from err
        return dict(inputs=self.transform(image), label=label, index=index)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays, so a data file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        return super().find_class(module, name)


def _load_cifar_pickle(path: Path) -> dict:
    """One CIFAR python batch as a dict with str keys (the files are Python 2 pickles)."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise InputError(f"corrupt CIFAR pickle {path}: {e}") from e
    if not isinstance(obj, dict):
        raise InputError(f"corrupt CIFAR pickle {path}: expected a dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


@DATASETS.register_module()
class CIFARClassification(_ClassificationBase):
    """CIFAR-10/100 from the official python pickles.

    Files are looked up in ``<data_root>/cifar-10-batches-py`` (``cifar-100-python``) and,
    failing that, directly in ``data_root``. CIFAR-10 reads ``data_batch_1..5``/``test_batch``
    with ``labels``; CIFAR-100 ``train``/``test`` with ``fine_labels``. ``data`` is uint8
    (N, 3072): the R, G and B 32x32 planes, row-major. Class names come from the meta file
    when present, else ``'0'..'C-1'``.

    Training augmentation: random crop 32 with 4 px zero padding + horizontal flip; both splits
    normalise with the CIFAR mean/std of the chosen dataset.

    Args:
        data_root: folder holding the pickles or their official folder.
        num_classes: 10 or 100.
        split: ``'train'`` or ``'test'``.
        train: training augmentation; None means ``split == 'train'``.
    """

    def __init__(
        self,
        data_root: str | os.PathLike,
        num_classes: int = 10,
        split: str = "train",
        train: bool | None = None,
    ):
        if num_classes not in _CIFAR_LAYOUT:
            raise InputError(f"num_classes must be 10 or 100, got {num_classes}")
        _check_split(split, ("train", "test"))
        folder, train_files, test_files, label_key, meta_file, names_key = _CIFAR_LAYOUT[
            num_classes
        ]
        root = Path(data_root)
        if not root.is_dir():
            raise InputError(f"CIFAR data_root not found: {root}")
        if (root / folder).is_dir():
            root = root / folder
        files = [root / name for name in (train_files if split == "train" else test_files)]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise InputError(f"CIFAR-{num_classes} files {missing} not found in {root}")

        images, labels = [], []
        for path in files:
            batch = _load_cifar_pickle(path)
            if "data" not in batch or label_key not in batch:
                raise InputError(
                    f"corrupt CIFAR pickle {path}: needs keys 'data' and {label_key!r}"
                )
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072 or len(batch[label_key]) != len(data):
                raise InputError(
                    f"corrupt CIFAR pickle {path}: data {data.shape} with "
                    f"{len(batch[label_key])} labels, expected (N, 3072) and N labels"
                )
            images.append(data.reshape(-1, 3, 32, 32))
            labels.extend(int(label) for label in batch[label_key])
        self.images = torch.from_numpy(np.concatenate(images))  # (N, 3, 32, 32) uint8
        self.labels = labels
        if max(labels) >= num_classes or min(labels) < 0:
            raise InputError(f"CIFAR-{num_classes} labels outside [0, {num_classes}) in {root}")
        self.classes = self._class_names(root / meta_file, names_key, num_classes)
        self.split = split
        self.train = split == "train" if train is None else train
        mean, std = (
            (CIFAR10_MEAN, CIFAR10_STD) if num_classes == 10 else (CIFAR100_MEAN, CIFAR100_STD)
        )
        augment = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if self.train else []
        self.transform = v2.Compose(
            [*augment, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
        )

    @staticmethod
    def _class_names(meta: Path, key: str, num_classes: int) -> tuple[str, ...]:
        if meta.is_file():
            names = _load_cifar_pickle(meta).get(key)
            if names is not None and len(names) == num_classes:
                return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
        return tuple(str(i) for i in range(num_classes))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return dict(
            inputs=self.transform(self.images[index]), label=self.labels[index], index=index
        )
