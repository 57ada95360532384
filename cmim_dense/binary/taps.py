"""Activation taps: read (a_F, a_B) pairs of chosen binary convs from one forward pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cmim_dense.binary.conv import BinaryConv2d
from cmim_dense.utils.errors import InputError

REDUCTIONS = ("sample", "avgpool", None)


class ActivationTaps:
    """Records the latent real activation a_F and its sign a_B of ``layers``.

    a_F = u is the tensor each layer's binarizer takes the sign of and a_B = sign(u), both
    (N, C_in, H, W) (see :class:`~cmim_dense.binary.BinaryConv2d`). While attached, every
    forward of a tapped layer records, in layer order, a pair ``(a_F, a_B)`` of shape (N, D)
    each, reduced by ``reduce``:

    ``'sample'``: the same ``size**2`` spatial positions of a_F and a_B, drawn afresh every
        step (shared by all samples of the batch, so rows stay comparable), D = C_in * size^2.
        It keeps a_B = sign(a_F) entry by entry, the paper's Eq. 11, so the positive score of
        the flip critic is exactly ||a_F||_1. Positions are drawn without replacement when the
        map has at least ``size**2`` of them, and with replacement otherwise.
    ``'avgpool'``: both average-pooled to size x size, D = C_in * size^2. Pooled, a_B is the
        local fraction of +1s in [-1, 1], no longer sign(a_F).
    ``None``: full resolution, D = C_in * H * W.

    The positions of step ``s`` come from a generator seeded with ``(seed, s, layer)`` (see
    :meth:`begin_step`), so a resumed run draws what the uninterrupted run drew. Records keep
    their autograd graph. Use as a context manager, or call :meth:`attach` / :meth:`detach`;
    :meth:`pop` returns and clears the records of the last forward.
    """

    def __init__(
        self, layers: Sequence[BinaryConv2d], reduce: str | None = "sample", size: int = 4
    ):
        if not layers:
            raise InputError("ActivationTaps needs at least one BinaryConv2d to tap")
        if reduce not in REDUCTIONS:
            raise InputError(f"tap reduction must be one of {REDUCTIONS}, got {reduce!r}")
        if reduce is not None and size < 1:
            raise InputError(f"tap size must be >= 1, got {size}")
        self.layers = list(layers)
        self.reduce = reduce
        self.size = size
        self._records: dict[int, tuple[Tensor, Tensor]] = {}
        self._index = {id(layer): i for i, layer in enumerate(self.layers)}
        self._generator = torch.Generator()
        self._step_seed = 0

    def dims(self) -> list[int]:
        """D of each tapped layer for the fixed-size reductions (not for ``reduce=None``)."""
        if self.reduce is None:
            raise InputError("full-resolution taps have no fixed size; D depends on H, W")
        return [layer.in_channels * self.size**2 for layer in self.layers]

    def begin_step(self, seed: int, step: int) -> None:
        """Choose the sampled positions of the next forward: a function of (seed, step) only."""
        self._step_seed = (seed * 1_000_003 + step) * len(self.layers)

    def _positions(self, layer_index: int, num: int, device: torch.device) -> Tensor:
        self._generator.manual_seed((self._step_seed + layer_index) % 2**63)
        count = self.size**2
        if num >= count:
            idx = torch.randperm(num, generator=self._generator)[:count]
        else:
            idx = torch.randint(num, (count,), generator=self._generator)
        if device.type == "cuda":  # a copy from pinned memory does not wait for the GPU
            return idx.pin_memory().to(device, non_blocking=True)
        return idx

    def _reduce(self, a: Tensor, positions: Tensor | None) -> Tensor:
        if self.reduce == "avgpool" and a.shape[-2:] != (self.size, self.size):
            a = F.adaptive_avg_pool2d(a, self.size)
        if positions is not None:
            return a.flatten(2).index_select(2, positions).flatten(1)
        return a.flatten(1)

    def __call__(self, layer: BinaryConv2d, a_real: Tensor, a_bin: Tensor) -> None:
        i = self._index[id(layer)]
        positions = None
        if self.reduce == "sample":
            positions = self._positions(i, a_real.shape[-2] * a_real.shape[-1], a_real.device)
        self._records[i] = (self._reduce(a_real, positions), self._reduce(a_bin, positions))

    def attach(self) -> ActivationTaps:
        for layer in self.layers:
            layer.tap = self
        return self

    def detach(self) -> None:
        for layer in self.layers:
            layer.tap = None
        self._records.clear()

    def pop(self) -> list[tuple[Tensor, Tensor]]:
        """The (a_F, a_B) pairs of the last forward, in layer order; clears them."""
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
