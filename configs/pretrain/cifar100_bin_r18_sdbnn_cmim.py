# CMIM paper, CIFAR-100: binary ResNet-18 (SD-BNN: learnable activation and weight shifts,
# no scales) + CMIM, lambda 2.5e-5. SD-BNN's own optimizer settings could not be checked here, so
# the CMIM schedule (SGD lr 0.1, wd 1e-4, cosine, 400 epochs) is used.
_base_ = [
    "../_base_/models/bin_r18_cls.py",
    "../_base_/datasets/cifar100.py",
    "../_base_/schedules/cifar_400e.py",
    "../_base_/default_runtime.py",
]
model = dict(backbone=dict(binarizer="sdbnn", stem="cifar"), num_classes=100, cmim_lambda=2.5e-5)
