"""Bad input to tools/prepare_nyud.py: one clear ``error:`` line naming the file, exit code 2,
and no output (or temporary folder) left behind. Also: no-op rerun, --force (which replaces
only a tree the tool stamped), --check."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from cmim_dense.nyud_io import convert as prepare
from cmim_dense.nyud_io.mat import NYUDFormatError, write_class_mapping_mat, write_splits_mat
from cmim_dense.nyud_io.synth import generate_synth_nyud
from cmim_dense.utils.errors import InputError

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "prepare_nyud.py"
FRAMES = 6


def _load_tool():
    spec = importlib.util.spec_from_file_location("prepare_nyud_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return generate_synth_nyud(
        tmp_path_factory.mktemp("raw"), FRAMES, 0, (24, 32), crop_size=8, progress=False
    )


def _args(labeled, splits, mapping, out, *extra) -> list[str]:
    files = ["--labeled", str(labeled), "--splits", str(splits), "--mapping", str(mapping)]
    return [*files, "--out", str(out), "--quiet", *extra]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def _expect_error(capsys, argv, watch: Path, *needles: str) -> str:
    """Run the tool, expect exit 2 and one error line with ``needles``, and nothing new (or
    removed) anywhere under ``watch``."""
    before = set(watch.rglob("*"))
    assert tool.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    assert set(watch.rglob("*")) == before, "output left behind"
    return err


def _copy_h5(src: Path, dst: Path, drop: str = "", replace: dict | None = None) -> Path:
    """A copy of ``src`` without ``drop`` and with datasets replaced (edited in place, so the
    object references of ``names`` stay valid)."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        if drop:
            del f[drop]
        for key, value in (replace or {}).items():
            del f[key]
            f[key] = value
    return dst


def test_missing_file(raw, tmp_path, capsys) -> None:
    missing = tmp_path / "nope.mat"
    out = tmp_path / "out"
    _expect_error(
        capsys, _args(missing, raw.splits, raw.mapping, out), tmp_path, str(missing), "not found"
    )
    _expect_error(capsys, _args(raw.labeled, missing, raw.mapping, out), tmp_path, "nope.mat")
    _expect_error(capsys, _args(raw.labeled, raw.splits, missing, out), tmp_path, "nope.mat")
    assert not out.exists()


def test_not_hdf5(raw, tmp_path, capsys) -> None:
    junk = tmp_path / "junk.mat"
    junk.write_text("this is not a mat file\n")
    out = tmp_path / "out"
    _expect_error(capsys, _args(junk, raw.splits, raw.mapping, out), tmp_path, "junk.mat", "HDF5")
    _expect_error(capsys, _args(raw.labeled, junk, raw.mapping, out), tmp_path, "junk.mat")


def test_truncated_hdf5(raw, tmp_path, capsys) -> None:
    cut = tmp_path / "cut.mat"
    data = raw.labeled.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    _expect_error(
        capsys, _args(cut, raw.splits, raw.mapping, out), tmp_path, "cut.mat", "truncated"
    )


@pytest.mark.parametrize("key", ["images", "depths", "labels", "names"])
def test_missing_key(raw, tmp_path, capsys, key) -> None:
    bad = _copy_h5(raw.labeled, tmp_path / "bad.mat", drop=key)
    out = tmp_path / "out"
    _expect_error(capsys, _args(bad, raw.splits, raw.mapping, out), tmp_path, "bad.mat", f"'{key}'")


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("images", np.zeros((FRAMES, 32, 24), np.uint8), "'images'"),  # no channel axis
        ("images", np.zeros((FRAMES, 3, 32, 24), np.float32), "uint8"),
        ("depths", np.zeros((FRAMES, 24, 32), np.float32), "'depths'"),  # H and W swapped
        ("labels", np.zeros((FRAMES, 32, 24), np.float32), "integer"),
        ("depths", np.zeros((FRAMES - 1, 32, 24), np.float32), "'depths'"),  # N differs
    ],
)
def test_wrong_dims_or_dtype(raw, tmp_path, capsys, key, value, needle) -> None:
    bad = _copy_h5(raw.labeled, tmp_path / "bad.mat", replace={key: value})
    out = tmp_path / "out"
    _expect_error(capsys, _args(bad, raw.splits, raw.mapping, out), tmp_path, "bad.mat", needle)


