"""Report evaluated runs: report.md, report.json, fig5.png and qualitative.png.

    python tools/report.py RUN_DIR [RUN_DIR ...] --out DIR [--num-images K]
    python tools/report.py --sweep SWEEP_DIR [SWEEP_DIR ...] --out DIR

--sweep draws the paper's Fig. 5 across binarizers from demo-chain sweeps (tools/sweep.py
--demo with --grid model.cmim_lambda=0,...): fig5_binarizers.png, .md (the paired differences
per binarizer and metric) and .json; see cmim_dense/pipelines/sweep_figure.py.

Each RUN_DIR needs the metrics.json written by tools/test.py; qualitative.png shows every
RUN_DIR that has predictions/*.npz: K test images, each in one row per run, with the class
legend and one depth colour bar. Runs are labelled by their metrics.json name;
runs sharing a name get their directory's name appended (``"name [dir]"``), then ``" #k"`` if
that still collides (see cmim_dense.evaluation.report).

Bad input (a missing or malformed metrics.json, an unreadable prediction file, an output
path that cannot be a folder) prints one ``error: ...`` line, writes nothing and exits 2.
"""

import argparse
import sys

import cmim_dense  # noqa: F401  (shims)
from cmim_dense.evaluation.report import build_report
from cmim_dense.pipelines.sweep_figure import write_fig5
from cmim_dense.utils.errors import InputError


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        type=_non_negative_int,
        default=4,
        help="test images in qualitative.png, each in a row per run (default 4; 0: none)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if bool(args.run_dirs) == bool(args.sweep):
            raise InputError("give either RUN_DIRs or --sweep SWEEP_DIRs")
        if args.sweep:
            written = write_fig5(args.sweep, args.out)
        else:
            written = build_report(args.run_dirs, args.out, args.num_images)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
