"""NYUD-v2 semantic segmentation + depth datasets (40 and 13 classes) for mmseg.

Expects the tree written by ``tools/prepare_nyud.py``::

    data/nyud/images/{train,test}/0001.png       RGB, uint8
    data/nyud/annotations/{train,test}/0001.png  uint8 class ids 0..C-1, 255 = void
    data/nyud/depth/{train,test}/0001.png        uint16 millimetres, 0 = invalid

Each sample gets ``img_path``, ``seg_map_path`` and ``depth_map_path``, so mmseg's
``LoadAnnotations`` and ``LoadDepthAnnotation(depth_rescale_factor=1e-3)`` give ``gt_seg_map``
(H, W) and ``gt_depth_map`` (H, W) float32 metres, and ``PackSegInputs`` packs them as
``gt_sem_seg`` and ``gt_depth_map``.
"""

from __future__ import annotations

import os
import os.path as osp

from mmengine import fileio
from mmseg.datasets import BaseSegDataset

from cmim_dense.nyud_io.classes import NYUD13_CLASSES, NYUD40_CLASSES
from cmim_dense.registry import DATASETS
from cmim_dense.utils.errors import InputError


@DATASETS.register_module()
class NYUDv2Dataset(BaseSegDataset):
    """NYUD-v2 with 40-class segmentation maps and depth maps (795 train / 654 test frames).

    Args:
        data_prefix: folders under ``data_root`` of images, annotations and depth maps.
        img_suffix, seg_map_suffix, depth_map_suffix: file endings.
        **kwargs: the rest of :class:`mmseg.datasets.BaseSegDataset`'s arguments.
    """

    METAINFO = dict(classes=NYUD40_CLASSES)

    def __init__(
        self,
        data_prefix: dict | None = None,
        img_suffix: str = ".png",
        seg_map_suffix: str = ".png",
        depth_map_suffix: str = ".png",
        **kwargs,
    ) -> None:
        if data_prefix is None:
            data_prefix = dict(
                img_path="images/train",
                seg_map_path="annotations/train",
                depth_map_path="depth/train",
            )
        self.depth_map_suffix = depth_map_suffix
        super().__init__(
            data_prefix=data_prefix,
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            **kwargs,
        )

    def load_data_list(self) -> list[dict]:
        """Image and segmentation entries from mmseg, plus ``depth_map_path`` beside each.

        Raises InputError naming the folder if a data folder is missing or has no
        image (mmseg would fail later, far from the cause).
        """
        for key, folder in self.data_prefix.items():
            if folder and not fileio.isdir(folder, backend_args=self.backend_args):
                raise InputError(
                    f"{type(self).__name__}: {key} folder {folder} not found; "
                    "set data_root or run cmim-dense prepare_nyud"
                )
        data_list = super().load_data_list()
        if not data_list:
            raise InputError(
                f"{type(self).__name__}: no *{self.img_suffix} image in "
                f"{self.data_prefix['img_path']}"
            )
        depth_dir = self.data_prefix.get("depth_map_path")
        if depth_dir:
            img_dir = self.data_prefix["img_path"]
            for info in data_list:
                stem = osp.relpath(info["img_path"], img_dir)[: -len(self.img_suffix)]
                info["depth_map_path"] = osp.join(depth_dir, stem + self.depth_map_suffix)
        self._check_files(data_list)
        return data_list

    def _check_files(self, data_list: list[dict]) -> None:
        """Raise InputError naming the first frame without its label or depth file, or a file
        of another format in a data folder (local folders only)."""
        suffixes = dict(
            img_path=self.img_suffix,
            seg_map_path=self.seg_map_suffix,
            depth_map_path=self.depth_map_suffix,
        )
        for key, suffix in suffixes.items():
            folder = self.data_prefix.get(key)
            if not folder or not osp.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):
                if not name.startswith(".") and not name.endswith(suffix):
                    raise InputError(
                        f"{type(self).__name__}: {osp.join(folder, name)} is not a *{suffix} "
                        "file; the data folders hold only the prepared frames"
                    )
            for info in data_list:
                path = info.get(key)
                if path and not osp.isfile(path):
                    raise InputError(
                        f"{type(self).__name__}: {path} is missing (the {key.split('_')[0]} "
                        f"of {osp.basename(info['img_path'])})"
                    )


@DATASETS.register_module()
class NYUDv2Dataset13(NYUDv2Dataset):
    """NYUD-v2 with the 13-class maps written by ``tools/prepare_nyud.py --classes 13``."""

    METAINFO = dict(classes=NYUD13_CLASSES)