@pytest.mark.parametrize(
    ("train", "test", "needle"),
    [
        ([1, 2, 7], [3, 4], "outside 1..6"),
        ([0, 1], [3, 4], "outside 1..6"),
        ([1, 2, 3], [3, 4], "share 1 frame"),
        ([1, 1, 2], [3, 4], "repeats"),
    ],
)
def test_bad_splits(raw, tmp_path, capsys, train, test, needle) -> None:
    splits = tmp_path / "splits.mat"
    write_splits_mat(splits, train, test)
    out = tmp_path / "out"
    _expect_error(
        capsys, _args(raw.labeled, splits, raw.mapping, out), tmp_path, "splits.mat", needle
    )


def test_mapping_length_mismatch(raw, tmp_path, capsys) -> None:
    mapping = tmp_path / "map.mat"
    write_class_mapping_mat(mapping, np.ones(893, np.uint8), ["wall"] * 40)
    out = tmp_path / "out"
    _expect_error(
        capsys, _args(raw.labeled, raw.splits, mapping, out), tmp_path, "map.mat", "893", "894"
    )


def test_label_id_beyond_names_fails_midway_and_cleans_up(raw, tmp_path, capsys) -> None:
    with h5py.File(raw.labeled, "r") as f:
        labels = f["labels"][()]
    labels[FRAMES - 1, 0, 0] = 1000  # last frame: the conversion is well under way
    bad = _copy_h5(raw.labeled, tmp_path / "bad.mat", replace={"labels": labels})
    out = tmp_path / "out"
    _expect_error(capsys, _args(bad, raw.splits, raw.mapping, out), tmp_path, "bad.mat", "1000")
    assert not out.exists() and _leftovers(tmp_path) == []


