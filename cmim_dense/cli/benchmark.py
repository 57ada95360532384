"""Step-time benchmarks on this machine's CPU.

cmim-dense benchmark cmim [--iters 15]
    one training step of a binary ResNet-18 with and without CMIM, at batch 32 / 32x32
    and batch 16 / 112x112; last line: cmim_step/plain_step: <flip> (flip) <embed> (embed, ...)
cmim-dense benchmark transfer [--config CFG] [--batch 2] [--size 240 320] [--backend openvino]
                              [--threads 2]
    one training step of the dense model with the frozen backbone vs full fine-tuning (the
    demo's chains run at --threads 1); last line: frozen_step/finetune_step: <ratio>
cmim-dense benchmark deploy [--config CFG] [--size 480 640]
    the config's frozen binary backbone at batch 1 on 2 threads: PyTorch simulation, OpenVINO fp32
    IR, OpenVINO bit-packed binary IR, and every binary 3x3 layer alone; last lines:
    openvino_binary/torch_fp32, openvino_binary/openvino_fp32, size fp32/binary
cmim-dense benchmark binarizers [--binarizers irnet adabin] [--setting 224 16] [--compiled]
    one SGD step of each binarizer's binary ResNet-18 vs torchvision's float ResNet-18, at
    224 px batch 16 and 32 px batch 32 (or the --setting SIZE BATCH given), 2 threads; with
    --compiled also the torch.compile'd step
cmim-dense benchmark deploy --whole [--config CFG] [--size 480 640] [--threads 2]
    the whole dense model: PyTorch eager, OpenVINO fp32, binary backbone + fp32 heads, binary +
    INT8 heads; ratios, the heads' share and the 5 slowest ops (cmim_dense/bench/deploy_whole.py)

Every comparison is timed interleaved (medians), so machine load hits all variants alike. The
first line names the CPU, the instruction sets of torch's kernels and of OpenVINO's binary
convolution (:mod:`cmim_dense.bench.machine`) and how malloc treats freed memory
(:mod:`cmim_dense.utils.allocator`).
"""

from __future__ import annotations

import argparse
import sys

from cmim_dense.cli.common import ToolParser, height_width, int_at_least, run_tool

MAIN_CONFIG = "nyud_deeplab_bin_r18.py"


def run_cmim(args: argparse.Namespace) -> None:
    from cmim_dense.bench.cmim import cmim_steps
    from cmim_dense.bench.timing import median_step_times

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
    import torch

    from cmim_dense.bench.timing import median_step_times
    from cmim_dense.bench.transfer import transfer_steps

    torch.set_num_threads(args.threads)
    height, width = args.size
    steps = transfer_steps(args.config, args.batch, height, width, args.backend)
    times = median_step_times(steps, args.iters)
    print(
        f"{args.config} batch {args.batch} at {height}x{width}, "
        f"{args.threads} thread{'s' if args.threads > 1 else ''}: frozen "
        f"{times['frozen'] * 1e3:.1f} ms, finetune {times['finetune'] * 1e3:.1f} ms"
    )
    print(f"frozen_step/finetune_step: {times['frozen'] / times['finetune']:.3f}")


def run_deploy(args: argparse.Namespace) -> None:
    if args.whole:
        from cmim_dense.bench.deploy_whole import run_deploy_whole

        run_deploy_whole(args.config, *args.size, args.threads, args.iters)
        return
    import torch

    from cmim_dense.bench.deploy import deploy_steps
    from cmim_dense.bench.timing import median_step_times

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
    binary = times["openvino_binary"]
    ratio = sizes["fp32_state_dict_bytes"] / sizes["binary_ir_bytes"]
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


RUNNERS = {
    "cmim": run_cmim,
    "transfer": run_transfer,
    "deploy": run_deploy,
    "binarizers": run_binarizers,
}


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="cmim-dense benchmark", description="step-time benchmarks")
    sub = parser.add_subparsers(dest="what", required=True)
    iters = int_at_least(10)
    cmim = sub.add_parser("cmim", help="CMIM overhead in a pretraining step")
    cmim.add_argument("--iters", type=iters, default=15)
    cmim.add_argument("--n-nce", type=int_at_least(0), default=4096)
    transfer = sub.add_parser("transfer", help="frozen backbone vs full fine-tuning")
    transfer.add_argument("--config", default=MAIN_CONFIG)
    transfer.add_argument("--batch", type=int_at_least(1), default=2)
    transfer.add_argument(
        "--size", type=height_width(), nargs=2, default=(240, 320), metavar=("H", "W")
    )
    transfer.add_argument("--iters", type=iters, default=10)
    transfer.add_argument("--backend", default="torch", choices=["torch", "openvino"])
    transfer.add_argument("--threads", type=int_at_least(1), default=2)
    deploy = sub.add_parser("deploy", help="the binary backbone in PyTorch and in OpenVINO")
    deploy.add_argument("--config", default=MAIN_CONFIG)
    deploy.add_argument(
        "--size", type=height_width(), nargs=2, default=(480, 640), metavar=("H", "W")
    )
    deploy.add_argument("--iters", type=iters, default=11)
    deploy.add_argument("--threads", type=int_at_least(1), default=2)
    deploy.add_argument("--whole", action="store_true", help="the whole dense model, deployed")
    binarizers = sub.add_parser("binarizers", help="each binarizer's step vs the float step")
    binarizers.add_argument("--binarizers", nargs="+", default=None, metavar="NAME")
    binarizers.add_argument(
        "--setting", type=int_at_least(1), nargs=2, action="append", metavar=("PX", "N")
    )
    binarizers.add_argument("--iters", type=iters, default=10)
    binarizers.add_argument("--threads", type=int_at_least(1), default=2)
    binarizers.add_argument("--compiled", action="store_true", help="also time torch.compile")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def job() -> None:
        from cmim_dense.bench.machine import machine, machine_line
        from cmim_dense.utils.allocator import allocator_note

        print(f"{machine_line(machine())}; {allocator_note()}", flush=True)
        RUNNERS[args.what](args)

    return run_tool(job)


if __name__ == "__main__":
    sys.exit(main())
