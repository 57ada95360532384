# CMIM paper, ImageNet: binary ResNet-18 (RBNN, bi-rotated weights) + CMIM (the paper's flip critic).
# RBNN's public ImageNet recipe is SGD lr 0.1, wd 1e-4, cosine, batch 256 (this schedule) for
# 120 epochs; we keep the CMIM paper's 100. Rotations are re-solved before every epoch.
# mmengine replaces lists on merge, so the default runtime's two hooks are listed again.
_base_ = [
    "../_base_/models/bin_r18_cls.py",
    "../_base_/datasets/imagenet.py",
    "../_base_/schedules/imagenet_100e.py",
    "../_base_/default_runtime.py",
]
model = dict(backbone=dict(binarizer="rbnn"), num_classes=1000, cmim_lambda=2.5e-5)
custom_hooks = [
    dict(type="BinarizerProgressHook", interval=100),
    dict(type="NumClassesCheckHook"),
    dict(type="RBNNRotationHook", epoch_interval=1, num_steps=3),
]
