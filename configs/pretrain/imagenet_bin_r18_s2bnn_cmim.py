# S2-BNN (Shen et al. CVPR 2021): label-free pretraining of a ReActNet-style binary ResNet-18 by
# matching the prediction distribution of a frozen real-valued self-supervised teacher
# (guided distribution calibration), + CMIM (the paper's flip critic). Labels in the data are never read.
#
# Teacher: the paper's MoCo v2 ResNet-50 (800 epochs, moco_v2_800ep_pretrain.pth.tar) with its
# 2048-2048-128 projection head; its keys sit under 'module.encoder_q.'. Nothing is downloaded:
# place the file at the placeholder path below or point to it with
#   --cfg-options model.teacher.checkpoint=/path/to/moco_v2_800ep_pretrain.pth.tar
# Any timm architecture works (model.teacher.arch, .prefix, .mlp_hidden; num_classes = its
# output size; normalize=False for a teacher that outputs class logits).
#
# Recipe of the public S2-BNN code ("distillation only"): softmax temperature 0.2 on L2-normalised
# outputs, an MLP student head, Adam lr 3e-4, no weight decay, cosine, 200 epochs, batch 256.
# No validation: the outputs are embeddings, not classes; evaluate by linear probing or transfer.
# An optional in-batch contrastive term needs two views per image:
#   --cfg-options model.contrastive_weight=1.0 train_dataloader.dataset.num_views=2
_base_ = [
    "../_base_/models/bin_r18_cls.py",
    "../_base_/datasets/imagenet.py",
    "../_base_/schedules/imagenet_100e.py",
    "../_base_/default_runtime.py",
]
model = dict(
    type="S2BNNClassifier",
    backbone=dict(binarizer="react", block="react"),
    num_classes=128,
    cmim_lambda=2.5e-5,
    teacher=dict(
        arch="resnet50",
        checkpoint="data/teachers/resnet50_ssl.pth",
        prefix="module.encoder_q.",
        mlp_hidden=2048,
    ),
    distill=dict(type="DistributionLoss", temperature=0.2),
    normalize=True,
    head_hidden=512,
    contrastive_weight=0.0,
    contrastive_temperature=0.2,
)
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type="UnlabeledDataset",
        num_views=1,
        dataset=dict(
            type="ImageFolderClassification", data_root="data/imagenet", split="train", img_size=224
        ),
    )
)
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
optim_wrapper = dict(
    _delete_=True, type="OptimWrapper", optimizer=dict(type="Adam", lr=3e-4, weight_decay=0.0)
)
param_scheduler = [dict(type="CosineAnnealingLR", T_max=200, by_epoch=True, eta_min=0)]
train_cfg = dict(max_epochs=200, val_interval=1)
default_hooks = dict(checkpoint=dict(save_best=None))
