"""Report evaluated runs: report.md, report.json, fig5.png and qualitative.png.

    python tools/report.py RUN_DIR [RUN_DIR ...] --out DIR [--num-images K]

Each RUN_DIR needs the metrics.json written by tools/test.py; qualitative.png is drawn from
the first RUN_DIR that has predictions/*.npz. Runs are labelled by their metrics.json name;
runs sharing a name get their directory's name appended (``"name [dir]"``), then ``" #k"`` if
that still collides (see cmim_dense.evaluation.report).

Bad input (a missing or malformed metrics.json, an unreadable prediction file, an output
path that cannot be a folder) prints one ``error: ...`` line, writes nothing and exits 2.
"""

import argparse
import sys

import cmim_dense  # noqa: F401  (shims)
from cmim_dense.evaluation.report import build_report
from cmim_dense.utils.errors import InputError


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="evaluated run dirs")
    parser.add_argument("--out", required=True, help="output directory of the report")
    parser.add_argument(
        "--num-images",
        type=_non_negative_int,
        default=4,
        help="test images in qualitative.png (default 4; 0: no qualitative.png)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        written = build_report(args.run_dirs, args.out, args.num_images)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
