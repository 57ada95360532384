"""Step-time benchmarks on this machine's CPU.

python tools/benchmark.py cmim [--iters 15]
    one training step of a binary ResNet-18 with and without CMIM, at batch 32 / 32x32
    and batch 16 / 112x112; last line: cmim_step/plain_step: <flip> (flip) <embed> (embed, ...)
python tools/benchmark.py transfer [--config CFG] [--batch 2] [--size 240 320] [--backend openvino]
    one training step of the dense model with the frozen backbone vs full fine-tuning;
    last line: frozen_step/finetune_step: <ratio>
python tools/benchmark.py deploy [--config CFG] [--size 480 640]
    the config's frozen binary backbone at batch 1 on 2 threads: PyTorch simulation, OpenVINO fp32
    IR, OpenVINO bit-packed binary IR, and every binary 3x3 layer alone; last lines:
    openvino_binary/torch_fp32, openvino_binary/openvino_fp32, size fp32/binary
python tools/benchmark.py binarizers [--binarizers irnet adabin] [--setting 224 16] [--compiled]
    one SGD step of each binarizer's binary ResNet-18 vs torchvision's float ResNet-18, at
    224 px batch 16 and 32 px batch 32 (or the --setting SIZE BATCH given), 2 threads; with
    --compiled also the torch.compile'd step

Every comparison is timed interleaved (medians), so machine load hits all variants alike.
"""

import argparse
import sys

import torch

import cmim_dense  # noqa: F401  (shims and registries)
from cmim_dense.engine.benchmark import (
    cmim_steps,
    deploy_steps,
    median_step_times,
    transfer_steps,
)


def run_cmim(args: argparse.Namespace) -> None:
    final = {}
    for batch_size, size in ((32, 32), (16, 112)):
        times = median_step_times(cmim_steps(batch_size, size, n_nce=args.n_nce), args.iters)
        ratios = {k: times[k] / times["plain"] for k in ("flip", "embed")}
        print(
            f"batch {batch_size} at {size}x{size}: plain {times['plain'] * 1e3:.1f} ms, "
            f"flip {times['flip'] * 1e3:.1f} ms ({ratios['flip']:.3f}x), "
            f"embed {times['embed'] * 1e3:.1f} ms ({ratios['embed']:.3f}x)",
            flush=True,
        )
        final.setdefault("ratios", ratios)  # the targets are set at batch 32, 32x32
    r = final["ratios"]
    print(
        f"cmim_step/plain_step: {r['flip']:.3f} (flip) {r['embed']:.3f} (embed, n_nce={args.n_nce})"
    )


def run_transfer(args: argparse.Namespace) -> None:
    height, width = args.size
    steps = transfer_steps(args.config, args.batch, height, width, args.backend)
    times = median_step_times(steps, args.iters)
    print(
        f"{args.config} batch {args.batch} at {height}x{width}: frozen "
        f"{times['frozen'] * 1e3:.1f} ms, finetune {times['finetune'] * 1e3:.1f} ms"
    )
    print(f"frozen_step/finetune_step: {times['frozen'] / times['finetune']:.3f}")


def run_deploy(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    height, width = args.size
    steps, layers, sizes = deploy_steps(args.config, height, width, args.threads)
    layer_times = median_step_times(layers, args.iters)
    print(f"{args.config} at {height}x{width}, batch 1, {args.threads} threads")
    print("binary 3x3 layer   torch (ms)   openvino binary (ms)   speedup")
    for i in range(len(layers) // 2):
        t, o = layer_times[f"{i:2d} torch"], layer_times[f"{i:2d} openvino"]
        print(f"  {i:2d}              {t * 1e3:9.1f}   {o * 1e3:20.1f}   {t / o:7.2f}x")
    times = median_step_times(steps, args.iters)
    for name, value in times.items():
        print(f"backbone {name}: {value * 1e3:.1f} ms")
    binary, ratio = (
        times["openvino_binary"],
        sizes["fp32_state_dict_bytes"] / sizes["binary_ir_bytes"],
    )
    print(
        f"weights: fp32 state dict {sizes['fp32_state_dict_bytes'] / 2**20:.2f} MiB, "
        f"binary IR {sizes['binary_ir_bytes'] / 2**20:.2f} MiB"
    )
    print(f"openvino_binary/torch_fp32: {times['torch_fp32'] / binary:.2f}")
    print(f"openvino_binary/openvino_fp32: {times['openvino_fp32'] / binary:.2f}")
    print(f"size fp32/binary: {ratio:.1f}")


def run_binarizers(args: argparse.Namespace) -> None:
    from cmim_dense.bench.binarizers import run

    settings = [tuple(s) for s in args.setting] if args.setting else ((224, 16), (32, 32))
    run(settings, args.binarizers, args.iters, args.compiled, args.threads)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="step-time benchmarks")
    sub = parser.add_subparsers(dest="what", required=True)
    cmim = sub.add_parser("cmim", help="CMIM overhead in a pretraining step")
    cmim.add_argument("--iters", type=int, default=15)
    cmim.add_argument("--n-nce", type=int, default=4096)
    transfer = sub.add_parser("transfer", help="frozen backbone vs full fine-tuning")
    transfer.add_argument("--config", default="configs/nyud_deeplab_bin_r18.py")
    transfer.add_argument("--batch", type=int, default=2)
    transfer.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    transfer.add_argument("--iters", type=int, default=10)
    transfer.add_argument("--backend", default="torch", choices=["torch", "openvino"])
    deploy = sub.add_parser("deploy", help="the binary backbone in PyTorch and in OpenVINO")
    deploy.add_argument("--config", default="configs/nyud_deeplab_bin_r18.py")
    deploy.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    deploy.add_argument("--iters", type=int, default=11)
    deploy.add_argument("--threads", type=int, default=2)
    binarizers = sub.add_parser("binarizers", help="each binarizer's step vs the float step")
    binarizers.add_argument("--binarizers", nargs="+", default=None, metavar="NAME")
    binarizers.add_argument("--setting", type=int, nargs=2, action="append", metavar=("PX", "N"))
    binarizers.add_argument("--iters", type=int, default=10)
    binarizers.add_argument("--threads", type=int, default=2)
    binarizers.add_argument("--compiled", action="store_true", help="also time torch.compile")
    args = parser.parse_args(argv)
    runs = {"cmim": run_cmim, "transfer": run_transfer, "deploy": run_deploy}
    runs["binarizers"] = run_binarizers
    runs[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
