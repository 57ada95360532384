"""Dense-prediction heads: depth regression and segmentation DeepLab heads."""

from cmim_dense.models.heads.depth_aspp_head import DepthASPPHead, DepthDepthwiseSeparableASPPHead
from cmim_dense.models.heads.seg_heads import SegASPPHead, SegDepthwiseSeparableASPPHead

__all__ = [
    "DepthASPPHead",
    "DepthDepthwiseSeparableASPPHead",
    "SegASPPHead",
    "SegDepthwiseSeparableASPPHead",
]
