"""Losses: CMIM, distillation, masked depth L1."""

from cmim_dense.losses.cmim import CMIMLoss, mi_lower_bound, nce_objective
from cmim_dense.losses.depth import MaskedL1Loss
from cmim_dense.losses.distill import DistributionLoss

__all__ = ["CMIMLoss", "DistributionLoss", "MaskedL1Loss", "mi_lower_bound", "nce_objective"]
