"""Losses: CMIM and distillation."""

from cmim_dense.losses.depth import MaskedL1Loss  # noqa: F401
