"""The official NYUD-v2 .mat formats: orientation, writer layout, and the real metadata files."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from cmim_dense.nyud_io.classes import NYUD13_CLASSES, NYUD13_FROM_40, NYUD40_CLASSES
from cmim_dense.nyud_io.convert import prepare_nyud
from cmim_dense.nyud_io.mat import (
    LabeledMatReader,
    LabeledMatWriter,
    load_class13_mapping,
    load_class_mapping,
    load_splits,
    write_class_mapping_mat,
    write_splits_mat,
)


def _meta_dir() -> Path:
    env = os.environ.get("NYUD_META_DIR")
    return (
        Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "nyud_meta"
    )


META = _meta_dir()
needs_meta = pytest.mark.skipif(
    not (META / "splits.mat").is_file(),
    reason=f"real NYUD-v2 metadata not found in {META} (set NYUD_META_DIR)",
)

N, H, W, K = 3, 4, 6, 30  # H != W so a transposition cannot go unnoticed


def _rgb(n: int, y: int, x: int, c: int) -> int:
    return 60 * c + 10 * y + x + n


def _depth_m(n: int, y: int, x: int) -> float:
    return 1.0 + 0.1 * y + 0.01 * x + n


def _label(y: int, x: int) -> int:
    return 1 + (y * W + x) % K


def _write_handmade_v73(path: Path) -> None:
    """A tiny labelled file written element by element in MATLAB's column-major layout, i.e. the
    h5py index of MATLAB's images(y, x, c, n) is [n, c, x, y] -- independent of our writer."""
    images = np.zeros((N, 3, W, H), dtype=np.uint8)
    depths = np.zeros((N, W, H), dtype=np.float32)
    labels = np.zeros((N, W, H), dtype=np.uint16)
    for n in range(N):
        for y in range(H):
            for x in range(W):
                depths[n, x, y] = _depth_m(n, y, x)
                labels[n, x, y] = _label(y, x)
                for c in range(3):
                    images[n, c, x, y] = _rgb(n, y, x, c)
    with h5py.File(path, "w") as f:
        f["images"], f["depths"], f["labels"] = images, depths, labels
        refs = []
        for k in range(K):
            refs.append(f.create_dataset(f"#refs#/{k}", data=np.array([[ord("a") + k % 26]])).ref)
        f.create_dataset("names", data=np.array([refs], dtype=h5py.ref_dtype))


def test_handmade_v73_orientation(tmp_path: Path) -> None:
    labeled = tmp_path / "labeled.mat"
    _write_handmade_v73(labeled)
    write_splits_mat(tmp_path / "splits.mat", [1, 3], [2])
    map_class = (np.arange(K) % 40) + 1
    write_class_mapping_mat(tmp_path / "map.mat", map_class, NYUD40_CLASSES)

    with LabeledMatReader(labeled) as mat:
        assert (mat.num_frames, mat.height, mat.width) == (N, H, W)
        rgb, depth, label = mat.frame(2)
    assert rgb.shape == (H, W, 3) and depth.shape == (H, W) and label.shape == (H, W)
    assert rgb[1, 4, 2] == _rgb(2, 1, 4, 2) and rgb[3, 0, 0] == _rgb(2, 3, 0, 0)

    prepare_nyud(
        labeled, tmp_path / "splits.mat", tmp_path / "map.mat", tmp_path / "out", progress=False
    )
    out = tmp_path / "out"
    for idx, split in ((1, "train"), (2, "test"), (3, "train")):
        n = idx - 1
        img = cv2.imread(str(out / "images" / split / f"{idx:04d}.png"), cv2.IMREAD_UNCHANGED)
        ann = cv2.imread(str(out / "annotations" / split / f"{idx:04d}.png"), cv2.IMREAD_UNCHANGED)
        dep = cv2.imread(str(out / "depth" / split / f"{idx:04d}.png"), cv2.IMREAD_UNCHANGED)
        assert img.shape == (H, W, 3) and ann.shape == (H, W) and dep.shape == (H, W)
        assert dep.dtype == np.uint16 and ann.dtype == np.uint8
        for y, x in ((0, 0), (0, W - 1), (H - 1, 0), (2, 5), (3, 1)):
            assert tuple(img[y, x, ::-1]) == tuple(_rgb(n, y, x, c) for c in range(3))  # BGR file
            assert dep[y, x] == round(_depth_m(n, y, x) * 1000)
            assert ann[y, x] == map_class[_label(y, x) - 1] - 1


