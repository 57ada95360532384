"""Convert NYUD-v2's labelled .mat file into the image/annotation/depth tree mmseg reads.

    cmim-dense prepare_nyud --labeled nyu_depth_v2_labeled.mat --splits splits.mat \\
        --mapping classMapping40.mat --out data/nyud [--classes 40|13] [--force]
    cmim-dense prepare_nyud --check data/nyud

Bad input prints one ``error: ...`` line and exits with status 2, leaving no output behind.
``--force`` replaces only an empty folder or a tree this tool wrote (stamped ``nyud_info.json``);
anything else at ``--out`` is refused and left alone.
"""

from __future__ import annotations

import argparse
import sys

from cmim_dense.cli.common import ToolParser, run_tool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ToolParser(prog="cmim-dense prepare_nyud", description=__doc__.splitlines()[0])
    parser.add_argument("--labeled", help="nyu_depth_v2_labeled.mat (MATLAB v7.3)")
    parser.add_argument("--splits", help="splits.mat (trainNdxs, testNdxs)")
    parser.add_argument("--mapping", help="classMapping40.mat (mapClass)")
    parser.add_argument(
        "--mapping13", help="class13Mapping.mat for --classes 13 (default: beside --mapping)"
    )
    parser.add_argument("--out", help="output folder, e.g. data/nyud")
    parser.add_argument("--classes", type=int, choices=(40, 13), default=40)
    parser.add_argument("--force", action="store_true", help="rebuild an output this tool wrote")
    parser.add_argument("--check", metavar="DIR", help="only verify an existing prepared tree")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.check is None:
        missing = [
            f"--{k}" for k in ("labeled", "splits", "mapping", "out") if not getattr(args, k)
        ]
        if missing:
            parser.error(f"the following arguments are required: {', '.join(missing)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def job() -> None:
        from cmim_dense.nyud_io.convert import check_nyud_tree, prepare_nyud

        if args.check is not None:
            info = check_nyud_tree(args.check)
            print(f"ok: {args.check}: {info['counts']} frames, {info['classes']} classes")
            return
        result = prepare_nyud(
            args.labeled,
            args.splits,
            args.mapping,
            args.out,
            classes=args.classes,
            mapping13=args.mapping13,
            force=args.force,
            progress=not args.quiet,
        )
        if result.skipped:
            print(
                f"{result.out} is already complete ({result.counts}); "
                "nothing to do (--force rebuilds)"
            )
        else:
            print(f"wrote {result.counts} frames to {result.out} in {result.seconds:.1f} s")

    return run_tool(job)


if __name__ == "__main__":
    sys.exit(main())
