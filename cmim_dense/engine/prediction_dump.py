"""Saves test-time predictions: npz arrays for the report, PNG panels for ``--show-dir``."""

from __future__ import annotations

from pathlib import Path

import cv2
from mmengine.hooks import Hook

from cmim_dense.evaluation.visualize import arrays_from_sample, sample_panel, save_predictions_npz
from cmim_dense.registry import HOOKS
from cmim_dense.utils.errors import InputError
from cmim_dense.utils.io import write_bytes_atomic


@HOOKS.register_module()
class DensePredictionDumpHook(Hook):
    """After each test batch, saves each image's ground truth and predictions.

    Args:
        num_npz: how many images (first in test order) get ``<out_dir>/<name>.npz``
            (the arrays ``tools/report.py`` draws its qualitative grid from).
        show_dir: if set, every test image gets ``<show_dir>/<name>.png``:
            RGB | GT seg | pred seg | GT depth | pred depth.
        out_dir: where the npz files go; default ``<work_dir>/predictions``. ``tools/test.py``
            points both folders at its staged outputs (:mod:`cmim_dense.engine.test_outputs`).

    For an image it saves arrays or a picture for, the RGB is read again from ``img_path`` at
    its original size, which is the size predictions are returned at; other images are not
    read.
    """

    priority = "LOW"

    def __init__(self, num_npz: int = 8, show_dir: str | None = None, out_dir: str | None = None):
        self.num_npz = num_npz
        self.show_dir = show_dir
        self.out_dir = out_dir
        self._count = 0

    def before_test(self, runner) -> None:
        self._count = 0

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        for sample in outputs or []:
            save_npz = self._count < self.num_npz
            self._count += 1
            if not (save_npz or self.show_dir):
                continue  # nothing to save: the image is not read again
            name = Path(sample.metainfo["img_path"]).stem
            bgr = cv2.imread(sample.metainfo["img_path"], cv2.IMREAD_COLOR)
            if bgr is None:
                raise InputError(f"cannot read test image {sample.metainfo['img_path']}")
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            arrays = arrays_from_sample(sample)
            if save_npz:
                out_dir = self.out_dir or Path(runner.work_dir) / "predictions"
                path = Path(out_dir) / f"{name}.npz"
                save_predictions_npz(path, rgb, name=name, **arrays)
            if self.show_dir:
                panel = cv2.cvtColor(sample_panel(rgb, **arrays), cv2.COLOR_RGB2BGR)
                ok, png = cv2.imencode(".png", panel)
                if not ok:
                    raise RuntimeError(f"cannot encode the panel of {name}")
                write_bytes_atomic(Path(self.show_dir) / f"{name}.png", png.tobytes())
