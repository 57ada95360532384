"""Segmentation and depth of a user's images with a trained dense model, in PyTorch (backbone in
PyTorch or bit-packed in OpenVINO) or as a whole exported OpenVINO model."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose

from cmim_dense.apis.images import read_image, to_rgb8
from cmim_dense.engine.config import build_model, load_config
from cmim_dense.registry import DATASETS, init_scope
from cmim_dense.utils.errors import InputError

BACKENDS = ("torch", "openvino")
# Steps of a test pipeline that read ground truth: a user's image has none.
ANNOTATION_LOADERS = ("LoadAnnotations", "LoadDepthAnnotation")


@dataclass
class DenseResult:
    """One image's predictions at the image's own resolution.

    Attributes:
        seg: (H, W) int64 class ids, or None without a segmentation head.
        depth: (H, W) float32 metres, or None without a depth head.
    """

    seg: np.ndarray | None
    depth: np.ndarray | None


def test_pipeline_for_arrays(cfg: Config) -> Compose:
    """The config's test pipeline for an (H, W, 3) BGR uint8 array: its image loader becomes
    mmseg's ``LoadImageFromNDArray`` and the annotation loaders are dropped.

    Raises:
        InputError: the pipeline has no ``LoadImageFromFile``.
    """
    steps = copy.deepcopy(cfg.get("test_pipeline") or cfg.test_dataloader.dataset.pipeline)
    steps = [step for step in steps if step["type"] not in ANNOTATION_LOADERS]
    loaders = [step for step in steps if step["type"] == "LoadImageFromFile"]
    if not loaders:
        raise InputError("the config's test pipeline has no LoadImageFromFile step")
    loaders[0]["type"] = "LoadImageFromNDArray"
    init_scope()
    return Compose(steps)


def class_names(cfg: Config) -> tuple[str, ...] | None:
    """The class names of the config's test dataset (its ``METAINFO``), or None."""
    dataset = (cfg.get("test_dataloader") or {}).get("dataset") or {}
    cls = DATASETS.get(dataset.get("type")) if isinstance(dataset.get("type"), str) else None
    classes = getattr(cls, "METAINFO", {}).get("classes") if cls is not None else None
    return tuple(classes) if classes else None


class _ModelRunner:
    """The model's ``test_step`` on one pipeline item: the data preprocessor, then the backbone
    and heads (or a whole exported model, see :meth:`MultiTaskDense.run_exported`), then the
    outputs resized back to the image as mmseg's heads and ``postprocess_result`` do."""

    def __init__(self, cfg: Config, checkpoint, device: torch.device, exported=None):
        self.model = build_model(cfg, checkpoint).to(device).eval()
        self.model.run_exported(exported)

    def __call__(self, item: dict) -> DenseResult:
        data = dict(inputs=[item["inputs"]], data_samples=[item["data_samples"]])
        with torch.no_grad():
            sample = self.model.test_step(data)[0]
        seg = sample.pred_sem_seg.data[0].cpu().numpy() if "pred_sem_seg" in sample else None
        depth = sample.get("pred_depth_map")
        depth = depth.data[0].cpu().numpy().astype(np.float32) if depth is not None else None
        return DenseResult(seg=seg, depth=depth)


