# DeepLabV3+: depthwise-separable ASPP plus a decoder on the stride-4 stage-1 features
# (64 channels in ResNet-18), for both tasks.
_base_ = ["./nyud_deeplab_bin_r18.py"]
v3plus = dict(in_index=3, c1_in_channels=64, c1_channels=48)
model = dict(
    seg_head=dict(type="SegDepthwiseSeparableASPPHead", **v3plus),
    depth_head=dict(type="DepthDepthwiseSeparableASPPHead", **v3plus),
)
