# CMIM paper, ImageNet: binary ResNet-18 (LNS: learned weight binarization supervised by the
# noisy labels sign(W)) + CMIM, plus LNS's noisy-label loss with weight 1 (our choice; see the
# CIFAR-100 config). LNS fine-tunes a trained BNN: set load_from=<baseline checkpoint> for that.
_base_ = [
    "../_base_/models/bin_r18_cls.py",
    "../_base_/datasets/imagenet.py",
    "../_base_/schedules/imagenet_100e.py",
    "../_base_/default_runtime.py",
]
model = dict(backbone=dict(binarizer="lns"), num_classes=1000, cmim_lambda=2.5e-5, lns_weight=1.0)
