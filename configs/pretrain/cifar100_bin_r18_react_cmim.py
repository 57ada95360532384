# CMIM paper, CIFAR-100: ReActNet-style binary ResNet-18 (RSign + RPReLU) + CMIM, lambda 2.5e-5.
# Optimizer: ReActNet's Adam, lr 5e-4, no weight decay (as configs/pretrain/imagenet_*_react_*).
_base_ = [
    "../_base_/models/bin_r18_cls.py",
    "../_base_/datasets/cifar100.py",
    "../_base_/schedules/cifar_400e.py",
    "../_base_/default_runtime.py",
]
model = dict(
    backbone=dict(binarizer="react", block="react", stem="cifar"),
    num_classes=100,
    cmim_lambda=2.5e-5,
)
optim_wrapper = dict(
    _delete_=True, type="OptimWrapper", optimizer=dict(type="Adam", lr=5e-4, weight_decay=0.0)
)
