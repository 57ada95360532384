# CMIM paper, CIFAR-100: binary ResNet-18 (Bi-Real: ApproxSign, sign(W) * mean|W|) + CMIM, lambda 2.5e-5.
_base_ = [
    "../_base_/models/bin_r18_cls.py",
    "../_base_/datasets/cifar100.py",
    "../_base_/schedules/cifar_400e.py",
    "../_base_/default_runtime.py",
]
model = dict(backbone=dict(binarizer="bireal", stem="cifar"), num_classes=100, cmim_lambda=2.5e-5)
