# CMIM paper, CIFAR-10: binary ResNet-18 (IR-Net) + CMIM, lambda 2.5e-5, 400 epochs.
_base_ = [
    "../_base_/models/bin_r18_cls.py",
    "../_base_/datasets/cifar10.py",
    "../_base_/schedules/cifar_400e.py",
    "../_base_/default_runtime.py",
]
model = dict(backbone=dict(stem="cifar"), num_classes=10, cmim_lambda=2.5e-5)
