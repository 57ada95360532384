# Depth only: the main job without the segmentation head.
_base_ = ["./nyud_deeplab_bin_r18.py"]
model = dict(seg_head=None)
