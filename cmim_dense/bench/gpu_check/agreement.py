"""Stage 4: one fp32 batch on the GPU against the CPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from cmim_dense.bench.gpu_check.common import (
    CMIM_RTOL,
    PRETRAIN_CONFIG,
    Log,
    _print,
    build_pretrain_model,
    load_cfg,
)
from cmim_dense.bench.gpu_check.report import _fmt_num
from cmim_dense.binary import BinaryConv2d


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """fp32 matmuls and convolutions in full fp32 (no TF32) inside the block."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def capture_binary_convs(
    model: nn.Module, inputs: Tensor, label: Tensor, index: Tensor
) -> tuple[dict[str, float], list[tuple[Tensor, Tensor]]]:
    """One fp32 ``mode='loss'`` forward (no grad) recording every BinaryConv2d.

    Returns (the loss terms as floats, [(input (N, C_in, H, W), output (N, C_out, H', W'))
    on the CPU, one per binary conv in ``model.modules()`` order]).
    """
    records: list[tuple[Tensor, Tensor]] = []

    def hook(module, args, output) -> None:
        records.append((args[0].detach().cpu(), output.detach().cpu()))

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, BinaryConv2d)
    ]
    try:
        with torch.no_grad():
            losses = model(inputs, label, index, mode="loss")
    finally:
        for handle in handles:
            handle.remove()
    return {k: float(v) for k, v in losses.items()}, records


def _binary_convs(model: nn.Module) -> list[BinaryConv2d]:
    return [m for m in model.modules() if isinstance(m, BinaryConv2d)]


def compare_same_input(
    cpu_layers: Sequence[BinaryConv2d],
    dev_layers: Sequence[BinaryConv2d],
    cpu_convs: Sequence[tuple[Tensor, Tensor]],
) -> dict:
    """Run every device conv on the input its CPU twin saw (``cpu_convs`` from
    :func:`capture_binary_convs`) and compare with the CPU output, bit for bit.

    Where one differs on CUDA it is run again without cuDNN (whose Winograd and FFT
    algorithms are not exact even on integer data), which tells cuDNN's algorithm choice from
    a binarization difference. Returns dict(same_input_equal, same_input_max_abs_diff,
    same_input_equal_without_cudnn (None when not needed), binary_weights_equal).
    """
    equal, weights, diff, mismatched = 0, 0, 0.0, []
    with torch.no_grad():
        for i, (cpu_conv, conv, (x, y)) in enumerate(zip(cpu_layers, dev_layers, cpu_convs)):
            weights += int(torch.equal(conv.binary_weight().cpu(), cpu_conv.binary_weight()))
            out = conv(x.to(conv.weight.device)).cpu()
            if torch.equal(out, y):
                equal += 1
            else:
                mismatched.append(i)
                diff = max(diff, float((out - y).abs().max()))
        without_cudnn = None
        if mismatched and dev_layers[0].weight.is_cuda:
            with torch.backends.cudnn.flags(enabled=False, allow_tf32=False):
                without_cudnn = equal + sum(
                    torch.equal(dev_layers[i](cpu_convs[i][0].cuda()).cpu(), cpu_convs[i][1])
                    for i in mismatched
                )
    return dict(
        same_input_equal=equal,
        same_input_max_abs_diff=diff,
        same_input_equal_without_cudnn=without_cudnn,
        binary_weights_equal=weights,
    )


def _twin_models(cfg, seed: int, device: str | torch.device) -> tuple[nn.Module, nn.Module]:
    """The config's classifier twice with the same weights, on the CPU and on ``device``, in
    train mode (as in a training step)."""
    torch.manual_seed(seed)
    cpu_model = build_pretrain_model(cfg)
    dev_model = build_pretrain_model(cfg)
    dev_model.load_state_dict(cpu_model.state_dict())
    return cpu_model.train(), dev_model.to(device).train()


