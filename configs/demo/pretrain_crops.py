# Demo pretraining: a narrow binary ResNet-18 (IR-Net) with the paper's CMIM on the synthetic
# object crops (tools/make_synth_nyud.py), sized for 2 CPU cores (about 6,600 crops, 8 epochs).
# tools/demo.py runs it with model.cmim_lambda=1e-4 (this config's value, the best of the demo
# sweep in the README) and with 0 (the baseline dot of Fig. 5). In-batch negatives; Adam.
_base_ = ["../_base_/models/bin_r18_cls.py", "../_base_/default_runtime.py"]
crops_root = "data/synth_nyud/raw/crops"
num_classes = 9
img_size = 32
model = dict(
    backbone=dict(base_channels=16, binarizer="irnet"),
    num_classes=num_classes,
    cmim_lambda=1e-4,
    cmim=dict(critic="flip", n_nce=0),
    tap_size=2,
)
dataset = dict(type="ImageFolderClassification", data_root=crops_root, img_size=img_size)
train_dataloader = dict(
    batch_size=64,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=True),
    collate_fn=dict(type="default_collate"),
    dataset=dict(dataset, split="train", scale=(0.5, 1.0)),
)
# Evaluated once, by tools/test.py after training (no validation pass during training).
test_dataloader = dict(
    batch_size=128,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="default_collate"),
    dataset=dict(dataset, split="val", crop_pct=1.0),
)
test_evaluator = dict(type="TopKAccuracy", topk=(1, 5))
val_dataloader = None
val_evaluator = None
val_cfg = None
max_epochs = 8
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="Adam", lr=2e-3, weight_decay=0.0))
param_scheduler = [dict(type="CosineAnnealingLR", T_max=max_epochs, by_epoch=True, eta_min=0)]
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs)
test_cfg = dict(type="TestLoop")
log_processor = dict(by_epoch=True, window_size=10)
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=10),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(
        type="SafeCheckpointHook", interval=max_epochs, max_keep_ckpts=1, save_last=True
    ),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
