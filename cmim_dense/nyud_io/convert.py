"""Convert the official NYUD-v2 labelled file into the image/annotation/depth tree mmseg reads.

Output (``<idx>`` is the 1-based NYUD frame number, as in ``splits.mat``)::

    OUT/images/{train,test}/<idx:04d>.png       RGB uint8 (PNG: lossless, the round trip is exact)
    OUT/annotations/{train,test}/<idx:04d>.png  uint8 class id 0..C-1, 255 = void
    OUT/depth/{train,test}/<idx:04d>.png        uint16 millimetres, 0 = invalid
    OUT/nyud_info.json                          what was converted; the stamp that the completeness
                                                check and --force look for

The tree is built in a hidden temporary folder beside OUT and renamed into place at the end, so a
crash or Ctrl-C leaves nothing half-written.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cmim_dense.nyud_io.classes import NYUD13_CLASSES, NYUD40_CLASSES
from cmim_dense.nyud_io.mat import (
    LabeledMatReader,
    NYUDFormatError,
    load_class13_mapping,
    load_class_mapping,
    load_splits,
)
from cmim_dense.utils.io import partial_path, replace_dir
from cmim_dense.utils.progress import progress_bar

INFO_FILE = "nyud_info.json"
INFO_FORMAT = "cmim_dense.nyud/1"
SPLITS = ("train", "test")
KINDS = ("images", "annotations", "depth")
VOID = 255
MAX_DEPTH_M = np.iinfo(np.uint16).max / 1000.0


@dataclass
class PrepareResult:
    """What :func:`prepare_nyud` did: ``counts`` per split; ``skipped`` if OUT was already done."""

    out: Path
    counts: dict[str, int] = field(default_factory=dict)
    skipped: bool = False
    seconds: float = 0.0


def class_lut(map_class: np.ndarray, labels13: np.ndarray | None = None) -> np.ndarray:
    """Look-up table from NYUD label ids 0..K to class ids: (K + 1,) uint8, id 0 (void) -> 255.

    Args:
        map_class: (K,) 1-based 40-class id of each 1-based label id (``mapClass``).
        labels13: optional (40,) 1-based 13-class id of each 40-class id (``labels13``).
    """
    classes = np.asarray(map_class, dtype=np.int64)
    if labels13 is not None:
        classes = np.asarray(labels13, dtype=np.int64)[classes - 1]
    return np.concatenate([[VOID], classes - 1]).astype(np.uint8)


def depth_to_mm(depth_m: np.ndarray, source: str = "depths") -> np.ndarray:
    """Depth (H, W) in metres -> uint16 millimetres; non-finite or <= 0 becomes 0 (invalid)."""
    valid = np.isfinite(depth_m) & (depth_m > 0)
    if np.any(depth_m[valid] > MAX_DEPTH_M):
        raise NYUDFormatError(
            f"{source}: depth up to {depth_m[valid].max():.1f} exceeds {MAX_DEPTH_M} m; "
            "expected metres"
        )
    return np.where(valid, np.round(depth_m * 1000.0), 0).astype(np.uint16)


def _imwrite(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"{path}: could not write PNG")


def _read_info(root: Path) -> dict | None:
    try:
        info = json.loads((root / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("format") == INFO_FORMAT else None


def _list_split(root: Path, kind: str, split: str) -> list[str]:
    folder = root / kind / split
    return sorted(p.name for p in folder.glob("*.png")) if folder.is_dir() else []


def check_nyud_tree(root: str | Path, read_files: bool = True) -> dict:
    """Verify a prepared tree: file counts per split, and (if ``read_files``) every file's
    dtype, shape and value range. Returns the tree's info dict; raises :class:`NYUDFormatError`."""
    root = Path(root)
    if not root.is_dir():
        raise NYUDFormatError(f"{root}: not a directory")
    info = _read_info(root)
    if info is None:
        raise NYUDFormatError(f"{root}: no valid {INFO_FILE}; not a complete prepared tree")
    num_classes, shape = info["classes"], (info["height"], info["width"])
    for split in SPLITS:
        names = _list_split(root, "images", split)
        if len(names) != info["counts"][split]:
            raise NYUDFormatError(
                f"{root / 'images' / split}: {len(names)} images, expected {info['counts'][split]}"
            )
        for kind in KINDS[1:]:
            if _list_split(root, kind, split) != names:
                raise NYUDFormatError(f"{root / kind / split}: files do not match images/{split}")
        if read_files:
            for name in names:
                _check_frame(root, split, name, shape, num_classes)
    return info


