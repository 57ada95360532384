"""Running exported models in OpenVINO: one compile helper, a backbone for PyTorch code, and the
loader of an exported folder.

Every model the project compiles goes through :func:`compile_model`, which passes
:data:`COMPILE_PROPERTIES`: on CPUs with native bf16 (AVX512_BF16 or AMX) the CPU plugin's default
``INFERENCE_PRECISION_HINT`` is bf16, which runs every float op of the graph (BN folds, border maps,
residual adds, the heads) in bf16 and moves a binary network's outputs far from PyTorch's. A hint
stored in the IR's ``rt_info`` is not honoured for this property (openvino 2026.4), so it is
passed at compile time.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from functools import cache
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset1 as ops1
import openvino.opset13 as ops
import torch
from mmengine.config import Config
from torch import Tensor, nn

from cmim_dense.deploy.graph import BackboneGraph, packed_bits
from cmim_dense.registry import BACKBONE_RUNTIMES
from cmim_dense.utils.errors import InputError

EXPORT_FORMAT = "cmim_dense.export/2"
STAMP = "export.json"
# f32: the exact float path on every CPU; LATENCY: one frame at a time, the deployment case.
COMPILE_PROPERTIES = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
COMPILE_NOTE = (
    "compile with core.compile_model(model, 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'}): on CPUs "
    "with native bf16 (AVX512_BF16 or AMX) OpenVINO's default is bf16, which runs every float op "
    "of the graph in bf16 and moves the binary network's outputs far from PyTorch's"
)


@cache
def _capabilities() -> tuple[str, ...]:
    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def has_binary_convolution(model: ov.Model) -> bool:
    """Whether ``model`` holds a ``BinaryConvolution`` node."""
    return any(op.get_type_name() == "BinaryConvolution" for op in model.get_ops())


def require_binary_support() -> None:
    """Refuse, in one line, a CPU whose OpenVINO plugin does not run ``BinaryConvolution``.

    The CPU plugin lists ``BIN`` in its ``OPTIMIZATION_CAPABILITIES`` where it has the kernel
    (x86-64); ARM builds do not.

    Raises:
        InputError: the capability is missing.
    """
    caps = _capabilities()
    if "BIN" not in caps:
        raise InputError(
            f"this CPU's OpenVINO plugin has no BinaryConvolution (capabilities: {', '.join(caps)})"
            ": bit-packed export and the OpenVINO backbone need an x86-64 CPU; run the backbone "
            "in PyTorch (backbone_backend='torch') instead"
        )


def compile_model(
    model: ov.Model | str | os.PathLike, num_threads: int | None = None, **properties
) -> ov.CompiledModel:
    """Compile ``model`` (or an IR path) on the CPU with :data:`COMPILE_PROPERTIES`.

    ``num_threads``: inference threads (default: ``torch.get_num_threads()``); ``properties``:
    extra CPU properties (e.g. ``PERF_COUNT=True``).

    Raises:
        InputError: the model has a ``BinaryConvolution`` and this CPU cannot run it.
    """
    if not isinstance(model, ov.Model):
        model = ov.Core().read_model(model)
    if has_binary_convolution(model):
        require_binary_support()
    config = dict(
        COMPILE_PROPERTIES,
        INFERENCE_NUM_THREADS=num_threads or torch.get_num_threads(),
        **properties,
    )
    return ov.Core().compile_model(model, "CPU", config)


def kernels(compiled: ov.CompiledModel) -> dict[str, list[str]]:
    """Node type -> the CPU plugin's kernels for it in ``compiled``, sorted: its runtime graph's
    ``primitiveType`` (e.g. ``{"BinaryConvolution": ["jit_avx512_u1"], ...}``). A compute
    node's kernel names its instruction set (``jit_avx2_f32``, ``brgconv_avx512_f32``);
    inputs, constants and some reorders have none (``unknown_f32``, ``ref_any_u1``)."""
    found: dict[str, set[str]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind, kernel = info["layerType"].astype(str), info["primitiveType"].astype(str)
        found.setdefault(kind, set()).add(kernel)
    return {kind: sorted(names) for kind, names in sorted(found.items())}


@cache
def binary_convolution_kernel() -> str | None:
    """The kernel(s) this CPU's OpenVINO plugin runs ``BinaryConvolution`` with
    (``jit_avx512_u1``, ``jit_avx2_u1``, ...; comma-joined if several), from a one-layer model;
    None where it has none (no ``BIN``).

    ``ONEDNN_MAX_CPU_ISA`` does not cap it: under ``ONEDNN_MAX_CPU_ISA=AVX2`` the plugin runs its
    float convolutions, eltwise and pooling with AVX2 kernels, but BinaryConvolution and
    FakeQuantize with AVX-512 ones still (openvino 2026.4, AMD Zen 4).
    """
    if "BIN" not in _capabilities():
        return None
    x = ops.parameter([1, 8, 3, 3], np.float32)  # 8 channels: one byte of bits per tap
    weights = ops.constant(packed_bits(np.ones((8, 8, 3, 3), bool)))
    conv = ops1.binary_convolution(
        x, weights.output(0), [1, 1], [0, 0], [0, 0], [1, 1], "xnor-popcount", -1.0
    )
    compiled = compile_model(ov.Model([ops.result(conv)], [x]), num_threads=1)
    return ", ".join(kernels(compiled)["BinaryConvolution"])


@BACKBONE_RUNTIMES.register_module(name="openvino")
class OpenVINOBackbone:
    """Calls an OpenVINO model like a backbone: (N, 3, H, W) tensor -> tuple of stage outputs.

    The model is compiled once per input shape (``BinaryConvolution`` needs static shapes) by
    :func:`compile_model`. Inputs on another device are copied to the CPU and the outputs back.

    Args:
        model: an OpenVINO model with one (N, 3, H, W) input, e.g. from
            :meth:`BackboneGraph.build` or ``backbone.xml``.
        num_threads: inference threads (default: ``torch.get_num_threads()``).
    """

    def __init__(self, model: ov.Model, num_threads: int | None = None):
        self.model = model
        self.num_threads = num_threads or torch.get_num_threads()
        self._compiled: dict[tuple[int, ...], ov.CompiledModel] = {}

    @classmethod
    def from_backbone(cls, backbone: nn.Module, binary: bool = True) -> OpenVINOBackbone:
        """Export ``backbone`` (a BinaryResNet, in eval mode) in memory and wrap it."""
        return cls(BackboneGraph(backbone, binary=binary).build())

    def compiled(self, shape: tuple[int, ...]) -> ov.CompiledModel:
        """The model compiled for inputs of ``shape`` (N, 3, H, W)."""
        if shape not in self._compiled:
            model = self.model.clone()
            if model.inputs[0].get_partial_shape() != ov.PartialShape(list(shape)):
                model.reshape({model.inputs[0]: ov.PartialShape(list(shape))})
            self._compiled[shape] = compile_model(model, self.num_threads)
        return self._compiled[shape]

    def __call__(self, x: Tensor) -> tuple[Tensor, ...]:
        compiled = self.compiled(tuple(x.shape))
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        # Copies both ways: no OpenVINO buffer outlives its call inside a torch tensor.
        results = compiled(array, share_inputs=False, share_outputs=False)
        return tuple(torch.from_numpy(results[out]).to(x.device) for out in compiled.outputs)


class SingleModel:
    """One static IR, compiled by :func:`compile_model`, run frame by frame."""

    def __init__(self, model: ov.Model, num_threads: int | None = None):
        compiled = compile_model(model, num_threads)
        self._request = compiled.create_infer_request()
        self.outputs = compiled.outputs

    def run(self, array: np.ndarray) -> list[np.ndarray]:
        """(1, 3, H, W) float32 -> copies of the outputs."""
        results = self._request.infer(array, share_inputs=False, share_outputs=False)
        return [results[port] for port in self.outputs]


class ChainedModel:
    """A static backbone IR feeding a static heads IR, compiled apart: (1, 3, H, W) -> the head
    outputs, as arrays (:meth:`run`) or tensors (a call, like :class:`OpenVINOBackbone`).

    The deployed form of INT8 heads: compiled in one graph with quantized heads, the CPU
    plugin's low-precision transformations also rewrite the backbone's float ops (its outputs
    then move by float rounding); compiled apart, the backbone runs exactly as in the fp32 IR.
    The heads read the backbone's output tensors in place (no copy).
    """

    def __init__(self, backbone: ov.Model, heads: ov.Model, num_threads: int | None = None):
        self._backbone = compile_model(backbone, num_threads).create_infer_request()
        heads_compiled = compile_model(heads, num_threads)
        self._heads = heads_compiled.create_infer_request()
        for i in range(len(heads_compiled.inputs)):
            self._heads.set_input_tensor(i, self._backbone.get_output_tensor(i))
        self.outputs = heads_compiled.outputs

    def run(self, array: np.ndarray) -> list[np.ndarray]:
        """(1, 3, H, W) float32 -> copies of the head outputs."""
        self._backbone.infer(array)
        self._heads.infer()
        return [self._heads.get_output_tensor(i).data.copy() for i in range(len(self.outputs))]

    def __call__(self, x: Tensor) -> tuple[Tensor, ...]:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return tuple(torch.from_numpy(a).to(x.device) for a in self.run(array))


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# How a run is launched, not what it computes: an export stays valid whichever of these the
# config or the command line sets (the checkpoint's own hash covers the weights).
RUNTIME_KEYS = ("work_dir", "launcher", "load_from", "resume")


def identity(cfg: Config, checkpoint: str | os.PathLike | None) -> dict:
    """What an export was made from: ``config_sha256`` of the resolved config's text (mmengine's
    ``cfg.pretty_text`` after ``--cfg-options``, without :data:`RUNTIME_KEYS`) and
    ``checkpoint_sha256`` of the checkpoint file (None: the config's own initialisation)."""
    content = copy.deepcopy(cfg)
    for key in RUNTIME_KEYS:
        content.pop(key, None)
    return dict(
        config_sha256=hashlib.sha256(content.pretty_text.encode()).hexdigest(),
        checkpoint_sha256=sha256_file(checkpoint) if checkpoint else None,
    )


class ExportedModel:
    """An exported folder (``tools/export.py --out DIR``), compiled and ready to run.

    Use :meth:`open`. The IR has a static (1, 3, H, W) input; a call runs (N, 3, H, W) float32
    arrays, already normalised like the config's data preprocessor does, frame by frame.

    Attributes:
        folder: the folder.
        record: its ``export.json``.
        input_size: (H, W) the IR takes.
        output_names: the outputs by name: ``('seg', 'depth')`` for a dense model (raw head
            outputs at feature resolution: seg logits (N, K, h, w), depth metres (N, 1, h, w)),
            ``('stage1', ...)`` for a backbone-only export.
        precision: ``'fp32'`` or ``'int8_heads'`` (binary backbone, INT8 heads).
        identity: ``config_sha256`` and ``checkpoint_sha256`` of what was exported (see
            :func:`identity`).
    """

    def __init__(self, folder: Path, record: dict, num_threads: int | None = None):
        self.folder = folder
        self.record = record
        self.input_size: tuple[int, int] = tuple(record["input_size"])
        self.precision: str = record["precision"]
        self.identity: dict = record["identity"]
        names = model_files(record)
        for name in names:
            for path in (folder / name, (folder / name).with_suffix(".bin")):
                if not path.is_file():
                    raise InputError(f"{folder}: {path.name} is missing; export again")
        models = [ov.Core().read_model(folder / name) for name in names]
        runner = ChainedModel(*models, num_threads) if len(models) == 2 else None
        self._runner = runner or SingleModel(models[0], num_threads)
        self.output_names: tuple[str, ...] = tuple(o.get_any_name() for o in self._runner.outputs)

    @classmethod
    def open(cls, folder: str | os.PathLike, num_threads: int | None = None) -> ExportedModel:
        """Read ``folder/export.json`` and compile its whole model with :func:`compile_model`:
        ``model.xml``; INT8 heads: ``backbone.xml`` then ``heads.xml`` (:class:`ChainedModel`);
        a backbone-only export: ``backbone.xml``.

        Raises:
            InputError: no folder, no or another format of ``export.json``, missing IR files, or
                a CPU that cannot run ``BinaryConvolution``.
        """
        folder = Path(folder)
        return cls(folder, read_stamp(folder), num_threads)

    def sha256(self) -> str:
        """:func:`ir_sha256` of this folder."""
        return ir_sha256(self.folder, self.record)

    def check_identity(self, expected: dict) -> None:
        """Refuse, in one line, an IR exported from another config or checkpoint.

        ``expected``: :func:`identity` of the config and checkpoint the caller uses.
        """
        for key in ("config_sha256", "checkpoint_sha256"):
            if self.identity.get(key) != expected.get(key):
                what = key.split("_")[0]
                raise InputError(
                    f"{self.folder} was exported from another {what} ({key} "
                    f"{str(self.identity.get(key))[:12]}, expected {str(expected.get(key))[:12]})"
                    "; export it again from this config and checkpoint"
                )

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """(N, 3, H, W) float32 -> {output name: (N, ...) float32}.

        Raises:
            InputError: the frames' size is not :attr:`input_size`.
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != self.input_size:
            raise InputError(
                f"{self.folder} takes (N, 3, {self.input_size[0]}, {self.input_size[1]}) images, "
                f"got {images.shape}; resize the frames first"
            )
        outputs: dict[str, list[np.ndarray]] = {name: [] for name in self.output_names}
        for frame in images:
            for name, value in zip(self.output_names, self._runner.run(frame[None])):
                outputs[name].append(value)
        return {name: np.concatenate(values) for name, values in outputs.items()}


def model_files(record: dict) -> list[str]:
    """The IR files an export's ``record`` runs, in order: ``backbone.xml`` and ``heads.xml``
    (INT8 heads), ``model.xml`` (a whole fp32 model), or ``backbone.xml`` (a backbone)."""
    files = record.get("files", [])
    if "heads.xml" in files:
        return ["backbone.xml", "heads.xml"]
    return ["model.xml" if "model.xml" in files else "backbone.xml"]


def ir_sha256(folder: Path, record: dict) -> str:
    """The hex sha256 of the sha256 digests of the IR files that ``record`` (the folder's
    ``export.json``) runs: each ``.xml`` then its ``.bin``, in :func:`model_files` order."""
    digest = hashlib.sha256()
    for name in model_files(record):
        for path in (folder / name, (folder / name).with_suffix(".bin")):
            digest.update(bytes.fromhex(sha256_file(path)))
    return digest.hexdigest()


def open_export(
    folder: str | os.PathLike,
    cfg: Config,
    checkpoint: str | os.PathLike | None,
    num_threads: int | None = None,
) -> ExportedModel:
    """``folder`` opened by :meth:`ExportedModel.open`, refused in one line unless it was
    exported from the resolved config ``cfg`` and from ``checkpoint`` (:func:`identity`).

    Raises:
        InputError: not an export, another config or checkpoint, missing IR files, or a CPU
            without ``BinaryConvolution``.
    """
    exported = ExportedModel.open(folder, num_threads)
    exported.check_identity(identity(cfg, checkpoint))
    return exported


def read_stamp(folder: Path) -> dict:
    """``folder/export.json`` of the current :data:`EXPORT_FORMAT`.

    Raises:
        InputError: missing, unreadable, or of another format.
    """
    if not folder.is_dir():
        raise InputError(f"{folder}: no such export folder")
    try:
        record = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{folder}: no readable {STAMP} ({err}); export again") from None
    found = record.get("format") if isinstance(record, dict) else None
    if found != EXPORT_FORMAT:
        raise InputError(
            f"{folder}: {STAMP} has format {found!r}, this version reads {EXPORT_FORMAT!r}; "
            "export again"
        )
    return record
