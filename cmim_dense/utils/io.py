"""Atomic file writes for results (metrics, reports, figures, saved predictions), and staged
folders that replace their target as a unit (:class:`StagedDir`, :func:`staged_dir`).

Every writer here puts its bytes in a temporary file in the *same directory* as the target,
flushes and fsyncs it, then ``os.replace``-s it over the target. A reader therefore sees
either the old file or the complete new one, never a half-written file, even if the writer
is killed (a long test run interrupted while writing ``metrics.json``).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

# Staged files and folders are named ``.<name>.partial-<pid>-<token>[.tmp]`` beside their target:
# the pid tells a later start whether the writer is gone (see :func:`remove_dead_partials`).
PARTIAL = ".partial-"
_PARTIAL_NAME = re.compile(r"^\..*\.partial-(\d+)-[0-9a-f]+(\.tmp)?$")


def partial_path(
    target: str | os.PathLike, suffix: str = "", pid: int | None = None, token: str | None = None
) -> Path:
    """Where ``target`` is staged: ``.<name>.partial-<pid>-<token><suffix>`` in its folder."""
    target = Path(target)
    pid = os.getpid() if pid is None else pid
    token = token or secrets.token_hex(6)
    return target.with_name(f".{target.name}{PARTIAL}{pid}-{token}{suffix}")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; creates missing parent directories.

    The temporary file is opened with mode 0o666 so the umask applies as for a plain
    ``open`` (``tempfile.mkstemp`` would leave the result readable by its owner only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path, suffix=".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path``, with the same suffix, for a writer that opens files by
    name (OpenCV's ``VideoWriter``); on a clean exit the file is fsynced and moved over
    ``path``, on an error deleted. Creates missing parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(6)}.tmp{path.suffix}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/torch scalars and arrays to plain Python; NaN and inf become ``None``.

    Strict JSON has no NaN (a class absent from both prediction and ground truth has
    IoU = 0/0), so such values are written as ``null``.
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays/scalars and torch tensors
        return to_jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, strict JSON (see :func:`to_jsonable`) atomically."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def save_figure_atomic(fig, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """Save a matplotlib ``Figure`` atomically; the format follows the suffix of ``path``."""
    path = Path(path)
    buf = io.BytesIO()
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    fig.savefig(buf, **savefig_kwargs)
    return write_bytes_atomic(path, buf.getvalue())


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """``np.savez_compressed`` to ``path`` atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return write_bytes_atomic(path, buf.getvalue())


def replace_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Move the finished folder ``tmp`` to ``out`` (same parent folder, so a rename).

    An existing ``out`` is moved aside first and deleted only after ``tmp`` took its place, so
    a reader sees the old complete folder or the new one. The caller decides whether ``out``
    may be replaced at all.
    """
    tmp, out = Path(tmp), Path(out)
    if not out.exists():
        tmp.rename(out)
        return out
    old = partial_path(out, suffix="")
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


class StagedDir:
    """A new folder beside ``out`` that becomes ``out`` only on :meth:`commit`.

    The folder (``.<name>.partial-<pid>-<token>``) is created with mode 0o777, so the umask
    applies as for ``mkdir``. ``pid``/``token`` let several processes of one job (the ranks of
    a distributed test) share one stage: pass rank 0's.
    """

    def __init__(self, out: str | os.PathLike, pid: int | None = None, token: str | None = None):
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.path = partial_path(self.out, pid=pid, token=token)
        self.path.mkdir(mode=0o777, exist_ok=True)

    def commit(self) -> Path:
        """Replace ``out`` by the staged folder (:func:`replace_dir`)."""
        return replace_dir(self.path, self.out)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@contextmanager
def staged_dir(out: str | os.PathLike) -> Iterator[Path]:
    """``with staged_dir(out) as tmp:`` write into ``tmp``; it replaces ``out`` when the block
    ends normally and is deleted when it raises, leaving ``out`` as it was."""
    stage = StagedDir(out)
    try:
        yield stage.path
    except BaseException:
        stage.discard()
        raise
    stage.commit()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_dead_partials(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the staged files and folders in ``folder`` whose writer (the pid in the name) is
    gone (a killed run); returns what was removed. Those of live processes stay. ``name``:
    only those staged for the target ``folder/name``."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _PARTIAL_NAME.match(entry.name)
        if name is not None and not entry.name.startswith(f".{name}{PARTIAL}"):
            continue
        if not match or _pid_alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
