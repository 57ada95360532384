# Segmentation only: the main job without the depth head.
_base_ = ["./nyud_deeplab_bin_r18.py"]
model = dict(depth_head=None)
