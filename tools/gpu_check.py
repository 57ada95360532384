"""Five-minute GPU check of the real configs: AMP, channels_last, NCCL, throughput, memory.

python tools/gpu_check.py [--out DIR] [--stages pretrain transfer nccl agreement]
                          [--pretrain-batch 256] [--transfer-batch 8] [--iters 30]

Writes DIR/gpu_check.json (every figure) and DIR/gpu_check.md (one table). Exit code 0 when
every check passes, 1 when one fails, 2 (with one ``error:`` line) when there is no CUDA.
See cmim_dense/engine/gpu_check.py for what each stage measures.
"""

import argparse
import sys

import torch

from cmim_dense.engine.gpu_check import JSON_NAME, MD_NAME, STAGES, run_gpu_check


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="work_dirs/gpu_check", help="report folder")
    parser.add_argument(
        "--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run"
    )
    parser.add_argument("--pretrain-batch", type=int, default=256, help="halved until it fits")
    parser.add_argument("--transfer-batch", type=int, default=8, help="halved until it fits")
    parser.add_argument("--iters", type=int, default=30, help="timed iterations per run")
    args = parser.parse_args(argv)
    for name in ("pretrain_batch", "transfer_batch", "iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("error: no CUDA device: the GPU check needs one", file=sys.stderr)
        return 2
    figures = run_gpu_check(
        args.out,
        stages=args.stages,
        pretrain_batch=args.pretrain_batch,
        transfer_batch=args.transfer_batch,
        iters=args.iters,
    )
    failed = [name for name, ok in figures["checks"].items() if not ok]
    print(f"report: {args.out}/{MD_NAME}, {args.out}/{JSON_NAME}")
    print("all checks passed" if not failed else f"FAILED: {', '.join(failed)}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
