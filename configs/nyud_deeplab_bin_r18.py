# The main job: DeepLabV3 (ASPP) heads for NYUD-v2 40-class segmentation and depth on a
# frozen binary ResNet-18 at output stride 8, the CMIM paper's transfer recipe (Sec. 4.5).
# Point it at a pretraining checkpoint (backbone.* keys), e.g.
#   python tools/train.py configs/nyud_deeplab_bin_r18.py \
#       --cfg-options model.backbone.pretrained=work_dirs/imagenet_bin_r18_irnet_cmim/best_top1_epoch_100.pth
_base_ = [
    "./_base_/models/deeplabv3_bin_r18.py",
    "./_base_/datasets/nyud.py",
    "./_base_/schedules/nyud_30k.py",
    "./_base_/default_runtime.py",
]
val_evaluator = dict(_delete_=True, type="DenseMetric", depth_reduction="pooled")
test_evaluator = val_evaluator
# mmseg's SegLocalVisualizer drawing segmentation and depth in NYU40 colours: what
# mmseg.apis.MMSegInferencer and show_result_pyplot need.
visualizer = dict(type="DenseLocalVisualizer")
