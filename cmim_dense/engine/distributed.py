"""Distributed training without CUDA: torchrun processes on CPUs with the gloo backend."""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS

from cmim_dense.utils.errors import InputError


# In mmengine's root registry, not the project's: the Runner looks the wrapper type up with
# ``MODEL_WRAPPERS.get`` on the root, which sees neither the default scope nor grandchildren.
@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """MMDistributedDataParallel for CPU processes: SyncBN layers become BN first.

    torch's SyncBatchNorm needs CUDA (DDP refuses it on CPU), so this does what the Runner
    does for a non-distributed run; each process then keeps its own BN statistics.
    """

    def __init__(self, module: torch.nn.Module, **kwargs):
        super().__init__(module=revert_sync_batchnorm(module), **kwargs)


def init_cpu_distributed(cfg: Config) -> None:
    """Start the torchrun process group of a ``--launcher pytorch`` run without CUDA.

    mmengine 0.10.7's pytorch launcher calls ``torch.cuda.set_device`` and wraps the model in
    DDP with ``device_ids=[LOCAL_RANK]``; both fail on CPU. A group started here makes the
    Runner skip its own ``init_dist``, and :class:`CPUDistributedDataParallel` without
    ``device_ids`` gives CPU DDP.
    """
    if cfg.launcher != "pytorch" or torch.cuda.is_available():
        return
    dist_cfg = cfg.get("env_cfg", {}).get("dist_cfg", {})
    backend = dist_cfg.get("backend", "nccl")
    if backend == "nccl":
        raise InputError(
            "NCCL needs CUDA; for CPU processes add --cfg-options env_cfg.dist_cfg.backend=gloo"
        )
    if not dist.is_initialized():
        timeout = dist_cfg.get("timeout")
        kwargs = dict(timeout=datetime.timedelta(seconds=timeout)) if timeout else {}
        dist.init_process_group(backend=backend, **kwargs)
    cfg.setdefault(
        "model_wrapper_cfg",
        dict(
            type="CPUDistributedDataParallel",
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get("find_unused_parameters", False),
        ),
    )
