"""The synthetic NYUD-format generator: geometry, determinism, vocabulary, files, crops, preview."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from cmim_dense.evaluation.visualize import save_synth_preview
from cmim_dense.nyud_io import synth
from cmim_dense.nyud_io.classes import NYUD40_CLASSES
from cmim_dense.nyud_io.mat import LabeledMatReader, load_class_mapping, load_splits
from cmim_dense.nyud_io.synth.render import ray_cast
from cmim_dense.nyud_io.synth.scene import Box, Scene, SceneObject


def _empty_room(boxes=()) -> Scene:
    size = np.array([4.0, 3.0, 5.0])
    wall = SceneObject("wall", np.ones(3), np.ones(3), {"stripes": False, "period": 0.2})
    floor = SceneObject("floor", np.ones(3), np.ones(3), {"tiles": True, "width": 0.2})
    ceiling = SceneObject("ceiling", np.ones(3), np.ones(3), {"tiles": False})
    objects = [SceneObject("cabinet", np.ones(3), np.ones(3), {"rows": 2})]
    return Scene(size, objects, list(boxes), [wall, floor, ceiling], np.array([2, 2.9, 2]))


def test_ray_cast_depth_is_exact_plane_geometry() -> None:
    """Camera 1.5 m above the floor at z = 1, looking along +z: floor depth at image row v is
    1.5 * fx / (v + 0.5 - cy); the far wall (z = 5) is at depth 4; a box face at z = 3 at 2."""
    h, w, fx = 60, 80, 50.0
    pos = np.array([2.0, 1.5, 1.0])
    rot = np.diag([1.0, -1.0, 1.0])  # camera y points down
    box = Box(np.array([2.0, 1.5, 3.25]), np.array([0.3, 0.2, 0.25]), 0.0, 0)
    t, surface, _ = ray_cast(_empty_room([box]), pos, rot, fx, h, w)
    cy = h / 2
    for v in (45, 52, 59):
        want = 1.5 * fx / (v + 0.5 - cy)
        if want < 4.0:  # the floor is hit before the far wall
            assert surface[v, 40] == -3  # floor
            assert t[v, 40] == pytest.approx(want, rel=1e-5)
    assert surface[30, 40] == 0 and t[30, 40] == pytest.approx(2.0, rel=1e-6)
    assert surface[30, 20] == -6 and t[30, 20] == pytest.approx(4.0, rel=1e-6)  # wall z = 5
    assert surface[0, 40] in (-4, -6)  # ceiling or far wall above the box


def test_frames_are_deterministic_and_plausible() -> None:
    a, b = synth.render_frame(3, 5, (60, 80)), synth.render_frame(3, 5, (60, 80))
    for x, y in ((a.rgb, b.rgb), (a.depth, b.depth), (a.labels, b.labels)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.rgb, synth.render_frame(4, 5, (60, 80)).rgb)
    used = set(synth.RAW_IDS.values()) | {synth.VOID_ID}
    for i in range(6):
        f = synth.render_frame(0, i, (60, 80))
        assert f.rgb.shape == (60, 80, 3) and f.rgb.dtype == np.uint8
        assert f.depth.dtype == np.float32 and np.all(f.depth > 0.05) and np.all(f.depth < 10)
        np.testing.assert_array_equal(np.round(f.depth * 1000) / 1000, f.depth)  # whole mm
        assert set(np.unique(f.labels)) <= used
        assert synth.RAW_IDS["wall"] in f.labels


def test_colour_does_not_give_away_the_class() -> None:
    """Mean hue of each bed/cabinet/chair instance spreads over the colour wheel."""
    hues: dict[str, list[float]] = {"bed": [], "cabinet": [], "chair": []}
    for i in range(30):
        f = synth.render_frame(1, i, (60, 80))
        hsv = cv2.cvtColor(f.rgb, cv2.COLOR_RGB2HSV_FULL)
        for inst, cls in enumerate(f.objects):
            mask = f.instances == inst
            if cls in hues and mask.sum() > 30:
                angle = hsv[..., 0][mask].astype(float) / 256 * 2 * np.pi
                hues[cls].append(np.angle(np.exp(1j * angle).mean()))
    for cls, values in hues.items():
        assert len(values) >= 4, cls
        spread = np.abs(np.exp(1j * np.array(values)).mean())  # 1 = one hue, 0 = uniform
        assert spread < 0.8, (cls, spread)


def test_vocabulary_and_mapping() -> None:
    assert 8 <= len(synth.RAW_IDS) <= 10
    assert {"wall", "floor", "ceiling"} <= set(synth.RAW_IDS)
    names, mapping = synth.synth_names(), synth.synth_map_class()
    assert len(names) == len(mapping) == 894
    for cls, raw in synth.RAW_IDS.items():
        assert names[raw - 1] == cls and NYUD40_CLASSES[mapping[raw - 1] - 1] == cls


def test_generated_files_and_crops(tmp_path: Path) -> None:
    paths = synth.generate_synth_nyud(tmp_path, 8, 2, (48, 64), crop_size=16, progress=False)
    with h5py.File(paths.labeled, "r") as f:
        assert f["images"].shape == (8, 3, 64, 48) and f["labels"].dtype == np.uint16
    with LabeledMatReader(paths.labeled) as mat:
        assert mat.names == synth.synth_names()
        np.testing.assert_array_equal(mat.frame(6)[0], synth.render_frame(2, 6, (48, 64)).rgb)
    train, test = load_splits(paths.splits, 8)
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(1, 9))
    assert train.size == round(8 * 795 / 1449)
    assert scipy.io.loadmat(paths.splits)["testNdxs"].dtype == np.uint16
    np.testing.assert_array_equal(load_class_mapping(paths.mapping, 894), synth.synth_map_class())
    crops = sorted(paths.crops.glob("*/*/*.png"))
    assert crops and {p.parent.name for p in crops} <= set(synth.RAW_IDS)
    for p in crops:
        split, frame = p.parent.parent.name, int(p.stem.split("_")[0])
        assert frame in (train if split == "train" else test)
        assert cv2.imread(str(p)).shape == (16, 16, 3)


def test_first_frames_do_not_depend_on_the_frame_count(tmp_path: Path) -> None:
    small = synth.generate_synth_nyud(tmp_path / "a", 3, 5, (24, 32), 8, progress=False)
    large = synth.generate_synth_nyud(tmp_path / "b", 5, 5, (24, 32), 8, progress=False)
    with h5py.File(small.labeled, "r") as f, h5py.File(large.labeled, "r") as g:
        for key in ("images", "depths", "labels"):
            np.testing.assert_array_equal(f[key][()], g[key][:3])


def test_preview_png(tmp_path: Path) -> None:
    path = save_synth_preview(tmp_path / "p.png", seed=0, frames=2, size=(60, 80), width=80)
    image = cv2.imread(str(path))
    assert image.shape == (2 * 60, 3 * 80, 3)


def test_committed_preview_is_small() -> None:
    path = Path(__file__).resolve().parents[1] / "docs" / "synth_nyud_preview.png"
    assert path.is_file() and path.stat().st_size < 300 * 1024
