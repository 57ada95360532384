# CMIM paper Sec. 4.5: heads only, lr 0.001 divided by 10 every 10k iterations.
optim_wrapper = dict(
    type="OptimWrapper", optimizer=dict(type="SGD", lr=0.001, momentum=0.9, weight_decay=1e-4)
)
param_scheduler = [
    dict(type="MultiStepLR", by_epoch=False, milestones=[10000, 20000], gamma=0.1),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=30000, val_interval=2000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
log_processor = dict(by_epoch=False, window_size=20)
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="SafeCheckpointHook", by_epoch=False, interval=2000, max_keep_ckpts=3),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
