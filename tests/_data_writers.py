"""Writers of tiny classification datasets in the exact on-disk formats of the real ones.

* CIFAR python pickles (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``,
  ``batches.meta``): protocol-2 pickles with byte-string keys whose ``data`` is uint8
  (N, 3072), the R, G and B 32x32 planes row-major.
* ImageNet ImageFolder layout: ``<root>/<split>/<class>/<image>.png``.

``pattern_images`` draws class-dependent images (a class colour plus stripes whose
orientation depends on the class, and noise) so that a tiny network can learn them.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def dump_cifar_pickle(path: Path, obj: dict) -> None:
    """Write like the originals: protocol-2 pickles with byte-string keys, whose arrays name
    numpy 1's ``numpy.core.multiarray._reconstruct`` (numpy 2 writes ``numpy._core``)."""
    blob = pickle.dumps(obj, protocol=2)
    path.write_bytes(blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))


def pattern_images(labels: list[int], size: int, rng: np.random.Generator) -> np.ndarray:
    """Learnable images: (N, size, size, 3) uint8, one colour and stripe direction per class."""
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        colour = np.array([(label * 97) % 256, (label * 53 + 80) % 256, (label * 151 + 160) % 256])
        stripes = ((xx if label % 2 else yy) // 4 + label // 2) % 2
        image = colour * (0.5 + 0.5 * stripes[..., None]) + rng.normal(0, 12, (size, size, 3))
        out[i] = np.clip(image, 0, 255).astype(np.uint8)
    return out


def cifar_batch(
    rng: np.random.Generator,
    n: int,
    num_classes: int,
    label_key: bytes,
    learnable: bool = False,
) -> dict:
    """One CIFAR batch dict; random pixels, or :func:`pattern_images` when ``learnable``."""
    labels = rng.integers(0, num_classes, n).tolist()
    if learnable:
        data = pattern_images(labels, 32, rng).transpose(0, 3, 1, 2).reshape(n, 3072)
    else:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return {
        b"batch_label": b"batch",
        label_key: labels,
        b"data": data,
        b"filenames": [b"x.png"] * n,
    }


def write_cifar10(
    root: Path, per_batch: int = 2, num_test: int = 3, learnable: bool = False, seed: int = 0
) -> dict[str, dict]:
    """The five training batches, ``test_batch`` and ``batches.meta`` in ``root``.

    Returns the written batch dicts by file name.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = num_test if name == "test_batch" else per_batch
        batches[name] = cifar_batch(rng, n, 10, b"labels", learnable)
        dump_cifar_pickle(root / name, batches[name])
    names = [n.encode() for n in CIFAR10_NAMES]
    dump_cifar_pickle(root / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return batches


def write_pattern_folder(
    root: Path,
    num_classes: int = 4,
    per_class: dict[str, int] | None = None,
    size: int = 32,
    seed: int = 0,
) -> list[str]:
    """``root/<split>/class_<c>/<i>.png`` of :func:`pattern_images`; returns the class names.

    ``per_class``: images per class of each split (default 8 train, 4 val).
    """
    rng = np.random.default_rng(seed)
    classes = [f"class_{c}" for c in range(num_classes)]
    for split, n in (per_class or dict(train=8, val=4)).items():
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, pixels in enumerate(pattern_images([c] * n, size, rng)):
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return classes