def test_interrupt_leaves_nothing(raw, tmp_path, monkeypatch, capsys) -> None:
    calls = []

    def flaky_imwrite(path, image):
        calls.append(path)
        if len(calls) == 7:
            raise KeyboardInterrupt
        cv2.imwrite(str(path), image)

    monkeypatch.setattr(prepare, "_imwrite", flaky_imwrite)
    out = tmp_path / "out"
    assert tool.main(_args(raw.labeled, raw.splits, raw.mapping, out)) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_output_not_writable(raw, tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    out = blocker / "nyud"
    _expect_error(
        capsys, _args(raw.labeled, raw.splits, raw.mapping, out), tmp_path, "not writable"
    )
    assert blocker.read_text().startswith("a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_output_parent_read_only(raw, tmp_path, capsys) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        out = parent / "nyud"
        _expect_error(
            capsys, _args(raw.labeled, raw.splits, raw.mapping, out), tmp_path, "not writable"
        )
    finally:
        parent.chmod(0o755)


def test_existing_partial_output_is_refused_and_kept(raw, tmp_path, capsys) -> None:
    """A partial tree without the stamp is not ours: refused, with or without --force."""
    out = tmp_path / "out"
    (out / "images" / "train").mkdir(parents=True)
    (out / "images" / "train" / "0001.png").write_bytes(b"half")
    for extra in ((), ("--force",)):
        _expect_error(
            capsys,
            _args(raw.labeled, raw.splits, raw.mapping, out, *extra),
            tmp_path,
            str(out),
            "not a tree written by prepare_nyud",
        )
    assert (out / "images" / "train" / "0001.png").read_bytes() == b"half"


@pytest.mark.parametrize("foreign", ["file_inside", "other_stamp", "file_at_out"])
def test_force_refuses_foreign_output(raw, tmp_path, capsys, foreign) -> None:
    out = tmp_path / "out"
    if foreign == "file_at_out":
        out.write_text("my notes")
        keep = out
    else:
        out.mkdir()
        keep = out / ("notes.txt" if foreign == "file_inside" else prepare.INFO_FILE)
        keep.write_text('{"format": "someone-else/1"}')
    text = keep.read_text()
    err = _expect_error(
        capsys,
        _args(raw.labeled, raw.splits, raw.mapping, out, "--force"),
        tmp_path,
        str(out),
        "even with --force",
    )
    assert err.startswith(f"error: {out}: ")
    assert keep.read_text() == text and _leftovers(tmp_path) == []


def test_force_rebuilds_stamped_partial_tree(raw, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert tool.main(_args(raw.labeled, raw.splits, raw.mapping, out)) == 0
    lost = sorted((out / "depth" / "test").iterdir())
    for path in lost:
        path.unlink()
    (out / "images" / "extra.txt").write_text("left by a crash")
    _expect_error(
        capsys, _args(raw.labeled, raw.splits, raw.mapping, out), tmp_path, "partial", "--force"
    )
    assert tool.main(_args(raw.labeled, raw.splits, raw.mapping, out, "--force")) == 0
    assert tool.main(["--check", str(out)]) == 0
    assert sorted((out / "depth" / "test").iterdir()) == lost
    assert not (out / "images" / "extra.txt").exists() and _leftovers(tmp_path) == []


def test_force_into_empty_folder(raw, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert tool.main(_args(raw.labeled, raw.splits, raw.mapping, out, "--force")) == 0
    assert tool.main(["--check", str(out)]) == 0


def test_output_filled_during_conversion_is_kept(raw, tmp_path, monkeypatch, capsys) -> None:
    """OUT is checked again before the swap: a folder that appeared meanwhile is not replaced."""
    out = tmp_path / "out"
    convert = prepare._convert

    def convert_then_someone_writes(*args, **kwargs):
        convert(*args, **kwargs)
        out.mkdir()
        (out / "notes.txt").write_text("mine")

    monkeypatch.setattr(prepare, "_convert", convert_then_someone_writes)
    assert tool.main(_args(raw.labeled, raw.splits, raw.mapping, out, "--force")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {out}: not empty") and "\n" not in err, err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert _leftovers(tmp_path) == []


def test_format_error_is_the_project_input_error() -> None:
    assert issubclass(NYUDFormatError, InputError)


def test_rerun_is_noop_and_force_rebuilds(raw, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert tool.main(_args(raw.labeled, raw.splits, raw.mapping, out)) == 0
    probe = next((out / "depth" / "train").iterdir())
    stamp = probe.stat().st_mtime_ns
    os.utime(probe, ns=(stamp - 10**9, stamp - 10**9))
    assert tool.main(_args(raw.labeled, raw.splits, raw.mapping, out)) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert probe.stat().st_mtime_ns == stamp - 10**9  # untouched
    assert tool.main(_args(raw.labeled, raw.splits, raw.mapping, out, "--force")) == 0
    assert probe.stat().st_mtime_ns != stamp - 10**9
    err = _expect_error(
        capsys, _args(raw.labeled, raw.splits, raw.mapping, out, "--classes", "13"), tmp_path, "40"
    )
    assert "--force" in err


def test_check_detects_damage(raw, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert tool.main(_args(raw.labeled, raw.splits, raw.mapping, out)) == 0
    assert tool.main(["--check", str(out)]) == 0
    capsys.readouterr()
    ann = next((out / "annotations" / "test").iterdir())
    cv2.imwrite(str(ann), np.full((24, 32), 77, np.uint8))
    assert tool.main(["--check", str(out)]) == 2
    assert f"error: {ann}: class id 77" in capsys.readouterr().err
    next((out / "depth" / "train").iterdir()).unlink()
    assert tool.main(["--check", str(out)]) == 2
    assert "do not match" in capsys.readouterr().err


def test_cli_exit_code_and_message(tmp_path) -> None:
    missing = tmp_path / "missing.mat"
    argv = _args(missing, missing, missing, tmp_path / "out")
    proc = subprocess.run(
        [sys.executable, str(TOOL), *argv], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {missing}: file not found"
    assert not (tmp_path / "out").exists()
