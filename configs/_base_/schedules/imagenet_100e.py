# CMIM paper, ImageNet: 100 epochs, batch 256, SGD momentum 0.9, wd 1e-4, lr 0.1, cosine.
# Gradient clipping (total norm 5): with SGD at lr 0.1 the literal CMIM loss (an unnormalised
# critic summed over every negative) drives the activations' scale up and diverges; see the
# README's CMIM section.
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=1e-4),
    clip_grad=dict(max_norm=5.0),
)
param_scheduler = [dict(type="CosineAnnealingLR", T_max=100, by_epoch=True, eta_min=0)]
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=100, val_interval=1)
val_cfg = dict(type="ValLoop")
log_processor = dict(by_epoch=True, window_size=20)
test_cfg = dict(type="TestLoop")
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=100),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="SafeCheckpointHook", interval=1, max_keep_ckpts=3, save_best="top1"),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
# The paper's 256 images per step (4 GPUs x 64). Off: lr stays 0.1 whatever the total batch; set
# --cfg-options auto_scale_lr.enable=True to scale lr linearly with the real total batch.
auto_scale_lr = dict(enable=False, base_batch_size=256)
