# CMIM paper, ImageNet: binary ResNet-18 (AdaBin sets, Maxout after each residual add) + CMIM.
# AdaBin's public ImageNet recipe: SGD lr 0.1, momentum 0.9, weight decay 1e-5, cosine (it runs
# 120 epochs; we keep the CMIM paper's 100).
_base_ = [
    "../_base_/models/bin_r18_cls.py",
    "../_base_/datasets/imagenet.py",
    "../_base_/schedules/imagenet_100e.py",
    "../_base_/default_runtime.py",
]
model = dict(
    backbone=dict(binarizer="adabin", block="adabin"), num_classes=1000, cmim_lambda=2.5e-5
)
optim_wrapper = dict(optimizer=dict(weight_decay=1e-5))