class DenseInferencer:
    """Segmentation and depth of images with a dense config's model.

    The image goes through the config's test pipeline (its resize, e.g. to fit 640x480 keeping
    the aspect ratio) and the model's data preprocessor (BGR to RGB, mean/std); the
    predictions come back at the image's own resolution.

    Args:
        config: a dense config (path, name of a config of the package, or a loaded
            :class:`~mmengine.config.Config`).
        checkpoint: what ``cmim-dense train`` wrote for it, loaded strictly (None: the config's
            constructors' weights).
        ir: a folder written by ``cmim-dense export`` from this config and checkpoint: the
            whole model then runs in OpenVINO on the CPU, with its static input size. An
            export of another config or checkpoint is refused: the sha256 of the checkpoint
            file and of the resolved config (as :func:`load_config` gives it, ``cfg_options``
            included, without the launch keys of
            :data:`~cmim_dense.deploy.runtime.RUNTIME_KEYS`; give ``config`` as a path or name
            for it to match) must equal the export's.
        backend: where the frozen backbone of the PyTorch model runs: ``'torch'``, or
            ``'openvino'`` (bit-packed binary convolutions on the CPU; the heads stay in
            PyTorch on ``device``); None: the config's ``model.backbone_backend``, as in
            ``cmim-dense test``. Not used with ``ir``.
        device: the torch device of the PyTorch model.
        cfg_options: config keys to override (mmengine's ``--cfg-options`` as a dict).
        num_threads: OpenVINO inference threads of an ``ir`` (default: torch's).

    Call it on one image or a sequence: a path, or an (H, W), (H, W, 3) RGB or (H, W, 4) RGBA
    uint8 or uint16 array. One image gives a :class:`DenseResult`, a sequence a list of them.

    Raises:
        InputError: a bad config, checkpoint, backend or export; an OpenVINO path on a CPU
            whose OpenVINO plugin has no ``BinaryConvolution``.
    """

    def __init__(
        self,
        config: str | os.PathLike | Config,
        checkpoint: str | os.PathLike | None = None,
        ir: str | os.PathLike | None = None,
        backend: str | None = None,
        device: str = "cpu",
        cfg_options: dict | None = None,
        num_threads: int | None = None,
    ):
        if backend is not None and backend not in BACKENDS:
            raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if ir is not None and (backend is not None or torch_device(device).type != "cpu"):
            raise InputError(
                "--backend and --device choose how the PyTorch model runs; an --ir runs the "
                "whole exported model in OpenVINO on the CPU"
            )
        if backend is not None:
            cfg_options = {**(cfg_options or {}), "model.backbone_backend": backend}
        if isinstance(config, Config):
            cfg = copy.deepcopy(config)
            if cfg_options:
                cfg.merge_from_dict(cfg_options)
        else:
            cfg = load_config(config, cfg_options)
        if not (cfg.model.get("seg_head") or cfg.model.get("depth_head")):
            raise InputError(
                f"{cfg.filename or 'the config'} is not a dense config: its model has no "
                "seg_head and no depth_head"
            )
        self.cfg = cfg
        self.pipeline = test_pipeline_for_arrays(cfg)
        self.classes = class_names(cfg)
        exported = None
        if ir is not None:
            require_binary_convolution()
            from cmim_dense.deploy.runtime import open_export

            exported = open_export(ir, cfg, checkpoint, num_threads)
        elif cfg.model.get("backbone_backend") == "openvino":
            require_binary_convolution()
        self._runner = _ModelRunner(cfg, checkpoint, torch_device(device), exported)

    def predict_one(self, image: str | os.PathLike | np.ndarray) -> DenseResult:
        """Predictions of one image (see the class doc for the accepted images)."""
        if isinstance(image, str | os.PathLike):
            rgb = read_image(image)
        else:
            rgb = to_rgb8(np.asarray(image), channel_order="rgb", name="the array")
        item = self.pipeline(dict(img=np.ascontiguousarray(rgb[..., ::-1])))
        return self._runner(item)

    def __call__(
        self, images: str | os.PathLike | np.ndarray | Sequence
    ) -> DenseResult | list[DenseResult]:
        if isinstance(images, str | os.PathLike | np.ndarray):
            return self.predict_one(images)
        return [self.predict_one(image) for image in images]


def torch_device(name: str) -> torch.device:
    """``name`` as a torch device that this machine has.

    Raises:
        InputError: not a device name, or a CUDA device without CUDA.
    """
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(
            f"--device {name!r} is not a torch device (cpu, cuda, cuda:1, ...)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: this machine has no CUDA device; use --device cpu")
    return device


def require_binary_convolution() -> None:
    """Refuse, in one line, a CPU whose OpenVINO plugin has no ``BinaryConvolution`` (ARM).

    Raises:
        InputError: the capability is missing.
    """
    from cmim_dense.deploy.runtime import require_binary_support  # OpenVINO only where needed

    require_binary_support()
