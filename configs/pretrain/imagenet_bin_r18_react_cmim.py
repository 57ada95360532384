# CMIM paper, ImageNet: ReActNet-style binary ResNet-18 (RSign + RPReLU) + CMIM, Adam.
_base_ = [
    "../_base_/models/bin_r18_cls.py",
    "../_base_/datasets/imagenet.py",
    "../_base_/schedules/imagenet_100e.py",
    "../_base_/default_runtime.py",
]
model = dict(backbone=dict(binarizer="react", block="react"), num_classes=1000, cmim_lambda=2.5e-5)
optim_wrapper = dict(
    _delete_=True, type="OptimWrapper", optimizer=dict(type="Adam", lr=5e-4, weight_decay=0.0)
)
