# CMIM paper, ImageNet: binary ResNet-18 (irnet) + CMIM (the paper's flip critic).
_base_ = [
    "../_base_/models/bin_r18_cls.py",
    "../_base_/datasets/imagenet.py",
    "../_base_/schedules/imagenet_100e.py",
    "../_base_/default_runtime.py",
]
model = dict(backbone=dict(binarizer="irnet"), num_classes=1000, cmim_lambda=2.5e-5)