def _check_frame(root: Path, split: str, name: str, shape: tuple, num_classes: int) -> None:
    expected = {
        "images": (np.uint8, (*shape, 3)),
        "annotations": (np.uint8, shape),
        "depth": (np.uint16, shape),
    }
    for kind, (dtype, want) in expected.items():
        path = root / kind / split / name
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise NYUDFormatError(f"{path}: not a readable PNG")
        if arr.dtype != dtype or arr.shape != want:
            raise NYUDFormatError(
                f"{path}: {arr.dtype} {arr.shape}, expected {dtype.__name__} {want}"
            )
        if kind == "annotations":
            bad = arr[(arr >= num_classes) & (arr != VOID)]
            if bad.size:
                raise NYUDFormatError(
                    f"{path}: class id {bad[0]} outside 0..{num_classes - 1}, 255"
                )


def _missing_or_empty(out: Path) -> bool:
    return not out.exists() or (out.is_dir() and not any(out.iterdir()))


def _check_replaceable(out: Path) -> None:
    """Raise :class:`NYUDFormatError` unless ``out`` is missing, an empty folder, or stamped by
    :func:`prepare_nyud` (a valid ``nyud_info.json``, even if the tree is otherwise partial):
    nothing else is ever replaced, ``force`` or not."""
    if not _missing_or_empty(out) and _read_info(out) is None:
        raise NYUDFormatError(
            f"{out}: not empty and not a tree written by prepare_nyud (no valid {INFO_FILE}); "
            "refusing to replace it, even with --force"
        )


def _existing_is_complete(out: Path, classes: int, force: bool) -> bool:
    """True if ``out`` is a finished tree for ``classes`` and ``force`` is off (nothing to do).

    Raises :class:`NYUDFormatError` if ``out`` holds anything but a stamped tree, or, with
    ``force`` off, a stamped tree that is partial or for other ``classes``."""
    if _missing_or_empty(out):
        return False
    _check_replaceable(out)
    if force:
        return False
    try:
        info = check_nyud_tree(out, read_files=False)
    except NYUDFormatError as exc:
        reason = str(exc).removeprefix(f"{out}: ")
        raise NYUDFormatError(
            f"{out}: existing output is partial ({reason}); use --force to replace it"
        ) from exc
    if info["classes"] != classes:
        raise NYUDFormatError(
            f"{out}: existing output has {info['classes']} classes, not {classes}; use --force"
        )
    return True


def _make_parent(out: Path) -> list[Path]:
    """Create OUT's missing parents; returns those created (to remove on failure)."""
    created = []
    for parent in reversed(out.parents):
        if not parent.exists():
            try:
                parent.mkdir()
            except OSError as exc:
                raise NYUDFormatError(f"{out}: output directory not writable ({exc})") from exc
            created.append(parent)
    return created


