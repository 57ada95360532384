"""A test's outputs as one unit: staged, then moved into place only when the test succeeded.

``tools/test.py`` writes ``<work_dir>/metrics.json``, ``<work_dir>/predictions/`` and, with
``--show-dir``, one picture per test image. All of them are first written into a staged folder
(``<work_dir>/.test.partial-<pid>-<token>``, and one beside the show dir); a refused or failed
test deletes the stage and leaves the previous results as they were. On success the new
``predictions/`` replaces the old folder (no stale files survive a re-test), ``metrics.json``
follows, then the show dir. ``metrics.json`` and ``predictions/TEST_ID`` carry the same
``run.test_id``, so a reader can tell whether both come from the same test.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

from mmengine.dist import broadcast_object_list, is_main_process

from cmim_dense.evaluation.report import METRICS_FILE, PREDICTIONS_DIR, TEST_ID_FILE
from cmim_dense.utils.errors import InputError
from cmim_dense.utils.io import (
    StagedDir,
    remove_dead_partials,
    replace_dir,
    write_json_atomic,
    write_text_atomic,
)


def check_show_dir(show_dir: str | os.PathLike) -> Path:
    """``--show-dir``: a new folder, an empty one, or one holding only pictures (an earlier
    show dir, which a successful test replaces). Raises :class:`InputError` otherwise."""
    path = Path(show_dir)
    if path.exists() and not path.is_dir():
        raise InputError(f"--show-dir {path} is a file, not a folder")
    if path.is_dir():
        other = [p.name for p in path.iterdir() if p.suffix.lower() != ".png"]
        if other:
            raise InputError(
                f"--show-dir {path} holds other files than pictures ({other[0]}, ...); "
                "it would be replaced: give a new or empty folder"
            )
    return path


def _item_names(dataset) -> list[str] | None:
    """The test items' identities: file paths relative to the data root, or None."""
    root = getattr(dataset, "data_root", None) or ""
    if hasattr(dataset, "samples"):  # ImageFolder: (path, label)
        return [f"{os.path.relpath(p, root)}:{label}" for p, label in dataset.samples]
    if hasattr(dataset, "get_data_info") and hasattr(dataset, "data_list"):
        return [
            os.path.relpath(dataset.get_data_info(i)["img_path"], root) for i in range(len(dataset))
        ]
    return None


def test_set_identity(dataset) -> dict[str, Any]:
    """``split`` (name), ``frames`` (count) and ``sha256`` of the ordered item list of a test
    dataset; in-memory datasets (CIFAR) hash their images and labels instead of file names."""
    split = getattr(dataset, "split", None)
    prefix = getattr(dataset, "data_prefix", None) or {}
    if split is None and prefix.get("img_path"):
        split = Path(prefix["img_path"]).name
    digest = hashlib.sha256()
    names = _item_names(dataset)
    if names is not None:
        digest.update("\n".join(names).encode())
    elif hasattr(dataset, "images") and hasattr(dataset, "labels"):
        digest.update(dataset.images.numpy().tobytes())
        digest.update(repr(list(dataset.labels)).encode())
    else:
        digest = None
    return dict(split=split, frames=len(dataset), sha256=digest.hexdigest() if digest else None)


class TestOutputs:
    """The staged outputs of one test (see the module doc); shared by every rank.

    Args:
        work_dir: the run folder (``metrics.json`` and ``predictions/`` go there).
        show_dir: the pictures' folder, or None.
    """

    def __init__(self, work_dir: str | os.PathLike, show_dir: str | os.PathLike | None):
        shared = [(os.getpid(), secrets.token_hex(6))]
        broadcast_object_list(shared)  # one stage for all ranks: rank 0's pid and token
        pid, token = shared[0]
        self.test_id = f"{pid}-{token}"
        self.work_dir = Path(work_dir)
        self.stage = StagedDir(self.work_dir / "test", pid=pid, token=token)  # never committed
        self.show = None
        if show_dir:
            show_dir = Path(show_dir)
            if is_main_process():
                for removed in remove_dead_partials(show_dir.parent, show_dir.name):
                    print(
                        f"removed {removed}: staged pictures of a test that ended", file=sys.stderr
                    )
            self.show = StagedDir(show_dir, pid=pid, token=token)
        self.predictions = self.stage.path / PREDICTIONS_DIR
        self.predictions.mkdir(mode=0o777, exist_ok=True)

    @property
    def show_path(self) -> Path | None:
        return self.show.path if self.show else None

    def commit(self, record: dict[str, Any]) -> Path:
        """Move the outputs into place (rank 0); ``record`` is ``metrics.json``'s content, to
        which ``run.test_id`` is added. Returns the path of ``metrics.json``."""
        record = dict(record, run=dict(record.get("run") or {}, test_id=self.test_id))
        if not is_main_process():
            return self.work_dir / METRICS_FILE
        staged_metrics = write_json_atomic(self.stage.path / METRICS_FILE, record)
        predictions = self.work_dir / PREDICTIONS_DIR
        if any(self.predictions.iterdir()):
            write_text_atomic(self.predictions / TEST_ID_FILE, self.test_id + "\n")
            replace_dir(self.predictions, predictions)
        elif predictions.is_dir():  # this test saves none: the old ones would be stale
            replace_dir(self.predictions, predictions)
            shutil.rmtree(predictions)
        os.replace(staged_metrics, self.work_dir / METRICS_FILE)
        self.stage.discard()
        if self.show:
            self.show.commit()
        return self.work_dir / METRICS_FILE

    def discard(self) -> None:
        """Delete the staged outputs (rank 0); the previous results stay as they were."""
        if is_main_process():
            self.stage.discard()
            if self.show:
                self.show.discard()
