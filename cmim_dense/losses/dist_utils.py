"""Gather batch rows across DDP ranks for contrastive negatives.

``torch.distributed.all_gather`` returns tensors with no autograd history and needs equal
shapes on every rank, so we pad to the largest local batch and put the local tensor (with its
graph) back into its own slot. Gradients therefore flow only into the local slice: each rank
back-propagates its own anchors against everyone's candidates, the usual MoCo/CRD trade-off.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from mmengine.dist import get_dist_info
from torch import Tensor


def batch_sizes(n: int, device: torch.device | str) -> list[int]:
    """Local batch size of every rank, in rank order ([n] when not distributed)."""
    _, world = get_dist_info()
    if world == 1:
        return [n]
    local = torch.tensor([n], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(sizes, local)
    return [int(s) for s in sizes]


def gather_cat(x: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate ``x`` (n_r, ...) of all ranks along dim 0, in rank order.

    Args:
        x: the local rows; only they keep their autograd graph in the result.
        sizes: every rank's row count, from :func:`batch_sizes`.

    Returns:
        (sum(sizes), ...) tensor; ``x`` itself when not distributed.
    """
    rank, world = get_dist_info()
    if world == 1:
        return x
    if x.shape[0] != sizes[rank]:
        raise ValueError(f"gather_cat: local rows {x.shape[0]} != sizes[{rank}] = {sizes[rank]}")
    longest = max(sizes)
    padded = x.detach().new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    rows = [part[:size] for part, size in zip(parts, sizes)]
    rows[rank] = x
    return torch.cat(rows)


def rank_offset(sizes: list[int]) -> int:
    """Row of this rank's first sample in the gathered batch."""
    rank, _ = get_dist_info()
    return sum(sizes[:rank])


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over ranks (a new tensor; ``x`` when not distributed)."""
    _, world = get_dist_info()
    if world == 1:
        return x
    out = x.detach().clone()
    dist.all_reduce(out)
    return out / world
