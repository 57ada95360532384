"""Report evaluated runs: report.md, report.json, fig5.png and qualitative.png.

cmim-dense report RUN_DIR [RUN_DIR ...] --out DIR [--num-images K] [--allow-mixed]
cmim-dense report --sweep SWEEP_DIR [SWEEP_DIR ...] --out DIR

--sweep draws the paper's Fig. 5 across binarizers from demo-chain sweeps (``sweep --demo``
with ``--grid model.cmim_lambda=0,...``): fig5_binarizers.png, .md (the paired differences
per binarizer and metric) and .json; see cmim_dense/pipelines/sweep_figure.py.

Each RUN_DIR needs the metrics.json written by ``test``; qualitative.png shows every RUN_DIR
that has predictions/*.npz: K test images, each in one row per run, with the class legend and
one depth colour bar. Runs are labelled by their metrics.json name; runs sharing a name get
their directory's name appended (``"name [dir]"``), then ``" #k"`` if that still collides (see
cmim_dense.evaluation.report).

Bad input (a missing or malformed metrics.json, an unreadable prediction file, an output
path that cannot be a folder) prints one ``error: ...`` line, writes nothing and exits 2.
"""

from __future__ import annotations

import argparse
import sys

from cmim_dense.cli.common import ToolParser, int_at_least, run_tool
from cmim_dense.cli.common import parse_args as parse


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="cmim-dense report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="evaluated run dirs")
    parser.add_argument(
        "--sweep",
        nargs="+",
        metavar="SWEEP_DIR",
        help="demo-chain sweep folders (not with RUN_DIR)",
    )
    parser.add_argument("--out", required=True, help="output directory of the report")
    parser.add_argument(
        "--num-images",
        type=int_at_least(0),
        default=4,
        help="test images in qualitative.png, each in a row per run (default 4; 0: none)",
    )
    parser.add_argument(
        "--allow-mixed",
        action="store_true",
        help="report runs tested on different test sets together, each marked with its set",
    )
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return parse(build_parser(), argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def job() -> None:
        from cmim_dense.evaluation.report import build_report
        from cmim_dense.pipelines.sweep_figure import write_fig5
        from cmim_dense.utils.errors import InputError

        if bool(args.run_dirs) == bool(args.sweep):
            raise InputError("give either RUN_DIRs or --sweep SWEEP_DIRs")
        if args.sweep:
            written = write_fig5(args.sweep, args.out)
        else:
            written = build_report(args.run_dirs, args.out, args.num_images, args.allow_mixed)
        for path in written.values():
            print(path)

    return run_tool(job)


if __name__ == "__main__":
    sys.exit(main())
