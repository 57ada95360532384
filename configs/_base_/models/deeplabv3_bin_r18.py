# DeepLabV3 (ASPP) heads on a frozen binary ResNet-18 at output stride 8, both NYUD tasks.
# SyncBN in the heads becomes BN when not distributed (the Runner reverts it). The heads are
# 128 channels wide, mmseg's own width for ResNet-18 DeepLabV3/FCN configs (the paper gives
# none); the seg head is mmseg's ASPPHead without the per-step training accuracy.
norm_cfg = dict(type="SyncBN", requires_grad=True)
data_preprocessor = dict(
    type="DenseDataPreProcessor",
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    depth_pad_val=0,
    size=(480, 640),
)
model = dict(
    type="MultiTaskDense",
    data_preprocessor=data_preprocessor,
    freeze_backbone=True,
    backbone=dict(
        type="BinaryResNet",
        depth=18,
        binarizer="irnet",
        block="basic",
        output_stride=8,
        pretrained=None,
    ),
    seg_head=dict(
        type="SegASPPHead",
        in_channels=512,
        in_index=3,
        channels=128,
        dilations=(1, 12, 24, 36),
        dropout_ratio=0.1,
        num_classes=40,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True
        ),
    ),
    depth_head=dict(
        type="DepthASPPHead",
        in_channels=512,
        in_index=3,
        channels=128,
        dilations=(1, 12, 24, 36),
        dropout_ratio=0.1,
        max_depth=10.0,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="SiLogLoss", loss_weight=1.0),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)
