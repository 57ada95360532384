"""Five-minute GPU check of the real configs: AMP, channels_last, NCCL, throughput, memory.

cmim-dense gpu_check [--out DIR] [--stages pretrain transfer nccl agreement]
                     [--pretrain-batch 256] [--transfer-batch 8] [--iters 30]

Writes DIR/gpu_check.json (every figure) and DIR/gpu_check.md (one table). Exit code 0 when
every check passes, 1 when one fails, 2 (with one ``error:`` line) when there is no CUDA.
See cmim_dense/bench/gpu_check/ for what each stage measures.
"""

from __future__ import annotations

import argparse
import sys

from cmim_dense.cli.common import ToolParser, int_at_least, run_tool
from cmim_dense.cli.common import parse_args as parse

STAGES = ("pretrain", "transfer", "nccl", "agreement")  # bench.gpu_check.STAGES (a test pins it)


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="cmim-dense gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="work_dirs/gpu_check", help="report folder")
    parser.add_argument(
        "--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run"
    )
    positive = int_at_least(1)
    parser.add_argument("--pretrain-batch", type=positive, default=256, help="halved until it fits")
    parser.add_argument("--transfer-batch", type=positive, default=8, help="halved until it fits")
    parser.add_argument("--iters", type=positive, default=30, help="timed iterations per run")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return parse(build_parser(), argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    verdict = {}

    def job() -> None:
        import torch

        from cmim_dense.bench import gpu_check
        from cmim_dense.utils.errors import InputError

        if not torch.cuda.is_available():
            raise InputError(gpu_check.NO_CUDA)
        figures = gpu_check.run_gpu_check(
            args.out,
            stages=args.stages,
            pretrain_batch=args.pretrain_batch,
            transfer_batch=args.transfer_batch,
            iters=args.iters,
        )
        failed = [name for name, ok in figures["checks"].items() if not ok]
        print(f"report: {args.out}/{gpu_check.MD_NAME}, {args.out}/{gpu_check.JSON_NAME}")
        print("all checks passed" if not failed else f"FAILED: {', '.join(failed)}")
        verdict["failed"] = failed

    code = run_tool(job)
    return code or (1 if verdict["failed"] else 0)


if __name__ == "__main__":
    sys.exit(main())
