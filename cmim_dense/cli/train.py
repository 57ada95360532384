"""Train any config of the project (pretraining or dense transfer).

cmim-dense train CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp auto|on|off]
                        [--cfg-options key=value ...] [--launcher none|pytorch|slurm]

CONFIG is a file, or the name of a config shipped with the package (``nyud_deeplab_bin_r18``).
"""

from __future__ import annotations

import argparse
import sys

from cmim_dense.cli.common import ToolParser, add_common_args, run_tool
from cmim_dense.cli.common import parse_args as parse


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="cmim-dense train", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="config file, or the name of a config of the package")
    parser.add_argument("--work-dir", help="where logs and checkpoints go")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        help="resume from CKPT, or from the latest checkpoint of the work dir if no CKPT",
    )
    parser.add_argument("--amp", default="auto", choices=["auto", "on", "off"])
    add_common_args(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return parse(build_parser(), argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def job() -> None:
        from cmim_dense.engine.runs import train

        train(args.config, args.work_dir, args.resume, args.amp, args.cfg_options, args.launcher)

    return run_tool(job)


if __name__ == "__main__":
    sys.exit(main())
