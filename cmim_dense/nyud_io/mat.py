"""Read and write the official NYUD-v2 ``.mat`` files, checking them so bad input fails early.

Three files come with NYUD-v2:

* ``nyu_depth_v2_labeled.mat``: MATLAB v7.3, i.e. HDF5 with column-major arrays. h5py shows
  ``images`` (N, 3, W, H) uint8, ``depths`` (N, W, H) float32 metres and ``labels`` (N, W, H)
  uint16, where 0 is void and 1..K index the cell array ``names`` (K = 894). Frames are
  transposed back to (H, W) on reading; :class:`LabeledMatReader` streams them one at a time.
* ``splits.mat``: MATLAB v5, ``trainNdxs`` (795, 1) and ``testNdxs`` (654, 1), 1-based.
* ``classMapping40.mat``: MATLAB v5, ``mapClass`` (1, K) with values 1..40 and ``className``
  (1, 40). ``class13Mapping.mat`` holds a struct ``classMapping13`` with ``labels13`` (1, 40)
  in 1..13 and ``classNames`` (1, 13).

The writers produce the same layouts; the synthetic generator uses them so that the real conversion
tool converts its output unchanged.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import scipy.io

from cmim_dense.utils.errors import InputError

LABELED_KEYS = ("images", "depths", "labels", "names")
_MAT73_USERBLOCK = 512
# h5py chunk cache per dataset: MATLAB may chunk several frames together; a cache of a few frames
# keeps sequential reads from decompressing the same chunk again, and still bounds memory.
_CHUNK_CACHE_BYTES = 16 * 2**20


class NYUDFormatError(InputError):
    """An NYUD-v2 input or output does not have the expected format. The message names the file."""


def _fail(path: str | Path, what: str) -> NYUDFormatError:
    return NYUDFormatError(f"{path}: {what}")


def _require_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise _fail(path, "file not found")
    if not path.is_file():
        raise _fail(path, "not a regular file")
    return path


def load_mat(path: str | Path, keys: Sequence[str]) -> dict:
    """Variables ``keys`` of a MATLAB ``.mat`` file (v5 via scipy, v7.3 via h5py) as numpy arrays.

    v7.3 arrays are transposed back to MATLAB's orientation, so both formats give the same shapes,
    e.g. ``trainNdxs`` (795, 1) either way. Only ``keys`` are read, so a wrong (huge) file given
    by mistake is not loaded whole. Missing keys are reported by the callers' checks.
    """
    path = _require_file(path)
    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as f:
                found = {k: f[k] for k in keys if isinstance(f.get(k), h5py.Dataset)}
                return {k: np.asarray(v[()]).T for k, v in found.items()}
        except OSError as exc:
            raise _fail(path, f"cannot open as HDF5, truncated or corrupt ({exc})") from exc
    try:
        return scipy.io.loadmat(path, variable_names=list(keys))
    except Exception as exc:  # scipy raises many types for junk input; all mean "not a .mat"
        raise _fail(path, f"not a readable MATLAB .mat file ({exc})") from exc


def _integer_vector(path: Path, mat: dict, key: str) -> np.ndarray:
    if key not in mat:
        raise _fail(path, f"missing variable '{key}'")
    arr = np.asarray(mat[key])
    if arr.dtype.kind not in "uif" or arr.size == 0 or sum(s > 1 for s in arr.shape) > 1:
        raise _fail(
            path, f"'{key}' must be a non-empty numeric vector, got {arr.dtype} {arr.shape}"
        )
    flat = arr.ravel()
    if arr.dtype.kind == "f" and not np.all(np.isfinite(flat) & (flat == np.round(flat))):
        raise _fail(path, f"'{key}' must hold integers")
    return flat.astype(np.int64)


def load_splits(path: str | Path, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """``trainNdxs`` and ``testNdxs`` of ``splits.mat`` as sorted 1-based int64 arrays.

    Raises :class:`NYUDFormatError` if an index is outside 1..num_frames, repeats, or is in both.
    """
    path = Path(path)
    mat = load_mat(path, ("trainNdxs", "testNdxs"))
    splits = []
    for key in ("trainNdxs", "testNdxs"):
        idx = _integer_vector(path, mat, key)
        bad = idx[(idx < 1) | (idx > num_frames)]
        if bad.size:
            raise _fail(path, f"'{key}' has index {bad[0]} outside 1..{num_frames}")
        uniq, counts = np.unique(idx, return_counts=True)
        if np.any(counts > 1):
            raise _fail(path, f"'{key}' repeats index {uniq[counts > 1][0]}")
        splits.append(uniq)
    both = np.intersect1d(*splits)
    if both.size:
        raise _fail(path, f"trainNdxs and testNdxs share {both.size} frame(s), e.g. {both[0]}")
    return splits[0], splits[1]


def load_class_mapping(path: str | Path, num_names: int) -> np.ndarray:
    """``mapClass`` of ``classMapping40.mat``: (num_names,) int64 with values 1..40."""
    path = Path(path)
    mapping = _integer_vector(path, load_mat(path, ("mapClass",)), "mapClass")
    if mapping.size != num_names:
        raise _fail(path, f"'mapClass' has {mapping.size} entries but 'names' has {num_names}")
    if mapping.min() < 1 or mapping.max() > 40:
        raise _fail(
            path, f"'mapClass' values must lie in 1..40, got {mapping.min()}..{mapping.max()}"
        )
    return mapping


def load_class13_mapping(path: str | Path) -> np.ndarray:
    """``classMapping13.labels13`` of ``class13Mapping.mat``: (40,) int64 with values 1..13."""
    path = Path(path)
    mat = load_mat(path, ("classMapping13",))
    if "classMapping13" not in mat:
        raise _fail(path, "missing variable 'classMapping13'")
    struct = mat["classMapping13"]
    if struct.dtype.names is None or "labels13" not in struct.dtype.names:
        raise _fail(path, "'classMapping13' must be a struct with a 'labels13' field")
    mapping = _integer_vector(path, {"labels13": struct["labels13"].ravel()[0]}, "labels13")
    if mapping.size != 40 or mapping.min() < 1 or mapping.max() > 13:
        raise _fail(path, f"'labels13' must map 40 classes into 1..13, got {mapping.size} entries")
    return mapping


class LabeledMatReader:
    """Stream frames out of ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3) one at a time.

    Opening validates keys, ranks, dtypes and that the three arrays agree on N, H and W; a
    frame is read only when asked for, so memory stays at a few frames whatever N is.

    Example::

        with LabeledMatReader("nyu_depth_v2_labeled.mat") as mat:
            rgb, depth, labels = mat.frame(0)  # (480, 640, 3) uint8, (480, 640) float32 m, uint16
    """

    def __init__(self, path: str | Path) -> None:
        self.path = _require_file(path)
        if not h5py.is_hdf5(self.path):
            raise _fail(self.path, "not an HDF5 (MATLAB v7.3) file")
        try:
            self._file = h5py.File(self.path, "r", rdcc_nbytes=_CHUNK_CACHE_BYTES)
        except OSError as exc:
            raise _fail(self.path, f"cannot open as HDF5, truncated or corrupt ({exc})") from exc
        try:
            self._validate()
            self.names = self._read_names()
        except BaseException:
            self._file.close()
            raise

    def _validate(self) -> None:
        missing = [k for k in LABELED_KEYS if k not in self._file]
        if missing:
            raise _fail(self.path, f"missing dataset '{missing[0]}' (has: {', '.join(self._file)})")
        images, depths, labels = (self._file[k] for k in ("images", "depths", "labels"))
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
            raise _fail(
                self.path,
                f"'images' is {images.dtype} {images.shape}, expected uint8 (N, 3, W, H) "
                "(column-major MATLAB v7.3 layout)",
            )
        n, _, w, h = images.shape
        for name, dset, kinds in (("depths", depths, "f"), ("labels", labels, "ui")):
            if dset.shape != (n, w, h) or dset.dtype.kind not in kinds:
                kind = "float" if kinds == "f" else "integer"
                raise _fail(
                    self.path,
                    f"'{name}' is {dset.dtype} {dset.shape}, expected {kind} {(n, w, h)} "
                    "to match 'images'",
                )
        self.num_frames, self.height, self.width = n, h, w

    def _read_names(self) -> list[str]:
        cell = self._file["names"]
        if cell.dtype != h5py.ref_dtype or 1 not in cell.shape or cell.ndim != 2:
            raise _fail(
                self.path, f"'names' is {cell.dtype} {cell.shape}, expected a 1-D cell array"
            )
        names = []
        try:
            for ref in cell[()].ravel():
                chars = self._file[ref]
                empty = chars.attrs.get("MATLAB_empty", 0) or chars.dtype.kind not in "ui"
                names.append("" if empty else "".join(map(chr, chars[()].ravel())))
        except (ValueError, KeyError, OSError) as exc:
            raise _fail(self.path, f"'names' entry {len(names) + 1} is unreadable ({exc})") from exc
        return names

    def frame(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame ``index`` (0-based): rgb (H, W, 3) uint8, depth (H, W) float32 m, labels (H, W)."""
        try:
            rgb = self._file["images"][index].transpose(2, 1, 0)
            depth = self._file["depths"][index].T.astype(np.float32, copy=False)
            labels = self._file["labels"][index].T
        except OSError as exc:
            raise _fail(
                self.path, f"cannot read frame {index + 1}, truncated or corrupt ({exc})"
            ) from exc
        return np.ascontiguousarray(rgb), np.ascontiguousarray(depth), np.ascontiguousarray(labels)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> LabeledMatReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _mat73_header() -> bytes:
    """The 128-byte MAT-file header that MATLAB puts in the HDF5 user block of a v7.3 file."""
    now = datetime.datetime.now().strftime("%a %b %d %H:%M:%S %Y")
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {now} HDF5 schema 1.00 ."
    return text.encode("ascii").ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"