def test_writer_layout_matches_matlab_v73(tmp_path: Path) -> None:
    path = tmp_path / "w.mat"
    rgb = np.arange(H * W * 3, dtype=np.uint8).reshape(H, W, 3)
    depth = np.linspace(0.5, 4, H * W, dtype=np.float32).reshape(H, W)
    labels = np.arange(H * W, dtype=np.uint16).reshape(H, W) % 3
    with LabeledMatWriter(path, 2, H, W, ["wall", "floor", "x"]) as writer:
        writer.write(1, rgb, depth, labels)
    with pytest.raises(NotImplementedError, match=r"v7\.3"):  # scipy reads the MATLAB header
        scipy.io.loadmat(path)
    with h5py.File(path, "r") as f:
        assert f["images"].shape == (2, 3, W, H) and f["images"].dtype == np.uint8
        assert f["depths"].shape == (2, W, H) and f["depths"].dtype == np.float32
        assert f["labels"].shape == (2, W, H) and f["labels"].dtype == np.uint16
        assert f["images"].attrs["MATLAB_class"] == b"uint8"
        assert f["images"][1, 2, 5, 3] == rgb[3, 5, 2]
        assert f["depths"][1, 4, 1] == depth[1, 4]
    with LabeledMatReader(path) as mat:
        assert mat.names == ["wall", "floor", "x"]
        got = mat.frame(1)
    np.testing.assert_array_equal(got[0], rgb)
    np.testing.assert_array_equal(got[1], depth)
    np.testing.assert_array_equal(got[2], labels)


def test_splits_in_v73_format_load_like_v5(tmp_path: Path) -> None:
    path = tmp_path / "splits73.mat"
    with h5py.File(path, "w") as f:  # MATLAB v7.3 stores a (n, 1) column as (1, n)
        f["trainNdxs"] = np.array([[4, 1, 2]], dtype=np.float64)
        f["testNdxs"] = np.array([[3]], dtype=np.float64)
    train, test = load_splits(path, 4)
    assert train.tolist() == [1, 2, 4] and test.tolist() == [3]


@needs_meta
def test_real_splits() -> None:
    train, test = load_splits(META / "splits.mat", 1449)
    assert train.size == 795 and test.size == 654
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(1, 1450))
    raw = scipy.io.loadmat(META / "splits.mat")
    assert raw["trainNdxs"].shape == (795, 1) and raw["trainNdxs"].min() == train.min()


@needs_meta
def test_real_class_mapping() -> None:
    mapping = load_class_mapping(META / "classMapping40.mat", 894)
    assert mapping.shape == (894,) and mapping.min() == 1 and mapping.max() == 40
    raw = scipy.io.loadmat(META / "classMapping40.mat")
    names = tuple(str(c[0]) for c in raw["className"].ravel())
    assert names == NYUD40_CLASSES
    all_names = [str(c[0]) for c in raw["allClassName"].ravel()]
    assert NYUD40_CLASSES[mapping[all_names.index("bed")] - 1] == "bed"


@needs_meta
def test_real_class13_mapping() -> None:
    labels13 = load_class13_mapping(META / "class13Mapping.mat")
    assert tuple(labels13) == NYUD13_FROM_40
    raw = scipy.io.loadmat(META / "class13Mapping.mat")["classMapping13"]
    assert tuple(str(c[0]) for c in raw["classNames"][0, 0].ravel()) == NYUD13_CLASSES
