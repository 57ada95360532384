# CMIM paper, CIFAR-100: binary ResNet-18 with unbalanced activations (Kim et al. 2021):
# Bi-Real with the sign threshold shifted, sign(a - theta), + CMIM, lambda 2.5e-5.
# The paper sweeps fixed shifts and gives no single default; theta = 0.2 (more -1 than +1) is
# our pick: sweep it with --cfg-options model.backbone.binarizer.theta=VALUE.
_base_ = [
    "../_base_/models/bin_r18_cls.py",
    "../_base_/datasets/cifar100.py",
    "../_base_/schedules/cifar_400e.py",
    "../_base_/default_runtime.py",
]
model = dict(
    backbone=dict(
        binarizer=dict(_delete_=True, type="threshold_shift", base="bireal", theta=0.2),
        stem="cifar",
    ),
    num_classes=100,
    cmim_lambda=2.5e-5,
)
