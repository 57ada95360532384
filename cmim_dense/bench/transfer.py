"""The frozen-backbone saving: a transfer step with the backbone frozen against fine-tuned."""

from __future__ import annotations

import torch

from cmim_dense.bench.timing import dense_batch, train_step
from cmim_dense.engine.config import build_model, load_config


def transfer_steps(
    config: str, batch_size: int, height: int, width: int, backend: str = "torch"
) -> dict:
    """One training step of the config's dense model, frozen backbone vs full fine-tuning.

    ``backend``: how the frozen model runs its backbone (``'openvino'``: bit-packed, see
    :class:`~cmim_dense.models.MultiTaskDense`); fine-tuning always runs it in PyTorch.
    """
    cfg = load_config(config)
    num_classes = cfg.model.seg_head.num_classes if cfg.model.get("seg_head") else 1
    batch = dense_batch(batch_size, height, width, num_classes)
    steps = {}
    for name, freeze in (("frozen", True), ("finetune", False)):
        torch.manual_seed(0)
        options = {
            "model.freeze_backbone": freeze,
            "model.backbone_backend": backend if freeze else "torch",
            "model.backbone.pretrained": None,
            "model.backbone.init_cfg": None,
        }
        steps[name] = train_step(build_model(cfg, cfg_options=options), batch)
    return steps