class LabeledMatWriter:
    """Write frames into a new file with the layout of ``nyu_depth_v2_labeled.mat``.

    Datasets carry MATLAB's ``MATLAB_class`` attributes and the file has the v7.3 header in its
    user block, so MATLAB and h5py read it like the official file. Frames are written one at a
    time (chunked by frame, gzip), so memory stays bounded.

    Args:
        path: output ``.mat`` path.
        num_frames: N.
        height, width: H, W of every frame.
        names: the K class names that label ids 1..K index.
    """

    def __init__(
        self, path: str | Path, num_frames: int, height: int, width: int, names: Sequence[str]
    ) -> None:
        self.path = Path(path)
        n, h, w = num_frames, height, width
        self._file = h5py.File(self.path, "w", userblock_size=_MAT73_USERBLOCK, libver="earliest")
        opts = dict(compression="gzip", compression_opts=1)
        self._images = self._dataset("images", (n, 3, w, h), np.uint8, "uint8", opts)
        self._depths = self._dataset("depths", (n, w, h), np.float32, "single", opts)
        self._labels = self._dataset("labels", (n, w, h), np.uint16, "uint16", opts)
        self._write_names(names)

    def _dataset(self, key, shape, dtype, matlab_class, opts) -> h5py.Dataset:
        dset = self._file.create_dataset(key, shape, dtype=dtype, chunks=(1, *shape[1:]), **opts)
        dset.attrs["MATLAB_class"] = np.bytes_(matlab_class)
        return dset

    def _write_names(self, names: Sequence[str]) -> None:
        refs_group = self._file.create_group("#refs#")
        cell = self._file.create_dataset("names", (1, len(names)), dtype=h5py.ref_dtype)
        cell.attrs["MATLAB_class"] = np.bytes_("cell")
        refs = []
        for i, name in enumerate(names):
            # A MATLAB 1xL char array is stored as uint16 codes of shape (L, 1).
            chars = np.array([[ord(c)] for c in name], dtype=np.uint16)
            entry = refs_group.create_dataset(f"n{i}", data=chars)
            entry.attrs["MATLAB_class"] = np.bytes_("char")
            entry.attrs["MATLAB_int_decode"] = np.int32(2)
            refs.append(entry.ref)
        cell[0, :] = refs

    def write(self, index: int, rgb: np.ndarray, depth: np.ndarray, labels: np.ndarray) -> None:
        """Store frame ``index`` (0-based): rgb (H, W, 3) uint8, depth (H, W) m, labels (H, W)."""
        self._images[index] = rgb.transpose(2, 1, 0)
        self._depths[index] = depth.T
        self._labels[index] = labels.T

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()
            with open(self.path, "r+b") as f:
                f.write(_mat73_header())

    def __enter__(self) -> LabeledMatWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _cell_row(strings: Sequence[str]) -> np.ndarray:
    cell = np.empty((1, len(strings)), dtype=object)
    cell[0, :] = list(strings)
    return cell