def _full_forward_diff(cpu_convs: list, dev_convs: list) -> dict:
    """The binary convs of two forwards as they ran: layers equal, largest difference, sign
    flips of their inputs, and the number of inputs."""
    equal, diff, flips, total = 0, 0.0, 0, 0
    for (cx, cy), (dx, dy) in zip(cpu_convs, dev_convs):
        equal += int(torch.equal(cy, dy))
        diff = max(diff, float((cy - dy).abs().max()))
        flips += int(((cx > 0) != (dx > 0)).sum())
        total += cx.numel()
    return dict(
        full_forward_equal=equal,
        full_forward_max_abs_diff=diff,
        sign_flips=flips,
        binary_inputs=total,
    )


def agreement_stage(
    config: str = PRETRAIN_CONFIG,
    batch_size: int = 8,
    size: int = 224,
    seed: int = 0,
    device: str | torch.device = "cuda",
    rtol: float = CMIM_RTOL,
    log: Log = _print,
) -> dict:
    """Stage 4: one fixed batch through the config's CMIM classifier in fp32 (TF32 off) on the
    CPU and on ``device``, same weights (train mode, as in a training step).

    Binary conv outputs are sums of +-1 products times per-channel powers of two, exact in
    fp32, so they must be equal bit for bit. ``same_input``: every device conv run on the
    CPU forward's input to that conv (the check). ``full_forward``: the convs of the two
    forwards compared as they ran; a real-valued layer before a binary conv can round a
    near-zero activation to the other sign (``sign_flips``, IR-Net binarizes at 0), which
    then differs downstream, so this part is reported, not required. The CMIM loss
    (``loss_cmim``) must agree within ``rtol`` relative.

    Returns dict(passed, layers, :func:`compare_same_input`'s figures,
    full_forward_equal, full_forward_max_abs_diff, sign_flips, binary_inputs,
    loss_cmim_cpu, loss_cmim_device, loss_cmim_rel_diff, loss_cls_rel_diff, ...).
    """
    cfg = load_cfg(config)
    cpu_model, dev_model = _twin_models(cfg, seed, device)
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch_size, 3, size, size, generator=gen)
    label = torch.randint(0, cfg.model.num_classes, (batch_size,), generator=gen)
    index = torch.arange(batch_size)
    with no_tf32():
        cpu_losses, cpu_convs = capture_binary_convs(cpu_model, inputs, label, index)
        dev_losses, dev_convs = capture_binary_convs(
            dev_model, inputs.to(device), label.to(device), index.to(device)
        )
        same = compare_same_input(_binary_convs(cpu_model), _binary_convs(dev_model), cpu_convs)
    full = _full_forward_diff(cpu_convs, dev_convs)
    layers = len(cpu_convs)

    def rel(key: str) -> float | None:
        if key not in cpu_losses:
            return None
        return abs(cpu_losses[key] - dev_losses[key]) / max(abs(cpu_losses[key]), 1e-12)

    cmim_rel = rel("loss_cmim")
    passed = (
        layers == len(dev_convs) > 0
        and same["same_input_equal"] == layers
        and cmim_rel is not None
        and cmim_rel <= rtol
    )
    figures = dict(
        passed=passed,
        config=config,
        device=str(device),
        batch=batch_size,
        size=size,
        layers=layers,
        **same,
        **full,
        loss_cmim_cpu=cpu_losses.get("loss_cmim"),
        loss_cmim_device=dev_losses.get("loss_cmim"),
        loss_cmim_rel_diff=cmim_rel,
        loss_cls_rel_diff=rel("loss_cls"),
        rtol=rtol,
    )
    log(
        f"[agreement] binary convs equal on the same input: {same['same_input_equal']}/{layers}, "
        f"in the full forward: {full['full_forward_equal']}/{layers} "
        f"({full['sign_flips']} sign flips); loss_cmim rel diff "
        f"{_fmt_num(cmim_rel, '.2e')}: {'passed' if passed else 'FAILED'}"
    )
    return figures
