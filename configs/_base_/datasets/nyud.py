# NYUD-v2: 40-class segmentation + depth, prepared by tools/prepare_nyud.py into data/nyud.

dataset_type = "NYUDv2Dataset"
data_root = "data/nyud"
crop_size = (480, 640)  # (h, w)
meta_keys = (
    "img_path",
    "seg_map_path",
    "depth_map_path",
    "ori_shape",
    "img_shape",
    "pad_shape",
    "scale_factor",
    "flip",
    "flip_direction",
    "reduce_zero_label",
)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="LoadDepthAnnotation", depth_rescale_factor=1e-3),
    # No random rescaling: it changes the apparent distance of everything in the image, and on
    # the demo it cost mIoU and RMSE even with the depth values rescaled by 1/s
    # (RandomResizeDepth; see the README's transfer protocol). Flip and colour only.
    dict(type="Resize", scale=(640, 480), keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs", meta_keys=meta_keys),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(640, 480), keep_ratio=True),
    # annotations load after Resize: evaluation uses full-resolution ground truth
    dict(type="LoadAnnotations"),
    dict(type="LoadDepthAnnotation", depth_rescale_factor=1e-3),
    dict(type="PackSegInputs", meta_keys=meta_keys),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(
            img_path="images/train", seg_map_path="annotations/train", depth_map_path="depth/train"
        ),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        test_mode=True,
        data_prefix=dict(
            img_path="images/test", seg_map_path="annotations/test", depth_map_path="depth/test"
        ),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
