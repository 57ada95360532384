"""Speed and peak memory of the NYUD-v2 conversion, on a generated file of the official format.

    cmim-dense benchmark_nyud --frames 200 --size 480 640

Generates a synthetic ``nyu_depth_v2_labeled.mat``, then converts it with ``prepare_nyud`` in a
fresh child process that reports its peak RSS growth from /proc (VmHWM after the conversion minus
VmRSS before it, with the high-water mark reset through /proc/self/clear_refs where allowed).
Prints frames/s and the growth; ``--json`` prints one JSON line instead.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from cmim_dense.cli.common import ToolParser, int_at_least, run_tool


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="cmim-dense benchmark_nyud", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int_at_least(2), default=200)
    parser.add_argument(
        "--size", type=int_at_least(8), nargs=2, default=(480, 640), metavar=("H", "W")
    )
    parser.add_argument("--workdir", help="keep the generated files here (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)  # child process mode
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def job() -> None:
        from cmim_dense.bench.nyud_convert import measure_child, run_benchmark

        if args.measure:
            measure_child(*args.measure)
            return
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="nyud-bench-"))
        try:
            stats = run_benchmark(args.frames, tuple(args.size), workdir)
        finally:
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
        if args.json:
            print(json.dumps(stats))
            return
        print(
            f"generated {args.frames} frames at {args.size[0]}x{args.size[1]} in "
            f"{stats['generate_seconds']:.1f} s ({stats['labeled_mb']:.0f} MB .mat)\n"
            f"conversion: {stats['frames_per_second']:.1f} frames/s, "
            f"peak RSS growth {stats['peak_rss_growth_mb']:.1f} MB"
        )

    return run_tool(job)


if __name__ == "__main__":
    sys.exit(main())
