# CMIM paper, CIFAR-100: binary ResNet-18 (AdaBin sets {beta -/+ alpha}, Maxout after each
# residual add) + CMIM, lambda 2.5e-5. AdaBin's public CIFAR recipe is this schedule already:
# SGD lr 0.1, momentum 0.9, wd 1e-4, cosine, 400 epochs.
_base_ = [
    "../_base_/models/bin_r18_cls.py",
    "../_base_/datasets/cifar100.py",
    "../_base_/schedules/cifar_400e.py",
    "../_base_/default_runtime.py",
]
model = dict(
    backbone=dict(binarizer="adabin", block="adabin", stem="cifar"),
    num_classes=100,
    cmim_lambda=2.5e-5,
)
