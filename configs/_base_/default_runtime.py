# Runtime shared by every config: registries, hooks, logging, seeding.
default_scope = "cmim_dense"
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    # timeout: seconds a collective waits for the other ranks before the run stops with an
    # error naming the rank that did not answer (a hung or stopped process).
    dist_cfg=dict(backend="nccl", timeout=1800),
)
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
custom_hooks = [
    dict(type="BinarizerProgressHook", interval=100),
    dict(type="NumClassesCheckHook"),
]
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="Visualizer", vis_backends=vis_backends)
