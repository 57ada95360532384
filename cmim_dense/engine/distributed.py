"""Distributed training without CUDA: torchrun processes on CPUs with the gloo backend."""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS

from cmim_dense.utils.errors import InputError

DEFAULT_TIMEOUT_S = 1800


class CollectiveTimeoutError(InputError):
    """A collective waited longer than ``env_cfg.dist_cfg.timeout`` for another rank."""


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
        timeout = datetime.timedelta(seconds=dist_cfg.get("timeout", DEFAULT_TIMEOUT_S))
        dist.init_process_group(backend=backend, timeout=timeout)
    cfg.setdefault(
        "model_wrapper_cfg",
        dict(
            type="CPUDistributedDataParallel",
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get("find_unused_parameters", False),
        ),
    )


def _process_state(pid: int) -> str:
    """``'stopped'``, ``'gone'`` or ``'running'`` for a process of this machine (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    state = stat.rsplit(")", 1)[1].split()[0]
    return {"T": "stopped", "t": "stopped", "Z": "gone", "X": "gone"}.get(state, "running")


@contextmanager
def collective_faults(timeout_s: float) -> Iterator[None]:
    """Turn a timed-out or broken collective of a distributed run into one line naming the rank
    that did not answer: :class:`CollectiveTimeoutError` (exit 2 in the tools).

    Every rank's host and pid are gathered when the block starts; after a failure the ranks on
    this machine are looked up (stopped by SIGSTOP, gone, or running). Outside a process group
    the block runs unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        yield
        return
    me = dist.get_rank()
    peers: list = [None] * dist.get_world_size()
    dist.all_gather_object(peers, (socket.gethostname(), os.getpid()))
    try:
        yield
    except RuntimeError as err:  # gloo, NCCL: DistBackendError is a RuntimeError
        text = str(err)
        if not any(word in text.lower() for word in ("timed out", "timeout", "closed by peer")):
            raise
        host = socket.gethostname()
        states = [
            f"rank {rank} (pid {pid}) is {_process_state(pid)}"
            for rank, (peer_host, pid) in enumerate(peers)
            if rank != me and peer_host == host and _process_state(pid) != "running"
        ]
        culprit = "; ".join(states) or "another rank did not answer (hung, or on another host)"
        raise CollectiveTimeoutError(
            f"rank {me}: a collective failed after waiting up to {timeout_s:g} s "
            f"(env_cfg.dist_cfg.timeout): {culprit}"
        ) from err
