"""Step-time benchmarks on this machine's CPU.

python tools/benchmark.py cmim [--iters 15]
    one training step of a binary ResNet-18 with and without CMIM, at batch 32 / 32x32
    and batch 16 / 112x112; last line: cmim_step/plain_step: <flip> (flip) <embed> (embed, ...)
python tools/benchmark.py transfer [--config CFG] [--batch 2] [--size 240 320]
    one training step of the dense model with the frozen backbone vs full fine-tuning;
    last line: frozen_step/finetune_step: <ratio>
"""

import argparse
import sys

import cmim_dense  # noqa: F401  (shims and registries)
from cmim_dense.engine.benchmark import cmim_steps, median_step_times, transfer_steps


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
    times = median_step_times(transfer_steps(args.config, args.batch, height, width), args.iters)
    print(
        f"{args.config} batch {args.batch} at {height}x{width}: frozen "
        f"{times['frozen'] * 1e3:.1f} ms, finetune {times['finetune'] * 1e3:.1f} ms"
    )
    print(f"frozen_step/finetune_step: {times['frozen'] / times['finetune']:.3f}")


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
    args = parser.parse_args(argv)
    run_cmim(args) if args.what == "cmim" else run_transfer(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
