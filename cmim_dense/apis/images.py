"""A user's inputs: image files, folders, globs and videos, read as RGB uint8 frames."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cmim_dense.utils.errors import InputError

# What a folder or a glob contributes (an input named on its own is tried whatever its suffix).
IMAGE_SUFFIXES = frozenset(
    [
        ".png",
        ".jpg",
        ".jpeg",
        ".bmp",
        ".tif",
        ".tiff",
        ".webp",
        ".jp2",
        ".pbm",
        ".pgm",
        ".ppm",
        ".pnm",
    ]
)
VIDEO_SUFFIXES = frozenset(
    [".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"]
)
_GLOB_MAGIC = "*?["


class UnreadableInputError(InputError):
    """An input that cannot be read: the tool reports it in one line and goes on with the
    others."""


@dataclass(frozen=True)
class Source:
    """One input file.

    Attributes:
        path: the file.
        name: its path relative to the folder (or glob base) given, without suffix, with ``/``
            separators (outputs are ``<out>/<name>_seg.png`` ...); a file given alone: its stem.
        is_video: read frame by frame with OpenCV.
    """

    path: Path
    name: str
    is_video: bool


def to_rgb8(image: np.ndarray, channel_order: str, name: str) -> np.ndarray:
    """An (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 or uint16 image as (H, W, 3) uint8
    RGB: grey is repeated, alpha dropped, 16-bit scaled by 255/65535 (OpenCV conversions).

    ``channel_order``: ``'rgb'`` (arrays from the user) or ``'bgr'`` (OpenCV's decoding).

    Raises:
        UnreadableInputError: another shape or pixel type, naming ``name``.
    """
    if image.dtype == np.uint16:
        image = cv2.convertScaleAbs(image, alpha=255.0 / 65535.0)
    elif image.dtype != np.uint8:
        raise UnreadableInputError(f"{name}: {image.dtype} pixels are not supported (8 or 16 bits)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise UnreadableInputError(
            f"{name}: shape {image.shape} is not an (H, W), (H, W, 3) or (H, W, 4) image"
        )
    codes = {
        ("rgb", 3): None,
        ("rgb", 4): cv2.COLOR_RGBA2RGB,
        ("bgr", 3): cv2.COLOR_BGR2RGB,
        ("bgr", 4): cv2.COLOR_BGRA2RGB,
    }
    code = codes[(channel_order, image.shape[2])]
    return image if code is None else cv2.cvtColor(image, code)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image file at ``path`` as (H, W, 3) uint8 RGB, decoded by OpenCV with its EXIF
    orientation applied; grey, alpha and 16-bit images converted by :func:`to_rgb8`.

    Raises:
        UnreadableInputError: missing, or not an 8- or 16-bit image OpenCV decodes.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise UnreadableInputError(f"{path}: {err.strerror or err}") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH) if data.size else None
    if image is None:
        raise UnreadableInputError(f"{path}: not an image OpenCV can decode")
    return to_rgb8(image, "bgr", str(path))


def open_video(path: Path) -> tuple[cv2.VideoCapture, float, int]:
    """``path`` opened by OpenCV: (capture, frames per second, frame count as the container
    states it, 0 when unknown).

    Raises:
        UnreadableInputError: OpenCV cannot open it or read a first frame.
    """
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise UnreadableInputError(f"{path}: not a video OpenCV can open")
    fps = capture.get(cv2.CAP_PROP_FPS)
    count = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    return capture, fps if fps > 0 else 25.0, count


def video_frames(capture: cv2.VideoCapture, path: Path) -> Iterator[np.ndarray]:
    """The frames of an opened video as (H, W, 3) uint8 RGB, released at the end.

    Raises:
        UnreadableInputError: not a single frame could be decoded.
    """
    count = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            count += 1
            yield to_rgb8(frame, "bgr", f"{path} frame {count - 1}")
    finally:
        capture.release()
    if count == 0:
        raise UnreadableInputError(f"{path}: no frame could be decoded")


def _kind(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def _in_folder(folder: Path, files: Sequence[Path]) -> list[Source]:
    return [
        Source(path, path.relative_to(folder).with_suffix("").as_posix(), _kind(path))
        for path in sorted(files)
        if path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES and path.is_file()
    ]


def _glob_base(pattern: str) -> Path:
    """The leading folders of ``pattern`` that hold no glob character."""
    parts = []
    for part in Path(pattern).parts[:-1]:
        if any(c in part for c in _GLOB_MAGIC):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def expand_inputs(words: Sequence[str]) -> tuple[list[Source], list[str]]:
    """Image files, folders (searched recursively for images and videos) and globs -> the files
    to process, and one line for each word that names nothing.

    Raises:
        InputError: two inputs would write the same outputs (``a.jpg`` and ``a.png`` in one
            folder).
    """
    sources: list[Source] = []
    missing: list[str] = []
    for word in words:
        path = Path(word)
        if path.is_dir():
            found = _in_folder(path, list(path.rglob("*")))
            if not found:
                missing.append(f"{word}: no image or video in this folder")
            sources += found
        elif path.is_file():
            sources.append(Source(path, path.stem, _kind(path)))
        elif any(c in word for c in _GLOB_MAGIC):
            found = _in_folder(_glob_base(word), [Path(p) for p in glob.glob(word, recursive=True)])
            if not found:
                missing.append(f"{word}: matches no image or video")
            sources += found
        else:
            missing.append(f"{word}: no such file or folder")
    seen: dict[str, Path] = {}
    for source in sources:
        other = seen.setdefault(source.name, source.path)
        if other != source.path:
            raise InputError(
                f"{other} and {source.path} would both write {source.name}_*: rename one or give "
                "them in separate runs"
            )
    unique = list({source.path: source for source in sources}.values())
    return unique, missing