def write_splits_mat(path: str | Path, train: Sequence[int], test: Sequence[int]) -> None:
    """Write ``splits.mat`` (v5): 1-based ``trainNdxs`` and ``testNdxs`` as uint16 (n, 1)."""
    scipy.io.savemat(
        path,
        {
            "trainNdxs": np.asarray(train, dtype=np.uint16).reshape(-1, 1),
            "testNdxs": np.asarray(test, dtype=np.uint16).reshape(-1, 1),
        },
    )


def write_class_mapping_mat(
    path: str | Path, map_class: Sequence[int], class_names: Sequence[str]
) -> None:
    """Write ``classMapping40.mat`` (v5): ``mapClass`` (1, K) uint8 and ``className`` (1, 40)."""
    scipy.io.savemat(
        path,
        {
            "mapClass": np.asarray(map_class, dtype=np.uint8).reshape(1, -1),
            "className": _cell_row(class_names),
        },
    )


def write_class13_mapping_mat(
    path: str | Path, labels13: Sequence[int], class_names: Sequence[str]
) -> None:
    """Write ``class13Mapping.mat`` (v5): struct ``classMapping13``, ``labels13`` (1, 40)."""
    struct = {
        "labels13": np.asarray(labels13, dtype=np.uint8).reshape(1, -1),
        "classNames": _cell_row(class_names),
    }
    scipy.io.savemat(path, {"classMapping13": struct})