def prepare_nyud(
    labeled: str | Path,
    splits: str | Path,
    mapping: str | Path,
    out: str | Path,
    classes: int = 40,
    mapping13: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> PrepareResult:
    """Convert ``nyu_depth_v2_labeled.mat`` into the tree described in the module docstring.

    Args:
        labeled: the MATLAB v7.3 labelled file.
        splits: ``splits.mat`` (1-based ``trainNdxs`` / ``testNdxs``).
        mapping: ``classMapping40.mat`` (``mapClass``: label id -> 40 classes).
        out: output folder; a finished tree for the same ``classes`` is left alone.
        classes: 40 or 13.
        mapping13: ``class13Mapping.mat``, needed for ``classes=13``; defaults to the file of that
            name beside ``mapping``.
        force: rebuild and replace an existing ``out``; only an empty folder or a tree this
            function wrote (stamped with ``nyud_info.json``) is ever replaced.
        progress: show a progress bar.

    Raises:
        NYUDFormatError: bad input or output; nothing is left behind.
    """
    start = time.perf_counter()
    out = Path(out)
    if classes not in (40, 13):
        raise NYUDFormatError(f"{out}: classes must be 40 or 13, got {classes}")
    if _existing_is_complete(out, classes, force):
        info = _read_info(out)
        return PrepareResult(out, dict(info["counts"]), skipped=True)

    with LabeledMatReader(labeled) as mat:
        train, test = load_splits(splits, mat.num_frames)
        labels13 = None
        if classes == 13:
            mapping13 = (
                Path(mapping).with_name("class13Mapping.mat") if mapping13 is None else mapping13
            )
            labels13 = load_class13_mapping(mapping13)
        lut = class_lut(load_class_mapping(mapping, len(mat.names)), labels13)
        created = _make_parent(out)
        try:
            tmp = partial_path(out)  # named with our pid: a later start removes it if we die
            tmp.mkdir(mode=0o777)  # the umask applies
        except OSError as exc:
            for parent in reversed(created):
                parent.rmdir()
            raise NYUDFormatError(f"{out}: output directory not writable ({exc})") from exc
        try:
            _convert(mat, train, test, lut, tmp, progress)
            info = {
                "format": INFO_FORMAT,
                "classes": classes,
                "class_names": list(NYUD40_CLASSES if classes == 40 else NYUD13_CLASSES),
                "height": mat.height,
                "width": mat.width,
                "counts": {"train": int(train.size), "test": int(test.size)},
                "sources": {
                    "labeled": str(labeled),
                    "splits": str(splits),
                    "mapping": str(mapping),
                },
            }
            (tmp / INFO_FILE).write_text(json.dumps(info, indent=1))
            _replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            for parent in reversed(created):
                parent.rmdir()
            raise
    counts = {"train": int(train.size), "test": int(test.size)}
    return PrepareResult(out, counts, seconds=time.perf_counter() - start)


def _convert(
    mat: LabeledMatReader,
    train: np.ndarray,
    test: np.ndarray,
    lut: np.ndarray,
    tmp: Path,
    progress: bool,
) -> None:
    """Write every split frame into ``tmp``, one frame in memory at a time, in file order."""
    for kind in KINDS:
        for split in SPLITS:
            (tmp / kind / split).mkdir(parents=True)
    split_of = {int(i): "train" for i in train} | {int(i): "test" for i in test}
    num_names = lut.size - 1
    for idx in progress_bar(sorted(split_of), "nyud", "frame", disable=not progress):
        rgb, depth, labels = mat.frame(idx - 1)
        if labels.min() < 0 or labels.max() > num_names:
            bad = labels.min() if labels.min() < 0 else labels.max()
            raise NYUDFormatError(
                f"{mat.path}: frame {idx} has label id {bad} outside 0..{num_names} (the names)"
            )
        name = f"{idx:04d}.png"
        split = split_of[idx]
        _imwrite(tmp / "images" / split / name, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        _imwrite(tmp / "annotations" / split / name, lut[labels])
        _imwrite(tmp / "depth" / split / name, depth_to_mm(depth, f"{mat.path}: frame {idx}"))


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``, replacing an old ``out`` only after it is complete,
    and only if it is still empty or stamped (it may have changed during the conversion)."""
    if out.exists():
        _check_replaceable(out)
    replace_dir(tmp, out)
