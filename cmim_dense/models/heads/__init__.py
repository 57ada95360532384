"""Dense-prediction heads."""

from cmim_dense.models.heads.depth_aspp_head import DepthASPPHead, DepthDepthwiseSeparableASPPHead

__all__ = ["DepthASPPHead", "DepthDepthwiseSeparableASPPHead"]
