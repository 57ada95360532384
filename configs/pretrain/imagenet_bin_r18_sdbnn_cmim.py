# CMIM paper, ImageNet: binary ResNet-18 (SD-BNN: learnable activation and weight shifts, no
# scales) + CMIM (the paper's flip critic). SD-BNN's own optimizer settings could not be checked here, so
# the CMIM schedule (SGD lr 0.1, wd 1e-4, cosine, 100 epochs) is used.
_base_ = [
    "../_base_/models/bin_r18_cls.py",
    "../_base_/datasets/imagenet.py",
    "../_base_/schedules/imagenet_100e.py",
    "../_base_/default_runtime.py",
]
model = dict(backbone=dict(binarizer="sdbnn"), num_classes=1000, cmim_lambda=2.5e-5)
