"""Train any config of the project (pretraining or dense transfer).

python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp auto|on|off]
                             [--cfg-options key=value ...] [--launcher none|pytorch|slurm]
"""

import argparse
import sys

import cmim_dense  # noqa: F401  (shims and registries)
from cmim_dense.engine.cli import add_common_args, run_tool
from cmim_dense.engine.runs import train


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="config file path")
    parser.add_argument("--work-dir", help="where logs and checkpoints go")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        help="resume from CKPT, or from the latest checkpoint of the work dir if no CKPT",
    )
    parser.add_argument("--amp", default="auto", choices=["auto", "on", "off"])
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def job() -> None:
        train(args.config, args.work_dir, args.resume, args.amp, args.cfg_options, args.launcher)

    return run_tool(job)


if __name__ == "__main__":
    sys.exit(main())
