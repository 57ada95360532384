"""A label-free view of any classification dataset, for self-supervised pretraining (S2-BNN)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from cmim_dense.registry import DATASETS
from cmim_dense.utils.errors import InputError


@DATASETS.register_module()
class UnlabeledDataset(Dataset):
    """Drops the labels (and the class names) of a dataset whose samples are dicts.

    Sample: ``dict(inputs=..., index=int)`` with ``inputs`` (3, H, W) for one view or
    (num_views, 3, H, W) for several. Each view is a fresh call of the wrapped dataset's
    ``__getitem__``, so the views differ by its random training augmentation (an image file is
    read once per view). ``metainfo`` is empty: there are no classes, so
    :class:`~cmim_dense.engine.NumClassesCheckHook` has nothing to compare.

    Args:
        dataset: the wrapped dataset or its config, e.g.
            ``dict(type='ImageFolderClassification', data_root=..., split='train')``.
        num_views: augmented views per sample (2 for a contrastive term).
    """

    def __init__(self, dataset: Dataset | dict, num_views: int = 1):
        if num_views < 1:
            raise InputError(f"num_views must be >= 1, got {num_views}")
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset
        self.num_views = num_views

    @property
    def metainfo(self) -> dict:
        return {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        views = [self.dataset[index]["inputs"] for _ in range(self.num_views)]
        inputs = views[0] if self.num_views == 1 else torch.stack(views)
        return dict(inputs=inputs, index=index)
