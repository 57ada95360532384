# CMIM paper, CIFAR-100: binary ResNet-18 (LNS: learned weight binarization supervised by the
# noisy labels sign(W)) + CMIM, lambda 2.5e-5, plus LNS's noisy-label loss with weight 1 (the paper
# adds it to the task loss; no other weight could be checked, so 1.0 is our choice).
# LNS fine-tunes a trained BNN (paper, CIFAR: 120 epochs, SGD lr 0.01 decayed x0.1); to do so set
# load_from=<baseline checkpoint>. Weight decay 0 as in the paper's CIFAR runs.
_base_ = [
    "../_base_/models/bin_r18_cls.py",
    "../_base_/datasets/cifar100.py",
    "../_base_/schedules/cifar_400e.py",
    "../_base_/default_runtime.py",
]
model = dict(
    backbone=dict(binarizer="lns", stem="cifar"),
    num_classes=100,
    cmim_lambda=2.5e-5,
    lns_weight=1.0,
)
optim_wrapper = dict(optimizer=dict(weight_decay=0.0))
