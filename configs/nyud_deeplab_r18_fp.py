# The real-valued upper bound: mmseg's ResNet-18 (torchvision layout) at output stride 8,
# frozen, with the same heads. Point it at your ImageNet weights, e.g. torchvision's
# resnet18 state dict saved to a file (nothing is downloaded):
#   --cfg-options model.backbone.pretrained=data/weights/resnet18-f37072fd.pth
_base_ = ["./nyud_deeplab_bin_r18.py"]
model = dict(
    backbone=dict(
        _delete_=True,
        type="ResNet",
        depth=18,
        strides=(1, 2, 1, 1),
        dilations=(1, 1, 2, 4),
        contract_dilation=True,
        norm_cfg=dict(type="BN", requires_grad=True),
        norm_eval=True,
        style="pytorch",
        pretrained=None,
    )
)
