"""Step-time benchmarks: CMIM's overhead in pretraining, the frozen-backbone saving, and the
bit-packed OpenVINO backbone against the PyTorch simulation.

Variants are timed *interleaved* (one step of each in turn, the order rotating every
round), so drift in machine load hits all of them alike; we report medians.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from torch import Tensor, nn

from cmim_dense.models.classifier import BinaryImageClassifier

StepFn = Callable[[], None]


def median_step_times(steps: dict[str, StepFn], iters: int = 15, warmup: int = 3) -> dict:
    """Median seconds per call of each step function, timed interleaved.

    Args:
        steps: name -> a function that runs one full training step.
        iters: timed rounds (at least 10).
        warmup: untimed rounds first (allocator, caches, the CMIM bank filling up).
    """
    if iters < 10:
        raise ValueError(f"take at least 10 timed iterations, got {iters}")
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(iters):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _train_step(model: nn.Module, batch: Callable[[], dict]) -> StepFn:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    model.train()

    def step() -> None:
        loss, _ = model.parse_losses(model(**batch(), mode="loss"))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def cmim_steps(batch_size: int, size: int, n_nce: int = 4096, num_classes: int = 100) -> dict:
    """One training step each of a binary ResNet-18 classifier: plain, CMIM flip, CMIM embed.

    The three models have the same architecture and weights, and see the same batch
    (with fresh dataset indices every step, as in an epoch). 32x32 inputs use the CIFAR
    stem, larger ones the ImageNet stem.
    """
    stem = "cifar" if size <= 64 else "imagenet"
    backbone = dict(type="BinaryResNet", depth=18, binarizer="irnet", stem=stem)
    variants = {
        "plain": dict(cmim_lambda=0.0),
        "flip": dict(cmim_lambda=3.2, cmim=dict(critic="flip")),
        "embed": dict(cmim_lambda=3.2, cmim=dict(critic="embed", n_nce=n_nce)),
    }
    inputs = torch.randn(batch_size, 3, size, size)
    labels = torch.randint(0, num_classes, (batch_size,))
    steps = {}
    for name, kwargs in variants.items():
        torch.manual_seed(0)
        model = BinaryImageClassifier(backbone=backbone, num_classes=num_classes, **kwargs)
        counter = iter(range(10**9))

        def batch(counter=counter) -> dict:
            start = next(counter) * batch_size
            index = torch.arange(start, start + batch_size)
            return dict(inputs=inputs, label=labels, index=index)

        steps[name] = _train_step(model, batch)
    return steps


def dense_batch(
    batch_size: int, height: int, width: int, num_classes: int, device: str | torch.device = "cpu"
) -> Callable[[], dict]:
    """Batches of the dense model: ``inputs`` (B, 3, H, W) and ``data_samples`` with
    ``gt_sem_seg`` (1, H, W) class ids and ``gt_depth_map`` (1, H, W) metres in [0.5, 5.5]."""
    samples = []
    for _ in range(batch_size):
        sample = SegDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width)))
        sample.set_data(
            dict(
                gt_sem_seg=PixelData(data=torch.randint(0, num_classes, (1, height, width))),
                gt_depth_map=PixelData(data=torch.rand(1, height, width) * 5 + 0.5),
            )
        )
        samples.append(sample.to(device))
    inputs = torch.randn(batch_size, 3, height, width, device=device)
    return lambda: dict(inputs=inputs, data_samples=samples)


def transfer_steps(
    config: str, batch_size: int, height: int, width: int, backend: str = "torch"
) -> dict:
    """One training step of the config's dense model, frozen backbone vs full fine-tuning.

    ``backend``: how the frozen model runs its backbone (``'openvino'``: bit-packed, see
    :class:`~cmim_dense.models.MultiTaskDense`); fine-tuning always runs it in PyTorch.
    """
    init_default_scope("mmseg")
    cfg = Config.fromfile(config)
    num_classes = cfg.model.seg_head.num_classes if cfg.model.get("seg_head") else 1
    batch = dense_batch(batch_size, height, width, num_classes)
    steps = {}
    for name, freeze in (("frozen", True), ("finetune", False)):
        torch.manual_seed(0)
        model_cfg = dict(
            cfg.model, freeze_backbone=freeze, backbone_backend=backend if freeze else "torch"
        )
        model_cfg.pop("data_preprocessor", None)
        model_cfg["backbone"] = dict(model_cfg["backbone"], pretrained=None, init_cfg=None)
        model = revert_sync_batchnorm(MODELS.build(model_cfg))  # SyncBN needs a process group
        steps[name] = _train_step(model, batch)
    return steps


def _backbone_from_config(config: str) -> nn.Module:
    """The config's backbone, randomly initialised, in eval mode (speed does not depend on the
    weights' values); a classifier's backbone is timed up to its features."""
    init_default_scope("mmseg")
    model_cfg = dict(Config.fromfile(config).model)
    model_cfg.pop("data_preprocessor", None)
    model_cfg["backbone"] = dict(model_cfg["backbone"], pretrained=None, init_cfg=None)
    model = revert_sync_batchnorm(MODELS.build(model_cfg))
    return model.backbone.eval()


def deploy_steps(config: str, height: int, width: int, threads: int = 2) -> tuple[dict, dict, dict]:
    """The config's frozen binary backbone at batch 1, run four ways, as timed step functions.

    Returns:
        (backbone steps: ``torch_fp32`` (the PyTorch simulation), ``openvino_fp32`` (the same
        float computation as OpenVINO IR), ``openvino_binary`` (xnor-popcount IR);
        per-layer steps ``"<i> torch"`` / ``"<i> openvino"`` for every binary conv, on the
        input it sees in the backbone; sizes: ``binary_ir_bytes`` and ``fp32_state_dict_bytes``).
    """
    import openvino as ov
    import openvino.opset13 as ops

    from cmim_dense.deploy.export import backbone_features
    from cmim_dense.deploy.fold import fold_binary_conv
    from cmim_dense.deploy.graph import BackboneGraph, binary_layer_output
    from cmim_dense.deploy.runtime import OpenVINOBackbone

    backbone = _backbone_from_config(config)
    image = torch.randn(1, 3, height, width)
    engines = {
        "openvino_fp32": OpenVINOBackbone(BackboneGraph(backbone, binary=False).build(), threads),
        "openvino_binary": OpenVINOBackbone(BackboneGraph(backbone, binary=True).build(), threads),
    }

    def torch_step() -> None:
        backbone_features(backbone, image)

    steps = {"torch_fp32": torch_step}
    steps.update({name: (lambda e=e: e(image)) for name, e in engines.items()})

    inputs: list[Tensor] = []
    convs = backbone.binary_convs()
    hooks = [c.register_forward_pre_hook(lambda _, args: inputs.append(args[0])) for c in convs]
    torch_step()
    for hook in hooks:
        hook.remove()
    layers = {}
    for i, (conv, x) in enumerate(zip(convs, inputs)):
        param = ops.parameter(list(x.shape), np.float32)
        out = binary_layer_output(param.output(0), fold_binary_conv(conv))
        layer = OpenVINOBackbone(ov.Model([ops.result(out)], [param]), threads)

        def torch_layer(conv=conv, x=x) -> None:
            with torch.no_grad():
                conv(x)

        layers[f"{i:2d} torch"] = torch_layer
        layers[f"{i:2d} openvino"] = lambda layer=layer, x=x: layer(x)
    with tempfile.TemporaryDirectory() as tmp:
        ov.save_model(
            engines["openvino_binary"].model, f"{tmp}/backbone.xml", compress_to_fp16=False
        )
        ir_bytes = os.path.getsize(f"{tmp}/backbone.bin")
    sizes = dict(
        binary_ir_bytes=ir_bytes,
        fp32_state_dict_bytes=sum(
            t.numel() * t.element_size() for t in backbone.state_dict().values()
        ),
    )
    return steps, layers, sizes
