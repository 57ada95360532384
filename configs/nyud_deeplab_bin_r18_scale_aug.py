# The main job with the random scale augmentation of the usual mmseg recipe, made physically
# consistent: enlarging the image by s shows the scene as if from s times closer, so
# RandomResizeDepth also divides the depth values by s. Against flips only on the demo (README,
# transfer protocol) it lost on mIoU and RMSE, so the main config does not use it.
_base_ = ["./nyud_deeplab_bin_r18.py"]
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="LoadDepthAnnotation", depth_rescale_factor=1e-3),
    # scale, crop and flip act on img and on every map in seg_fields (gt_seg_map, gt_depth_map)
    dict(type="RandomResizeDepth", scale=(640, 480), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size={{_base_.crop_size}}, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    # crops of a shrunk image can be smaller than crop_size: the model's DenseDataPreProcessor
    # pads each batch to its size (= crop_size), segmentation with 255 and depth with 0
    dict(type="PackSegInputs", meta_keys={{_base_.meta_keys}}),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
