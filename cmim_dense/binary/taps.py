"""Activation taps: read (a_F, a_B) pairs of chosen binary convs from one forward pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from cmim_dense.binary.conv import BinaryConv2d


class ActivationTaps:
    """Records the latent real and binary input activations of ``layers``.

    While attached, every forward of a tapped layer appends, in layer order, a pair
    ``(a_F, a_B)`` of shape (N, D) each: the activation average-pooled to
    ``pool_size`` x ``pool_size`` (None: no pooling) and flattened, D = C_in * pool_size^2.
    Pooling keeps the memory of the loss bounded at ImageNet resolution; at full
    resolution a_B is exactly sign(a_F) (Eq. 11 of the CMIM paper), pooled it is the
    local fraction of +1s, in [-1, 1]. Records keep their autograd graph.

    Use as a context manager, or call :meth:`attach` / :meth:`detach`; :meth:`pop` returns
    and clears the records of the last forward.
    """

    def __init__(self, layers: Sequence[BinaryConv2d], pool_size: int | None = 4):
        if not layers:
            raise ValueError("ActivationTaps needs at least one BinaryConv2d to tap")
        self.layers = list(layers)
        self.pool_size = pool_size
        self._records: dict[int, tuple[Tensor, Tensor]] = {}
        self._index = {id(layer): i for i, layer in enumerate(self.layers)}

    def _reduce(self, a: Tensor) -> Tensor:
        if self.pool_size is not None and a.shape[-2:] != (self.pool_size, self.pool_size):
            a = F.adaptive_avg_pool2d(a, self.pool_size)
        return a.flatten(1)

    def __call__(self, layer: BinaryConv2d, a_real: Tensor, a_bin: Tensor) -> None:
        self._records[self._index[id(layer)]] = (self._reduce(a_real), self._reduce(a_bin))

    def attach(self) -> ActivationTaps:
        for layer in self.layers:
            layer.tap = self
        return self

    def detach(self) -> None:
        for layer in self.layers:
            layer.tap = None
        self._records.clear()

    def pop(self) -> list[tuple[Tensor, Tensor]]:
        """The (a_F, a_B) pairs of the last forward, shallow to deep; clears them."""
        missing = [i for i in range(len(self.layers)) if i not in self._records]
        if missing:
            raise RuntimeError(f"tapped layers {missing} did not run in the last forward")
        records = [self._records[i] for i in range(len(self.layers))]
        self._records.clear()
        return records

    def __enter__(self) -> ActivationTaps:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()
